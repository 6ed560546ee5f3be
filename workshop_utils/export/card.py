"""What an export folder holds: its file names, the model card (model_card.json), and the class names stored
inside model.keras so that an edited labels.txt cannot silently relabel the scores."""
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
from workshop_utils.core.labels import LABELS_FILE
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.export.graph import INPUT_TENSOR, LABEL_TENSOR, PIXELS_TENSOR, SCORES_TENSOR

tf = import_tensorflow()
import keras  # noqa: E402

MODEL_FILE, SAVED_MODEL_DIR, FROZEN_GRAPH_FILE = "model.keras", "saved_model", "model.pb"
CARD_FILE, TFLITE_FILE = "model_card.json", "model.tflite"
REQUIRED_FILES = (MODEL_FILE, LABELS_FILE)  # what Classifier.load needs; a plain Keras folder has no card
CLASSES_ENTRY = "workshop_classes.json"  # an extra zip entry in model.keras (Keras ignores it): names + checksum

UPRIGHT_NOTE = (
    "The model expects upright images. Bytes fed straight into model.keras, saved_model/ or model.pb are decoded as "
    "stored: a phone photo whose EXIF orientation says 'turn me' (often 6: portrait) is scored on its side. "
    "workshop_utils' Classifier, `python -m workshop_utils predict` and `serve` read the orientation and turn the "
    "photo upright first; an application feeding the SavedModel or .pb must do the same (e.g. Pillow's "
    "ImageOps.exif_transpose, then re-encode) before it sends the bytes.")


def _labels_digest(names: Sequence[str]) -> str:
    return hashlib.sha256(("\n".join(names) + "\n").encode("utf-8")).hexdigest()


