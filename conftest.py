"""Test-session defaults for tests/ and notebooks/: the quick profile (offline, bundled sample), a throw-away workspace.

Both are environment variables, so the notebooks nbval starts as kernels inherit them: 00 → 09 run in
order and share one workspace, just as a learner's notebooks do. The workspace is removed when the session
ends (only when this file created it). Notebook kernels draw with Jupyter's inline backend, as a learner's
do, and every cell tagged "plot" must produce an ``image/png`` output; this pytest process itself draws
with Agg.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

pytest_plugins = ("pytester",)  # tests/test_repo.py runs a tiny notebook through nbval and this file's hook
PLOT_TAG = "plot"

os.environ.setdefault("WORKSHOP_PROFILE", "quick")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_CREATED_WORKSPACE: str | None = None
if not os.environ.get("WORKSHOP_WORKSPACE"):
    _CREATED_WORKSPACE = tempfile.mkdtemp(prefix="workshop-test-workspace-")
    os.environ["WORKSHOP_WORKSPACE"] = _CREATED_WORKSPACE
# Child processes (notebook kernels, CLI runs) keep their temp files in a folder of this session: nbval stops
# its kernels without their exit handlers, which would leave TensorFlow's autograph files in the temp dir.
_CHILD_TMP = tempfile.mkdtemp(prefix="workshop-test-tmp-")
os.environ["TMPDIR"] = _CHILD_TMP

# A non-inline MPLBACKEND (e.g. Agg) inherited by the kernels would turn every figure into "<Figure size …>":
# leave it unset so ipykernel picks its inline backend; this process keeps Agg (no windows, no display).
if "inline" not in os.environ.get("MPLBACKEND", "inline"):
    del os.environ["MPLBACKEND"]
import matplotlib  # noqa: E402

matplotlib.use("Agg")


def missing_plot_message(tags: Iterable[str], outputs: Iterable[Mapping[str, Any]] | None) -> str | None:
    """Why a cell tagged "plot" failed the check (no image/png among its outputs), or None when it passed."""
    if PLOT_TAG not in tags:
        return None
    outputs = list(outputs or [])
    if any("image/png" in output.get("data", {}) for output in outputs):
        return None
    texts = [str(output.get("data", {}).get("text/plain", "")) for output in outputs if "data" in output]
    seen = f"; it displayed only {', '.join(repr(t[:60]) for t in texts)}" if texts else ""
    return (
        f'this cell is tagged "{PLOT_TAG}" but produced no image/png output{seen}. End it with the figure '
        "(or plt.show()) and run under Jupyter's inline backend (is MPLBACKEND=Agg set?)."
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """After nbval runs a notebook cell, fail it when it is tagged "plot" and showed no image."""
    result = yield
    cell = getattr(item, "cell", None)
    if cell is not None and hasattr(item, "test_outputs"):  # an nbval cell item
        message = missing_plot_message(cell.get("metadata", {}).get("tags", []), item.test_outputs)
        if message:
            item.raise_cell_error(message)  # nbval's own failure report: cell number, message, source
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the throw-away workspace this file created (caches, models: tens of MB per run) and the
    children's temp folder."""
    for folder in (_CREATED_WORKSPACE, _CHILD_TMP):
        if folder is None:
            continue
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            pass
        except OSError as exc:  # say so, never leave litter silently
            print(f"\nCould not remove the test session's folder {folder}: {exc}", file=sys.stderr)
