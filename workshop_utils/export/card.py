"""TODO: describe this module."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import platform
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workshop_utils import __version__
from workshop_utils.architectures import get_architecture
from workshop_utils.core.errors import ModelFolderError
from workshop_utils.core.formats import SUPPORTED_FORMATS
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.export.graph import (
    INPUT_TENSOR,
    LABEL_TENSOR,
    PIXELS_TENSOR,
    SCORES_TENSOR,
)

tf = import_tensorflow()
import keras  # noqa: E402

MODEL_FILE = "model.keras"


SAVED_MODEL_DIR = "saved_model"


FROZEN_GRAPH_FILE = "model.pb"


LABELS_FILE = "labels.txt"


CARD_FILE = "model_card.json"


TFLITE_FILE = "model.tflite"


REQUIRED_FILES = (MODEL_FILE, LABELS_FILE)
"""What :meth:`Classifier.load` needs; ``model_card.json`` is read when present (a plain Keras folder has none)."""


UPRIGHT_NOTE = (
    "The model expects upright images. Bytes fed straight into model.keras, saved_model/ or model.pb are decoded "
    "as stored: a phone photo whose EXIF orientation says 'turn me' (often 6: portrait) is scored on its side. "
    "workshop_utils' Classifier, `python -m workshop_utils predict` and `serve` read the orientation and turn "
    "the photo upright first; an application feeding the SavedModel or .pb must do the same (e.g. Pillow's "
    "ImageOps.exif_transpose, then re-encode) before it sends the bytes."
)


# -- the class names inside model.keras ----------------------------------------------------------------------
CLASSES_ENTRY = "workshop_classes.json"
"""An extra entry in the ``.keras`` zip (Keras' loader ignores it): the ordered class names and a checksum."""


def _labels_digest(names: Sequence[str]) -> str:
    return hashlib.sha256(("\n".join(names) + "\n").encode("utf-8")).hexdigest()


def _store_classes(keras_path: Path, names: Sequence[str]) -> None:
    """Add the ordered class names (and the sha256 of the matching labels.txt) to a saved ``.keras`` file."""
    record = {"format": 1, "classes": list(names), "num_classes": len(names),
              "labels_txt_sha256": _labels_digest(names)}
    with zipfile.ZipFile(keras_path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(CLASSES_ENTRY, json.dumps(record, ensure_ascii=False, indent=1))


def _check_keras_file(path: Path, fix: str) -> None:
    """A .keras file is a zip with config.json: say so plainly instead of Keras' misleading "File not found"."""
    if not zipfile.is_zipfile(path):
        with path.open("rb") as fh:
            head = fh.read(16)
        size = path.stat().st_size
        hint = " (it looks like an HTML page: a failed download?)" if head.lstrip()[:1] == b"<" else ""
        raise ModelFolderError(
            f"{path} is not a valid .keras file: a Keras 3 model file is a zip archive, but this one ({size} bytes, "
            f"starting {head!r}) is not{hint}. {fix}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFolderError(f"{path} is not a valid .keras file: the zip is damaged ({exc}). {fix}") from exc
    if "config.json" not in names:
        raise ModelFolderError(
            f"{path} is not a valid .keras file: the zip holds no config.json (it has {sorted(names)[:5]}). {fix}"
        )


def stored_classes(keras_path: str | Path) -> list[str] | None:
    """The class names stored inside a ``.keras`` file by :func:`export_model`, or None for an older export."""
    path = Path(keras_path)
    with zipfile.ZipFile(path) as archive:
        if CLASSES_ENTRY not in archive.namelist():
            return None
        try:
            record = json.loads(archive.read(CLASSES_ENTRY).decode("utf-8"))
            names = [str(n) for n in record["classes"]]
            digest = record["labels_txt_sha256"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFolderError(
                f"{path} holds a damaged {CLASSES_ENTRY} ({exc}); re-export the folder."
            ) from exc
    if digest != _labels_digest(names):
        raise ModelFolderError(
            f"{path}: the class names stored in its {CLASSES_ENTRY} do not match their checksum (edited?); "
            "re-export the folder."
        )
    return names


# -- the model card --------------------------------------------------------------------------------------
def _jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-friendly copy: dataclasses and objects become dicts, numbers plain, the rest repr()."""
    if depth > 6:
        return repr(value)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), depth + 1)
    if hasattr(value, "to_dict") and hasattr(value, "index"):  # a pandas Series / DataFrame
        return _jsonable(value.to_dict(), depth + 1)
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v, depth + 1) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__,
                **{f.name: _jsonable(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}}
    if callable(value):
        return getattr(value, "__qualname__", None) or repr(value)
    if hasattr(value, "__dict__") and type(value).__module__.startswith("workshop_utils"):
        return {"type": type(value).__name__,
                **{k: _jsonable(v, depth + 1) for k, v in vars(value).items() if not k.startswith("_")}}
    return repr(value)


_METRIC_FIELDS = ("subset", "role", "n_samples", "micro_accuracy", "macro_accuracy", "log_loss", "log_loss_reduction",
                  "top_k_accuracy", "top_k")  # subset and role: which set the numbers come from, what it was used for


def _metrics_summary(metrics: Any, labels: list[str]) -> dict[str, Any] | None:
    """The scalar metrics (and per-class log-loss by class) of a MulticlassMetrics, a dict, or None."""
    if metrics is None:
        return None
    if isinstance(metrics, dict):
        return _jsonable(metrics)
    out: dict[str, Any] = {}
    for name in _METRIC_FIELDS:
        if hasattr(metrics, name) and getattr(metrics, name) is not None:
            out[name] = _jsonable(getattr(metrics, name))
    for name in ("per_class_log_loss", "precision", "recall"):  # per-class values, keyed by class name
        per_class = getattr(metrics, name, None)
        if per_class is not None:
            values = _jsonable(per_class)
            out[name] = dict(zip(labels, values)) if isinstance(values, list) and len(values) == len(labels) else values
    return out or {"repr": repr(metrics)}


def _model_card(trained: Any, labels: list[str], size: tuple[int, int], metrics: Any) -> dict[str, Any]:
    arch = get_architecture(trained.arch)
    weights_id = getattr(trained, "weights_id", "")  # recorded at training time, when the trainer kept it
    if not weights_id:
        try:
            weights_id = arch.weights_id(trained.backbone_weights)
        except Exception as exc:  # e.g. the weights file moved since training: record why instead of failing
            weights_id = f"unknown ({exc})"
    h, w = size
    history = getattr(trained, "history", None)
    return {
        "format": "workshop_utils car-damage classifier export, version 1",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "arch": arch.name,
        "backbone_weights": None if trained.backbone_weights is None else str(trained.backbone_weights),
        "backbone_weights_id": weights_id,
        "image_size": [h, w],
        "classes": labels,
        "num_classes": len(labels),
        "preprocessing": (
            f"tf.io.decode_image(channels=3, expand_animations=False) -> bilinear resize to {h}x{w} -> "
            f"RGB 0-255 float32 -> x * {arch.scale:g} {'-' if arch.offset < 0 else '+'} {abs(arch.offset):g} "
            "(inside the model)"
        ),
        "orientation": UPRIGHT_NOTE,
        "precision": "float32",
        "files": {
            MODEL_FILE: "Keras 3 end-to-end model; keras.models.load_model(path, safe_mode=True) after "
                        "`import workshop_utils.model_io` (registers DecodeImageBytes)",
            SAVED_MODEL_DIR: "TF SavedModel, signature serving_default",
            FROZEN_GRAPH_FILE: "frozen GraphDef (constants baked in)",
            LABELS_FILE: "class names in score order",
        },
        "inputs": {
            "keras": {"name": "image_bytes", "dtype": "string", "shape": [None],
                      "description": f"encoded {SUPPORTED_FORMATS} bytes of an upright image, one string per "
                                     "image (EXIF orientation is not applied)"},
            "saved_model": {"signature": "serving_default", "name": "image_bytes", "dtype": "string", "shape": [None]},
            "frozen_graph": [
                {"name": INPUT_TENSOR, "dtype": "string", "shape": [None],
                 "description": "encoded bytes of an upright image (EXIF orientation is not applied)"},
                {"name": PIXELS_TENSOR, "dtype": "float32", "shape": [None, h, w, 3],
                 "description": "alternative input: decoded, resized RGB pixels 0-255 (feed instead of image_bytes)"},
            ],
        },
        "outputs": {
            "keras": {"dtype": "float32", "shape": [None, len(labels)], "description": "softmax probabilities"},
            "saved_model": {"scores": {"dtype": "float32", "shape": [None, len(labels)]},
                            "label": {"dtype": "string", "shape": [None]}},
            "frozen_graph": [
                {"name": SCORES_TENSOR, "dtype": "float32", "shape": [None, len(labels)],
                 "description": "softmax probabilities, classes in labels.txt order"},
                {"name": LABEL_TENSOR, "dtype": "string", "shape": [None], "description": "top class name"},
            ],
        },
        "protocol": _jsonable(getattr(getattr(trained, "options", None), "protocol", None)),
        "metrics": _metrics_summary(metrics, labels),
        "training": {
            "best_epoch": _jsonable(getattr(trained, "best_epoch", None)),
            "stopped_early": _jsonable(getattr(trained, "stopped_early", None)),
            "epochs_run": getattr(trained, "epochs_trained", None) or _epochs_run(history),
            "options": _jsonable(getattr(trained, "options", None)),
        },
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "workshop_utils": _package_version(),
        },
    }


def _epochs_run(history: Any) -> int | None:
    if history is None or "epoch" not in getattr(history, "columns", []) or not len(history):
        return None
    return int(history["epoch"].max())


def _package_version() -> str:

    return __version__