def store_classes(keras_path: Path, names: Sequence[str]) -> None:
    """Add the ordered class names (and the sha256 of the matching labels.txt) to a saved ``.keras`` file."""
    record = {"format": 1, "classes": list(names), "num_classes": len(names),
              "labels_txt_sha256": _labels_digest(names)}
    with zipfile.ZipFile(keras_path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(CLASSES_ENTRY, json.dumps(record, ensure_ascii=False, indent=1))


def check_keras_file(path: Path, fix: str) -> None:
    """A .keras file is a zip with config.json: say so plainly instead of Keras' misleading "File not found"."""
    if not zipfile.is_zipfile(path):
        with path.open("rb") as fh:
            head = fh.read(16)
        hint = " (it looks like an HTML page: a failed download?)" if head.lstrip()[:1] == b"<" else ""
        raise ModelFolderError(
            f"{path} is not a valid .keras file: a Keras 3 model file is a zip archive, but this one "
            f"({path.stat().st_size} bytes, starting {head!r}) is not{hint}. {fix}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFolderError(f"{path} is not a valid .keras file: the zip is damaged ({exc}). {fix}") from exc
    if "config.json" not in names:
        raise ModelFolderError(
            f"{path} is not a valid .keras file: the zip holds no config.json (it has {sorted(names)[:5]}). {fix}")


def stored_classes(keras_path: str | Path) -> list[str] | None:
    """The class names stored inside a ``.keras`` file by ``export_model``, or None for an older export."""
    path = Path(keras_path)
    with zipfile.ZipFile(path) as archive:
        if CLASSES_ENTRY not in archive.namelist():
            return None
        try:
            record = json.loads(archive.read(CLASSES_ENTRY).decode("utf-8"))
            names = [str(n) for n in record["classes"]]
            digest = record["labels_txt_sha256"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFolderError(f"{path} holds a damaged {CLASSES_ENTRY} ({exc}); re-export the folder.") from exc
    if digest != _labels_digest(names):
        raise ModelFolderError(
            f"{path}: the class names stored in its {CLASSES_ENTRY} do not match their checksum (edited?); "
            "re-export the folder.")
    return names


def jsonable(value: Any, depth: int = 0) -> Any:
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
    if isinstance(value, np.ndarray) or (hasattr(value, "to_dict") and hasattr(value, "index")):  # or pandas
        return jsonable(value.tolist() if isinstance(value, np.ndarray) else value.to_dict(), depth + 1)
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v, depth + 1) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__,
                **{f.name: jsonable(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}}
    if callable(value):
        return getattr(value, "__qualname__", None) or repr(value)
    if hasattr(value, "__dict__") and type(value).__module__.startswith("workshop_utils"):
        return {"type": type(value).__name__,
                **{k: jsonable(v, depth + 1) for k, v in vars(value).items() if not k.startswith("_")}}
    return repr(value)


_METRIC_FIELDS = ("subset", "role", "n_samples", "micro_accuracy", "macro_accuracy", "log_loss", "log_loss_reduction",
                  "top_k_accuracy", "top_k")  # subset and role: which set the numbers come from, what it was used for


def _metrics_summary(metrics: Any, labels: list[str]) -> dict[str, Any] | None:
    """The scalar metrics (and per-class values by class name) of a MulticlassMetrics, a dict, or None."""
    if metrics is None or isinstance(metrics, dict):
        return jsonable(metrics)
    out = {name: jsonable(getattr(metrics, name)) for name in _METRIC_FIELDS
           if getattr(metrics, name, None) is not None}
    for name in ("per_class_log_loss", "precision", "recall"):
        per_class = getattr(metrics, name, None)
        if per_class is not None:
            values = jsonable(per_class)
            out[name] = dict(zip(labels, values)) if isinstance(values, list) and len(values) == len(labels) else values
    return out or {"repr": repr(metrics)}


def model_card(trained: Any, labels: list[str], size: tuple[int, int], metrics: Any, source: str) -> dict[str, Any]:
    """The model card of an export: what it is, its inputs and outputs, how it was trained and scored."""
    arch = get_architecture(trained.arch)
    weights_id = getattr(trained, "weights_id", "")  # recorded at training time, when the trainer kept it
    if not weights_id:
        try:
            weights_id = arch.weights_id(trained.backbone_weights)
        except Exception as exc:  # e.g. the weights file moved since training: record why instead of failing
            weights_id = f"unknown ({exc})"
    h, w = size
    n = len(labels)
    options, history = getattr(trained, "options", None), getattr(trained, "history", None)
    epochs = getattr(trained, "epochs_trained", None) or None
    if not epochs and history is not None and "epoch" in getattr(history, "columns", []) and len(history):
        epochs = int(history["epoch"].max())
    return {
        "format": "workshop_utils car-damage classifier export, version 1",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "arch": arch.name,
        "backbone_weights": None if trained.backbone_weights is None else str(trained.backbone_weights),
        "backbone_weights_id": weights_id,
        "image_size": [h, w],
        "classes": labels,
        "num_classes": n,
        "preprocessing": (
            f"tf.io.decode_image(channels=3, expand_animations=False) -> bilinear resize to {h}x{w} -> "
            f"RGB 0-255 float32 -> x * {arch.scale:g} {'-' if arch.offset < 0 else '+'} {abs(arch.offset):g} "
            "(inside the model)"
        ),
        "orientation": UPRIGHT_NOTE,
        "precision": "float32",
        "files": {
            MODEL_FILE: "Keras 3 end-to-end model; keras.models.load_model(path, safe_mode=True) after "
                        "`import workshop_utils.export.graph` (registers DecodeImageBytes); the ordered class "
                        f"names are stored inside it ({CLASSES_ENTRY})",
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
            "keras": {"dtype": "float32", "shape": [None, n], "description": "softmax probabilities"},
            "saved_model": {"scores": {"dtype": "float32", "shape": [None, n]},
                            "label": {"dtype": "string", "shape": [None]}},
            "frozen_graph": [
                {"name": SCORES_TENSOR, "dtype": "float32", "shape": [None, n],
                 "description": "softmax probabilities, classes in labels.txt order"},
                {"name": LABEL_TENSOR, "dtype": "string", "shape": [None], "description": "top class name"},
            ],
        },
        "protocol": jsonable(getattr(options, "protocol", None)),
        "metrics": _metrics_summary(metrics, labels),
        "training": {
            "best_epoch": jsonable(getattr(trained, "best_epoch", None)),
            "stopped_early": jsonable(getattr(trained, "stopped_early", None)),
            "epochs_run": epochs,
            "options": jsonable(options),
        },
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
                     "numpy": np.__version__, "workshop_utils": __version__},
        "source": source,
    }
