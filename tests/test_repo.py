"""Repository hygiene: the README's commands, CI using them, notebooks stored clean and well-formed, and the
test session's own rules (conftest.py): plots checked as learners see them, no temp-dir litter."""
import importlib.util
import json
import re
import textwrap
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")  # tests/ has its own conftest
_root_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root_conftest)
missing_plot_message = _root_conftest.missing_plot_message
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = ["00_setup", "01_load_data", "02_bottleneck", "03_train", "04_evaluate", "05_save_model",
            "06_consume_model", "07_fine_tune", "08_explain", "09_serve", "10_your_own_photos"]


def test_readme_shows_the_install_main_and_test_commands_and_ci_uses_them():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command in ("pip install -r requirements.txt", "python -m workshop_utils run", "pytest"):
        assert command in readme, f"README.md must show `{command}`"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install --progress-bar off -r requirements.txt" in ci and re.search(r"^pytest\b", ci, re.M)
    assert "WORKSHOP_PROFILE=quick" in ci
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert "-e ." in requirements


def test_readme_lists_every_notebook():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in EXPECTED:
        assert f"notebooks/{name}.ipynb" in readme


def test_the_series_is_complete():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs_and_with_clean_metadata(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: strip them before committing"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec must be python3"
    assert set(nb["metadata"]) <= {"kernelspec", "language_info", "colab", "accelerator"}, (
        f"{path.name} has extra notebook metadata {sorted(nb['metadata'])}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_structure(path):
    cells = _cells(path)
    text = lambda c: "".join(c["source"])  # noqa: E731
    assert cells[0]["cell_type"] == "markdown" and text(cells[0]).lstrip().startswith("# "), "a title first"
    markdown = "\n".join(text(c) for c in cells if c["cell_type"] == "markdown")
    assert re.search(r"learning objectives", markdown, re.I), f"{path.name}: no learning objectives"
    assert re.search(r"estimated time", markdown, re.I), f"{path.name}: no time estimate"
    assert re.search(r"prerequisites", markdown, re.I), f"{path.name}: no prerequisites"
    assert re.search(r"try it", markdown, re.I), f"{path.name}: no 'Try it' exercise"
    code = [text(c) for c in cells if c["cell_type"] == "code"]
    assert "setup(" in code[0], f"{path.name}: the first code cell must call workshop_utils' setup"
    assert any(re.search(r"^assert ", c, re.M) for c in code), f"{path.name}: no checkpoint cell"
    assert not any(re.search(r"\binput\(", c) for c in code), f"{path.name}: input() would hang CI"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_temporary_folders_clean_themselves_up(path):
    """tempfile.mkdtemp() folders outlive the kernel (01 once left a labels.txt folder per run)."""
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] == "code":
            assert "mkdtemp(" not in "".join(cell["source"]), (
                f"{path.name} cell {i}: tempfile.mkdtemp() leaves a folder in the temp dir on every run; use "
                "`with tempfile.TemporaryDirectory() as folder:` (or the workspace)")


def test_ci_and_conftest_leave_the_kernels_their_inline_backend():
    for name in (".ci/run", "conftest.py"):
        text = (ROOT / name).read_text(encoding="utf-8")
        assert not re.search(r"export\s+MPLBACKEND=Agg|[\"']MPLBACKEND[\"']\s*(,|\]\s*=)\s*[\"']Agg", text), (
            f"{name} forces Agg on the notebook kernels: their plot cells would show no picture")


# ------------------------------------------------------------------ the "plot" tag check (conftest.py)
PNG = {"output_type": "display_data", "data": {"image/png": "iVBORw0K", "text/plain": "<Figure size 640x480 with 1 Axes>"}}
TEXT = {"output_type": "execute_result", "data": {"text/plain": "<Figure size 640x480 with 1 Axes>"}}
STREAM = {"output_type": "stream", "name": "stdout", "text": "done"}


def test_a_plot_cell_passes_with_an_image_and_untagged_cells_are_not_checked():
    assert missing_plot_message(["plot"], [STREAM, PNG]) is None
    assert missing_plot_message([], [TEXT]) is None
    assert missing_plot_message(["raises-exception"], []) is None


def test_a_plot_cell_without_an_image_fails_and_says_what_it_showed():
    message = missing_plot_message(["plot"], [STREAM, TEXT])
    assert message.startswith('this cell is tagged "plot" but produced no image/png output; it displayed only '
                              "'<Figure size 640x480 with 1 Axes>'")
    assert "is MPLBACKEND=Agg set?" in message
    assert missing_plot_message(["plot"], []).startswith('this cell is tagged "plot" but produced no image/png output.')


def _copy_conftest(pytester):
    pytester.makeconftest((ROOT / "conftest.py").read_text(encoding="utf-8"))


def test_nbval_fails_a_tagged_cell_without_a_picture_even_when_ci_exports_agg(pytester, monkeypatch):
    """End to end: a real kernel under nbval, with MPLBACKEND=Agg in the environment as CI used to set it."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    _copy_conftest(pytester)
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    plot = {"tags": ["plot"]}
    nb.cells = [
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()", metadata=plot),
        nbformat.v4.new_code_cell(textwrap.dedent("""\
            import pandas as pd
            from workshop_utils import plots
            plots.plot_class_balance(pd.DataFrame({"label": ["a", "b", "b"], "subset": ["train"] * 3}))"""),
            metadata=plot),
        nbformat.v4.new_code_cell("print('a plot was promised')", metadata=plot),
        nbformat.v4.new_code_cell("1 + 1"),
    ]
    pytester.path.joinpath("demo.ipynb").write_text(nbformat.writes(nb), encoding="utf-8")
    result = pytester.runpytest_subprocess("--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider", "demo.ipynb")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*Cell 2: this cell is tagged \"plot\" but produced no image/png output*"])


def test_the_session_removes_the_workspace_it_created_and_only_that(pytester, monkeypatch, tmp_path):
    _copy_conftest(pytester)
    pytester.makepyfile(test_write=textwrap.dedent("""\
        import os, pathlib
        def test_fill_the_workspace():
            workspace = pathlib.Path(os.environ["WORKSHOP_WORKSPACE"])
            (workspace / "cache").mkdir()
            (workspace / "cache" / "features.npy").write_bytes(bytes(1000))
            print("WORKSPACE", workspace)
            assert os.environ["TMPDIR"] != os.environ.get("OUTER_TMPDIR")  # children write to the session's own
        """))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setenv("OUTER_TMPDIR", str(temp))
    monkeypatch.delenv("WORKSHOP_WORKSPACE")
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "base"))
    result.assert_outcomes(passed=1)
    created = Path(re.search(r"WORKSPACE (\S+)", result.stdout.str())[1])
    assert created.parent == temp and created.name.startswith("workshop-test-workspace-")
    assert list(temp.iterdir()) == [], "the session left its workspace or its children's temp folder in the temp dir"

    mine = tmp_path / "my-workspace"  # a workspace the user chose is theirs: kept
    mine.mkdir()
    monkeypatch.setenv("WORKSHOP_WORKSPACE", str(mine))
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--basetemp", str(tmp_path / "base")).assert_outcomes(passed=1)
    assert (mine / "cache" / "features.npy").exists()
