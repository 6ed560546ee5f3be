"""Test-session defaults for tests/ and notebooks/: the quick profile (offline, bundled sample), a throw-away workspace.

Both are environment variables, so the notebooks nbval starts as kernels inherit them: 00 → 06 run in
order and share one workspace, just as a learner's notebooks do.
"""
import os
import tempfile

os.environ.setdefault("WORKSHOP_PROFILE", "quick")
os.environ.setdefault("WORKSHOP_WORKSPACE", tempfile.mkdtemp(prefix="workshop-test-workspace-"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")
