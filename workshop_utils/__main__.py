"""``python -m workshop_utils``: the workshop's command line (run, predict, serve, publish; ``apps/cli.py``), plus
the maintainers' ``bench`` (the benchmark) and ``sample`` (regenerate or check data/sample), loaded only when asked."""
import sys

if sys.argv[1:2] == ["bench"]:
    from workshop_utils.tooling import bench as tool
elif sys.argv[1:2] == ["sample"]:
    from workshop_utils.tooling import sample as tool
else:
    from workshop_utils.apps import cli

    sys.exit(cli.main())
sys.exit(tool.main(sys.argv[2:]))
