"""Repository hygiene: the README's commands, CI using them, and notebooks stored clean and well-formed."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = ["00_setup", "01_load_data", "02_bottleneck", "03_train", "04_evaluate", "05_save_model",
            "06_consume_model"]


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
