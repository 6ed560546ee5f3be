"""``python -m workshop_utils``: the workshop's command line (run, predict, serve, publish; see ``apps/cli.py``),
plus the maintainers' ``bench`` (the benchmark) and ``sample`` (regenerate or check data/sample)."""
from __future__ import annotations

import sys

from workshop_utils.apps import cli
from workshop_utils.tooling import bench, sample

TOOLS = {"bench": bench.main, "sample": sample.main}
if len(sys.argv) > 1 and sys.argv[1] in TOOLS:
    sys.exit(TOOLS[sys.argv[1]](sys.argv[2:]))
sys.exit(cli.main())
