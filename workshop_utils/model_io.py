"""Save a trained classifier as a model an application can use without the workshop, and load it back.

:func:`export_model` writes one folder (atomically: built in a temp folder beside it, verified, renamed)::

    model.keras       end-to-end Keras model: encoded image bytes (string, shape [None]) -> probabilities
    saved_model/      TF SavedModel; signature "serving_default": image_bytes (string [None]) ->
                      {"scores": float32 [None, C], "label": string [None]}
    model.pb          frozen GraphDef for ML.NET / TF runtimes, tensors by name:
                        image_bytes:0  string  [None]          input: encoded JPEG/PNG/GIF/BMP bytes
                        pixels:0       float32 [None, H, W, 3] decoded RGB 0-255 (may be fed instead)
                        scores:0       float32 [None, C]       softmax probabilities, classes in labels.txt order
                        label:0        string  [None]          the top class name
    labels.txt        class names, one per line, in score order
    model_card.json   arch, classes, input/output spec, metrics, training options, date, versions, tta

Every form decodes the bytes as stored and so expects upright images: EXIF orientation is read and applied
by :class:`Classifier` (and ``predict``/``serve``), not inside the graph. Every form computes in float32: a
model trained in mixed precision is exported as its float32 copy (:func:`float32_model`).

The ordered class names are also stored inside ``model.keras`` (an extra zip entry, ``workshop_classes.json``,
that Keras' loader ignores), so an edited ``labels.txt`` cannot silently relabel the scores. With
``export_model(..., model=m)`` the model ``m`` is exported as trained (bytes in, or RGB pixels in and wrapped
with :class:`DecodeImageBytes`); without it the model is built from the trained head on the frozen backbone.

:class:`Classifier` loads the folder (``model.keras`` with ``safe_mode=True``; the card is optional, so a plain
``model.save`` + ``labels.txt`` folder loads too) and scores untrusted images; bad bytes raise
:class:`InvalidImageError` (a ``ValueError``). ``tta=True`` averages each photo with its horizontal mirror;
:class:`Ensemble` averages the probabilities of several exports with the same classes (:func:`load_scorer`).
:func:`export_tflite` adds ``model.tflite``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import math
import os
import platform
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .architectures import feature_extractor, get_architecture
from .config import import_tensorflow
from .frozen_graph import FrozenGraphError, FrozenGraphScorer, freeze_concrete_function, inspect_graph
from .images import decode_image, decode_images
from .predictions import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_FORMATS,
    ImageScorer,
    ImageTooLargeError,
    InvalidImageError,
    LabelsFileError,
    Prediction,
    TruncatedImageError,
    UnscoredImagesWarning,
    check_image_bytes,
    load_labels,
    undecodable,
    write_labels,
)

tf = import_tensorflow()
import keras  # noqa: E402

__all__ = [
    "Classifier", "Ensemble", "load_scorer",
    "Prediction", "InvalidImageError", "ImageTooLargeError", "TruncatedImageError", "LabelsFileError",
    "ModelFolderError",
    "ExportError", "UnscoredImagesWarning", "FrozenGraphScorer", "FrozenGraphError", "inspect_graph",
    "DecodeImageBytes", "build_end_to_end_model", "export_model", "export_tflite", "check_image_bytes",
    "pixels_model", "model_parts", "ModelParts", "stored_classes", "DEFAULT_MAX_PIXELS", "SUPPORTED_FORMATS",
    "float32_model", "uses_mixed_precision", "UPRIGHT_NOTE",
    "INPUT_TENSOR", "PIXELS_TENSOR", "SCORES_TENSOR",
    "LABEL_TENSOR",
]

MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
FROZEN_GRAPH_FILE = "model.pb"
LABELS_FILE = "labels.txt"
CARD_FILE = "model_card.json"
TFLITE_FILE = "model.tflite"
REQUIRED_FILES = (MODEL_FILE, LABELS_FILE)
"""What :meth:`Classifier.load` needs; ``model_card.json`` is read when present (a plain Keras folder has none)."""

INPUT_TENSOR = "image_bytes:0"
PIXELS_TENSOR = "pixels:0"
SCORES_TENSOR = "scores:0"
LABEL_TENSOR = "label:0"
DECODE_LAYER, HEAD_LAYER = "decode", "head"
VERIFY_TOLERANCE = 1e-5
UPRIGHT_NOTE = (
    "The model expects upright images. Bytes fed straight into model.keras, saved_model/ or model.pb are decoded "
    "as stored: a phone photo whose EXIF orientation says 'turn me' (often 6: portrait) is scored on its side. "
    "workshop_utils' Classifier, `python -m workshop_utils predict` and `serve` read the orientation and turn "
    "the photo upright first; an application feeding the SavedModel or .pb must do the same (e.g. Pillow's "
    "ImageOps.exif_transpose, then re-encode) before it sends the bytes."
)


class ExportError(RuntimeError):
    """An export could not be written or failed its check; nothing was left at the destination."""


class ModelFolderError(OSError):
    """A model folder is missing, incomplete (files missing) or unreadable."""


@keras.saving.register_keras_serializable(package="workshop_utils")
class DecodeImageBytes(keras.layers.Layer):
    """Encoded JPEG/PNG/GIF/BMP bytes (string batch [N]) -> float32 RGB 0–255 [N, H, W, 3].

    Uses :func:`workshop_utils.images.decode_image`, the same decoding the bottleneck features were made
    with, so the saved model sees the pixels the head was trained on. It ignores EXIF orientation (graph
    ops cannot read it): :class:`Classifier` applies it before this point, and bytes fed straight into
    the SavedModel or ``.pb`` must be upright. Serializable: no Lambda layer, so
    ``keras.models.load_model(..., safe_mode=True)`` loads it.
    """

    def __init__(self, image_size: Sequence[int], **kwargs: Any) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.built = True

    def call(self, inputs: Any) -> Any:
        return decode_images(inputs, self.image_size)  # as stored: the graph reads no EXIF (Classifier does)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (input_shape[0], *self.image_size, 3)

    def compute_output_spec(self, inputs: Any) -> Any:
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype="float32")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["image_size"] = list(self.image_size)
        return config


# -- building ----------------------------------------------------------------------------------------------
def _label_names(trained: Any) -> list[str]:
    names = getattr(trained.label_map, "names", trained.label_map)
    return [str(n) for n in names]


def build_end_to_end_model(trained: Any) -> keras.Model:
    """Bytes in, probabilities out: decode → resize → the same frozen backbone → a Dense softmax with the head."""
    arch = get_architecture(trained.arch)
    size = arch.resolve_input_size(trained.image_size)
    names = _label_names(trained)
    kernel = np.asarray(trained.kernel, dtype=np.float32)
    bias = np.asarray(trained.bias, dtype=np.float32).reshape(-1)
    backbone = feature_extractor(arch.name, trained.backbone_weights, size)
    width = int(backbone.output_shape[-1])
    if kernel.shape != (width, len(names)) or bias.shape != (len(names),):
        raise ExportError(
            f"The head does not fit: kernel {kernel.shape} and bias {bias.shape}, but {arch.name} gives {width} "
            f"features and there are {len(names)} classes; expected kernel ({width}, {len(names)}). "
            "Was it trained with another architecture or image size?"
        )
    inputs = keras.Input(shape=(), dtype="string", name="image_bytes")
    pixels = DecodeImageBytes(size, name=DECODE_LAYER)(inputs)
    features = backbone(pixels, training=False)
    head = keras.layers.Dense(len(names), activation="softmax", name=HEAD_LAYER)
    outputs = head(features)
    head.set_weights([kernel, bias])
    head.trainable = False
    return keras.Model(inputs, outputs, name=f"{arch.name}_classifier")


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """An end-to-end classifier taken apart: how bytes become pixels, and pixels become probabilities.

    ``decode`` is the model's own DecodeImageBytes layer (or a new one for a pixels-in model); ``pixels`` is
    the float part, RGB 0–255 (H, W, 3) → probabilities, with the model's own layers and weights (nothing is
    rebuilt); ``bytes_model`` is bytes → probabilities (the model itself when it decodes bytes);
    ``pixels_tensor`` is the RGB tensor in the model's functional graph (to cut sub-models from it).
    """

    decode: DecodeImageBytes
    pixels: keras.Model
    bytes_model: keras.Model
    pixels_tensor: Any
    image_size: tuple[int, int]
    num_classes: int


def _input_description(model: keras.Model) -> str:
    inputs = getattr(model, "inputs", None) or []
    return ", ".join(f"{t.dtype} {tuple(t.shape)}" for t in inputs) or "no symbolic input"


def _decode_output(model: keras.Model, decode: DecodeImageBytes) -> Any:
    """The decode layer's output tensor in ``model``'s graph (the node fed by the model's input)."""
    for node in getattr(decode, "_inbound_nodes", []):
        if any(t is model.inputs[0] for t in node.input_tensors):
            return node.output_tensors[0]
    return None


def model_parts(model: keras.Model, error: type[Exception] = ModelFolderError) -> ModelParts:
    """Take an end-to-end classifier apart; tolerant of how it was built (our builder or a learner's cells).

    Accepted: bytes in (string [None], the first layer a DecodeImageBytes, then anything: a backbone model or
    its layers, a head Dense or Sequential) or pixels in (float (None, H, W, 3) RGB 0–255), with one output of
    class probabilities (None, C). Anything else raises ``error`` saying what was found.
    """
    what = f"Model {getattr(model, 'name', type(model).__name__)!r}"
    expected = ("expected a Keras functional model taking encoded image bytes (string [None], first layer "
                "DecodeImageBytes) or RGB 0-255 pixels (float32 (None, H, W, 3)), with one output of class "
                "probabilities (None, C)")
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
        raise error(f"{what} is not a built Keras functional model; {expected}.")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise error(f"{what} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; {expected}.")
    out_shape = tuple(model.outputs[0].shape)
    if len(out_shape) != 2 or out_shape[-1] is None:
        raise error(f"{what} outputs shape {out_shape}; {expected}.")
    inp = model.inputs[0]
    if str(inp.dtype) == "string":
        decoders = [layer for layer in model.layers if isinstance(layer, DecodeImageBytes)]
        pixels_tensor = _decode_output(model, decoders[0]) if len(decoders) == 1 else None
        if pixels_tensor is None:
            raise error(
                f"{what} takes bytes ({_input_description(model)}) but has {len(decoders)} DecodeImageBytes "
                f"layers, not one applied to its input; {expected}."
            )
        decode = decoders[0]
        pixels = keras.Model(pixels_tensor, model.outputs[0], name=f"{model.name}_pixels")
        return ModelParts(decode, pixels, model, pixels_tensor, decode.image_size, int(out_shape[-1]))
    shape = tuple(inp.shape)
    if len(shape) != 4 or shape[-1] != 3 or None in shape[1:3] or not str(inp.dtype).startswith("float"):
        raise error(f"{what} takes {_input_description(model)}; {expected}.")
    size = (int(shape[1]), int(shape[2]))
    image_bytes = keras.Input(shape=(), dtype="string", name="image_bytes")
    decode = DecodeImageBytes(size, name=DECODE_LAYER)
    outputs = model(decode(image_bytes), training=False)
    bytes_model = keras.Model(image_bytes, outputs, name=f"{model.name}_bytes")
    return ModelParts(decode, model, bytes_model, inp, size, int(out_shape[-1]))


MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of a model, nested models' layers included."""
    found: list[keras.layers.Layer] = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found += _layers(layer)
    return found


def uses_mixed_precision(model: keras.Model) -> bool:
    """True when a layer of the model (or of a model nested in it) computes in float16/bfloat16."""
    return any(getattr(layer.dtype_policy, "name", "") in MIXED_POLICIES for layer in [model, *_layers(model)])


def _float32_config(config: Any) -> Any:
    """A serialized model's config with every mixed dtype policy replaced by float32."""
    if isinstance(config, dict):
        return {k: ("float32" if k == "name" and v in MIXED_POLICIES else
                    "float32" if k == "dtype" and v in MIXED_POLICIES else _float32_config(v))
                for k, v in config.items()}
    if isinstance(config, list):
        return [_float32_config(v) for v in config]
    return config


def float32_model(model: keras.Model) -> keras.Model:
    """A float32 copy of a model built under a mixed-precision policy, with the same weights; else the model itself.

    A mixed model keeps its variables in float32 and computes in float16: exact on a GPU's fast path, but an
    exported or served model has no reason to round. The copy is rebuilt from the model's config with every
    policy set to float32 and gets the same weights, so it is what the model computes, without rounding.
    """
    if not uses_mixed_precision(model):
        return model
    config = _float32_config(keras.saving.serialize_keras_object(model))
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = keras.saving.deserialize_keras_object(config, custom_objects={"DecodeImageBytes": DecodeImageBytes})
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def pixels_model(model: keras.Model) -> keras.Model:
    """The float part of an end-to-end model: RGB 0–255 (H, W, 3) float32 → probabilities (for TFLite)."""
    return model_parts(model).pixels


def _serving_functions(parts: ModelParts, labels: list[str]) -> tuple[Any, Any]:
    """(SavedModel endpoint, frozen-graph function): bytes [None] → {"scores", "label"}."""
    spec = tf.TensorSpec([None], tf.string, name="image_bytes")
    model, decode, float_model = parts.bytes_model, parts.decode, parts.pixels

    def serve(image_bytes: Any) -> dict[str, Any]:
        scores = tf.cast(model(image_bytes, training=False), tf.float32)
        label = tf.gather(tf.constant(labels), tf.argmax(scores, axis=-1))
        return {"scores": scores, "label": label}

    @tf.function(input_signature=[spec])
    def frozen(image_bytes: Any) -> dict[str, Any]:
        pixels = tf.identity(decode(image_bytes), name="pixels")
        probabilities = tf.cast(float_model(pixels, training=False), tf.float32)
        # label reads the scores directly, so that scores and label are both leaves of the frozen graph
        label = tf.identity(tf.gather(tf.constant(labels), tf.argmax(probabilities, axis=-1)), name="label")
        return {"scores": tf.identity(probabilities, name="scores"), "label": label}

    return (serve, spec), frozen


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
    from . import __version__

    return __version__


# -- exporting -------------------------------------------------------------------------------------------
def probe_image(image_size: tuple[int, int]) -> bytes:
    """A deterministic PNG (smooth colour gradients) used to check that every exported form agrees."""
    from PIL import Image

    h, w = image_size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 100 * np.sin(x / 5.0 + y / 7.0)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _check_close(what: str, got: Any, expected: np.ndarray) -> None:
    got = np.asarray(got, dtype=np.float64)
    if got.shape != expected.shape or not np.allclose(got, expected, atol=VERIFY_TOLERANCE, rtol=0):
        diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("nan")
        raise ExportError(
            f"Export check failed: {what} gives scores {got.shape} that differ from the in-memory model by {diff:g} "
            f"(tolerance {VERIFY_TOLERANCE:g}). Nothing was written to the destination; please report this."
        )


def _in_memory_scores(model: keras.Model, parts: ModelParts, probe: bytes) -> np.ndarray:
    """What the model handed to the export says about the probe, computed the way it was built to be fed."""
    if parts.bytes_model is model:
        scores = model(tf.constant([probe]), training=False)
    else:  # pixels in: decode exactly as the DecodeImageBytes layer will
        scores = model(decode_image(tf.constant(probe), parts.image_size)[None], training=False)
    return np.asarray(tf.cast(scores, tf.float32), dtype=np.float64)


def _verify(folder: Path, model: keras.Model, parts: ModelParts, trained: Any, labels: list[str],
            built_from_head: bool) -> None:
    """Reload every written form and compare its scores on a probe image with the in-memory model.

    ``model`` is the model as handed to :func:`export_model` (or the one built from the head); when it was
    built from the head, the head on the backbone's features is checked too.
    """
    size = parts.image_size
    probe = probe_image(size)
    expected = _in_memory_scores(model, parts, probe)
    if built_from_head:
        features = feature_extractor(trained.arch, trained.backbone_weights, size)(
            decode_image(tf.constant(probe), size)[None], training=False
        )
        if hasattr(trained, "predict_proba"):
            reference = np.asarray(trained.predict_proba(np.asarray(features)), dtype=np.float64)
        else:
            kernel, bias = np.asarray(trained.kernel, np.float64), np.asarray(trained.bias, np.float64)
            logits = np.asarray(features, np.float64) @ kernel + bias
            reference = np.exp(logits - logits.max(axis=1, keepdims=True))
            reference /= reference.sum(axis=1, keepdims=True)
        _check_close("the trained head on backbone features", expected, reference)
    if parts.bytes_model is not model:
        _check_close("the model wrapped with DecodeImageBytes", parts.bytes_model(tf.constant([probe])), expected)
    _check_keras_file(folder / MODEL_FILE, "Please report this.")
    if stored_classes(folder / MODEL_FILE) != labels:
        raise ExportError(f"Export check failed: {MODEL_FILE} does not carry the class names; please report this.")
    reloaded = keras.models.load_model(folder / MODEL_FILE, safe_mode=True)
    _check_close(MODEL_FILE, reloaded(tf.constant([probe]), training=False), expected)
    served = tf.saved_model.load(str(folder / SAVED_MODEL_DIR)).signatures["serving_default"](
        image_bytes=tf.constant([probe])
    )
    _check_close(f"{SAVED_MODEL_DIR} (serving_default)", served["scores"], expected)
    try:
        graph = FrozenGraphScorer(folder / FROZEN_GRAPH_FILE, INPUT_TENSOR, SCORES_TENSOR, None, labels)
        FrozenGraphScorer(folder / FROZEN_GRAPH_FILE, PIXELS_TENSOR, LABEL_TENSOR, size, labels)  # names exist
    except FrozenGraphError as exc:
        raise ExportError(f"Export check failed: the frozen graph lacks its documented tensors: {exc}") from exc
    _check_close(FROZEN_GRAPH_FILE, graph.predict_proba([probe]), expected)


def _model_to_export(trained: Any, model: keras.Model | None) -> tuple[keras.Model, ModelParts]:
    """The model handed over (checked against the class names), or the one built from the trained head."""
    labels = _label_names(trained)
    if model is None:
        built = build_end_to_end_model(trained)
        return built, model_parts(built, ExportError)
    model = float32_model(model)  # a mixed-precision model is exported as its float32 copy
    parts = model_parts(model, ExportError)
    if parts.num_classes != len(labels):
        raise ExportError(
            f"Model {model.name!r} outputs {parts.num_classes} scores but the trained classifier has {len(labels)} "
            f"classes ({', '.join(labels)}); pass the model trained for these classes."
        )
    return model, parts


def _write_export(folder: Path, trained: Any, metrics: Any, verify: bool, model: keras.Model | None = None,
                  scoring: dict[str, Any] | None = None) -> None:
    labels = _label_names(trained)
    source, parts = _model_to_export(trained, model)
    size = parts.image_size
    parts.bytes_model.save(folder / MODEL_FILE)
    _store_classes(folder / MODEL_FILE, labels)
    write_labels(labels, folder / LABELS_FILE)

    (serve, spec), frozen = _serving_functions(parts, labels)
    archive = keras.export.ExportArchive()
    archive.track(parts.bytes_model)
    archive.add_endpoint("serve", serve, input_signature=[spec])
    archive.write_out(str(folder / SAVED_MODEL_DIR), verbose=False)

    graph_def, outputs = freeze_concrete_function(frozen.get_concrete_function())
    if sorted(outputs) != sorted([LABEL_TENSOR, SCORES_TENSOR]):
        raise ExportError(
            f"Freezing named the outputs {outputs}, not {SCORES_TENSOR} and {LABEL_TENSOR}; please report this."
        )
    (folder / FROZEN_GRAPH_FILE).write_bytes(graph_def.SerializeToString())

    if verify:
        _verify(folder, source, parts, trained, labels, built_from_head=model is None)
    # The card goes last: a folder with a model card is a complete export.
    card = _model_card(trained, labels, size, metrics)
    card["source"] = ("built from the trained head on the frozen backbone" if model is None else
                      f"the Keras model {model.name!r} as trained (its own weights), "
                      f"{'bytes' if parts.bytes_model is source else 'pixels'} in"
                      + ("; trained in mixed precision, exported as its float32 copy" if source is not model else ""))
    card["files"][MODEL_FILE] += f"; the ordered class names are stored inside it ({CLASSES_ENTRY})"
    card.update(_jsonable(scoring or {}))  # "tta" (Classifier.load's default), "evaluations" with TTA or ensembles
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _replace_folder(staged: Path, out_dir: Path) -> None:
    """Move the finished temp folder to out_dir, swapping out an existing export without a half-state."""
    if not out_dir.exists():
        os.replace(staged, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out_dir, old)
    try:
        os.replace(staged, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_model(
    trained: Any,
    out_dir: str | Path,
    metrics: Any = None,
    overwrite: bool = True,
    verify: bool = True,
    *,
    model: keras.Model | None = None,
    tta: bool = False,
    evaluations: Sequence[dict[str, Any]] = (),
    fine_tuning: dict[str, Any] | None = None,
) -> Path:
    """Write model.keras, saved_model/, model.pb, labels.txt and model_card.json to ``out_dir`` (atomically).

    ``tta`` goes into the card as ``"tta"``: whether :meth:`Classifier.load` averages each photo with its mirror
    by default (off: it doubles the cost). ``evaluations``: extra metric records for the card (e.g. with TTA or
    an ensemble, see ``run --tta/--ensemble``), each saying how it was scored.

    ``model``: the end-to-end Keras model to export as trained (e.g. composed in notebook 05 or fine-tuned in
    07): bytes in (first layer DecodeImageBytes) or RGB 0–255 pixels in (wrapped with DecodeImageBytes here).
    Every written form is checked against *its* in-memory scores. Without it the model is built from
    ``trained``'s head on the frozen backbone (:func:`build_end_to_end_model`). ``trained`` supplies the class
    names, architecture and history for the model card; the class names are also stored inside model.keras.

    Everything is written to a temp folder beside ``out_dir``, reloaded and compared on a probe image
    (``verify``), then renamed into place; on any failure nothing changes at ``out_dir``. An existing
    export there is replaced (``overwrite``); a non-empty folder that is not an export is never replaced.
    Tensor names of model.pb: ``image_bytes:0`` (string [None]) → ``scores:0`` (float [None, C]) and
    ``label:0`` (string [None]); ``pixels:0`` (float [None, H, W, 3], RGB 0–255) may be fed instead.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir} exists and is a file; pass a folder path for the export.")
        if not overwrite:
            raise ExportError(f"{out_dir} already exists; pass overwrite=True or choose another folder.")
        if any(out_dir.iterdir()) and not (out_dir / CARD_FILE).is_file():
            raise ExportError(
                f"{out_dir} is not empty and holds no {CARD_FILE}, so it is not a previous export; refusing to "
                "replace it. Choose an empty or new folder (e.g. workspace/model)."
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staged = out_dir.with_name(f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}")
    staged.mkdir()  # (not tempfile.mkdtemp: its 0700 mode would stay on the export)
    scoring: dict[str, Any] = {"tta": bool(tta)}
    if evaluations:
        scoring["evaluations"] = list(evaluations)
    if fine_tuning:  # the fine-tuning recipe (schedule, epochs, class weights, …) of a fine-tuned model
        scoring["fine_tuning"] = dict(fine_tuning)
    try:
        _write_export(staged, trained, metrics, verify, model=model, scoring=scoring)
        _replace_folder(staged, out_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return out_dir


def export_tflite(out_dir: str | Path) -> Path:
    """Add ``model.tflite`` to an export: float32 [1, H, W, 3] RGB 0–255 in, [1, C] probabilities out.

    TFLite builtins cannot decode image bytes, so the app decodes and resizes (bilinear) itself and feeds
    pixels; the model card's ``tflite`` entry records this. Needs a TensorFlow with ``tf.lite``.
    """
    out_dir = Path(out_dir).expanduser()
    converter_cls = getattr(getattr(tf, "lite", None), "TFLiteConverter", None)
    if converter_cls is None:
        raise ExportError(
            f"TensorFlow {tf.__version__} has no tf.lite.TFLiteConverter; install a full TensorFlow build."
        )
    classifier = Classifier.load(out_dir)
    float_model = pixels_model(classifier.model)
    h, w = classifier.image_size
    with tempfile.TemporaryDirectory(prefix="tflite-") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(float_model)
        archive.add_endpoint(
            "serve",
            lambda rgb: float_model(rgb, training=False),
            input_signature=[tf.TensorSpec([1, h, w, 3], tf.float32, name="rgb_0_255")],
        )
        archive.write_out(tmp, verbose=False)
        try:
            content = converter_cls.from_saved_model(tmp).convert()
        except Exception as exc:
            raise ExportError(f"TFLite conversion of {out_dir / MODEL_FILE} failed: {exc}") from exc
    target = out_dir / TFLITE_FILE
    staged = out_dir / f".{TFLITE_FILE}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staged.write_bytes(content)
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)
    if classifier.card is not None:
        card = dict(classifier.card)
        card["files"] = {**card.get("files", {}), TFLITE_FILE: "TFLite flatbuffer, float32 pixels in"}
        card["tflite"] = {"input": {"dtype": "float32", "shape": [1, h, w, 3],
                                    "description": "RGB 0-255, bilinear-resized; decode the image yourself"},
                          "output": {"dtype": "float32", "shape": [1, len(classifier.labels)]}}
        staged_card = out_dir / f".{CARD_FILE}.partial-{uuid.uuid4().hex[:8]}"
        staged_card.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(staged_card, out_dir / CARD_FILE)
    return target


def _check_labels(folder: Path, labels: list[str], stored: list[str] | None, card: Any, outputs: int, fix: str) -> None:
    """labels.txt must list the classes in the order stored inside model.keras, else in the card's ``classes``.

    A plain Keras folder (``model.save`` + labels.txt) is checked against its card's classes when it has some;
    with no card, or a card without classes, there is nothing to check the order against: labels.txt is trusted
    when its count matches the outputs (Classifier checks the count). Neither case warns: both are valid folders.
    """
    if len(labels) != outputs:
        return  # Classifier() says "N labels but the model has M outputs"
    if stored is not None:
        if labels != stored:
            raise LabelsFileError(
                f"{folder / LABELS_FILE} lists the classes as {labels}, but {folder / MODEL_FILE} was trained with "
                f"{stored} (in this order, stored inside it): labels.txt was edited or belongs to another model, "
                f"and its names would be wrong. Restore labels.txt to that order (one name per line). {fix}"
            )
        return
    classes = card.get("classes") if isinstance(card, dict) else None
    if isinstance(classes, list) and classes:
        if [str(c) for c in classes] != labels:
            raise LabelsFileError(
                f"{folder / LABELS_FILE} lists the classes as {labels}, but {folder / CARD_FILE} says the model "
                f"({folder / MODEL_FILE}) was trained with {classes}: labels.txt was edited or belongs to another "
                f"model. Restore labels.txt to that order (one name per line). {fix}"
            )


# -- consuming -------------------------------------------------------------------------------------------
class Classifier(ImageScorer):
    """A loaded export: score untrusted image bytes, files or a frame of paths without the workshop's trainer.

    Each photo is turned upright by its EXIF orientation before the model's own decoding and resize (the
    course's one rule, :mod:`workshop_utils.images`); files whose data ends before their pixels do are
    refused; the model computes in float32. With ``tta`` (test-time augmentation) each photo is scored with its
    horizontal mirror and the two probability rows are averaged: twice the model's work.
    """

    def __init__(
        self,
        model: keras.Model,
        labels: Sequence[str],
        *,
        card: dict[str, Any] | None = None,
        directory: Path | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        tta: bool = False,
    ) -> None:
        parts = model_parts(float32_model(model))  # scored in float32, even a model trained in mixed precision
        self.model = parts.bytes_model  # a pixels-in model is wrapped with DecodeImageBytes
        self.pixels_model = parts.pixels  # RGB 0-255 -> probabilities: what the bytes reach after decoding
        self.labels = list(labels)
        if len(self.labels) != int(model.output_shape[-1]):
            raise LabelsFileError(
                f"{len(self.labels)} labels but the model has {model.output_shape[-1]} outputs"
                + (f" in {directory}" if directory else "")
                + "; the labels.txt does not belong to this model. Re-export the folder."
            )
        self.image_size = parts.image_size
        self.card = card
        self.directory = directory
        self.max_pixels = max_pixels
        self.tta = bool(tta)
        self._model_name = str(model.name)  # as saved (a pixels-in model's wrapper is called "<name>_bytes")
        size, signature = self.image_size, [tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32)]

        def plain(images: Any, orientations: Any) -> Any:  # the model's own decoding, each photo upright first
            return self.pixels_model(decode_images(images, size, orientations), training=False)

        def mirrored(images: Any, orientations: Any) -> Any:  # photos and their mirrors in one model call
            pixels = decode_images(images, size, orientations)
            both = self.pixels_model(tf.concat([pixels, tf.reverse(pixels, axis=[2])], axis=0), training=False)
            n = tf.shape(pixels)[0]
            return (both[:n] + both[n:]) / 2.0

        self._serve = tf.function(plain, input_signature=signature, reduce_retracing=True)
        self._serve_tta = tf.function(mirrored, input_signature=signature, reduce_retracing=True)

    @classmethod
    def load(cls, model_dir: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, tta: bool | None = None
             ) -> "Classifier":
        """Load a model folder: model.keras (safe_mode=True) and labels.txt, plus model_card.json when present.

        A plain Keras folder (``model.save(...)`` bytes or pixels in, and labels.txt) loads too. ``tta``: average
        each photo with its mirror; None takes the card's ``"tta"`` (off when absent).
        """
        folder = Path(model_dir).expanduser()
        fix = (f"Re-export it with workshop_utils.model_io.export_model(trained, {str(folder)!r}) "
               "or `python -m workshop_utils run`.")
        if not folder.is_dir():
            raise ModelFolderError(f"Model folder {str(folder)!r} does not exist. {fix}")
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if missing:
            raise ModelFolderError(f"Model folder {str(folder)!r} is missing {', '.join(missing)}. {fix}")
        _check_keras_file(folder / MODEL_FILE, fix)
        stored = stored_classes(folder / MODEL_FILE)
        try:
            model = keras.models.load_model(
                folder / MODEL_FILE, safe_mode=True, custom_objects={"DecodeImageBytes": DecodeImageBytes}
            )
        except Exception as exc:
            raise ModelFolderError(f"Could not load {folder / MODEL_FILE}: {exc}. {fix}") from exc
        card = None
        if (folder / CARD_FILE).is_file():
            try:
                card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ModelFolderError(f"{folder / CARD_FILE} is not valid JSON ({exc}); fix or delete it. {fix}"
                                       ) from exc
        labels = load_labels(folder / LABELS_FILE)
        _check_labels(folder, labels, stored, card, int(model.output_shape[-1]), fix)
        if tta is None:
            tta = isinstance(card, dict) and card.get("tta") is True
        return cls(model, labels, card=card if isinstance(card, dict) else None, directory=folder,
                   max_pixels=max_pixels, tta=tta)

    @classmethod
    def from_model(cls, model: keras.Model, labels: Sequence[str],
                   max_pixels: int | None = DEFAULT_MAX_PIXELS, tta: bool = False) -> "Classifier":
        """An in-memory Classifier for any end-to-end model (bytes in, or RGB 0–255 pixels in), no files."""
        return cls(model, labels, max_pixels=max_pixels, tta=tta)

    @classmethod
    def from_trained(cls, trained: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS, tta: bool = False
                     ) -> "Classifier":
        """An in-memory Classifier for a just-trained head (same model export_model saves), no files."""
        return cls(build_end_to_end_model(trained), _label_names(trained), max_pixels=max_pixels, tta=tta)

    def predict_proba(self, images: Sequence[bytes], names: Sequence[str | Path | None] | None = None,
                      *, tta: bool | None = None) -> np.ndarray:
        """Probabilities (N, C) for encoded images, each turned upright by its EXIF orientation first.

        ``tta`` (None: the classifier's own setting) averages each photo with its horizontal mirror. Bad bytes
        raise InvalidImageError naming the image: not an image of the format table, over the pixel limit, or
        data that ends before its pixels do (TruncatedImageError), which is never scored.
        """
        names = list(names) if names is not None else [None] * len(images)
        if not len(images):
            return np.zeros((0, len(self.labels)))
        orientations = [check_image_bytes(data, name=name, max_pixels=self.max_pixels, complete=True).orientation
                        for data, name in zip(images, names)]
        score = self._serve_tta if (self.tta if tta is None else tta) else self._serve
        try:
            scores = score(tf.constant([bytes(b) for b in images]), tf.constant(orientations, tf.int32))
        except tf.errors.InvalidArgumentError as exc:  # truncated/corrupt data behind a valid header
            raise undecodable(names[0] if len(names) == 1 else None, exc, len(names)) from exc
        return np.asarray(scores, dtype=np.float64)

    def __repr__(self) -> str:
        where = f" from {str(self.directory)!r}" if self.directory else ""
        arch = (self.card or {}).get("arch", self.model.name)
        h, w = self.image_size
        return (f"Classifier({arch}{where}, {len(self.labels)} classes, image size {h}x{w}"
                f"{', flip TTA' if self.tta else ''})")

    @property
    def name(self) -> str:
        """What messages and the web API call the model: the card's architecture, else the Keras model's name."""
        return str((self.card or {}).get("arch", self._model_name))


class Ensemble(ImageScorer):
    """Several classifiers with the same classes, in the same order: their probabilities averaged.

    Same ``predict_*`` API as :class:`Classifier`; each member decodes and resizes the photo its own way (its
    own image size), so members with different backbones mix. The cost is the sum of the members'.
    """

    def __init__(self, members: Sequence[Classifier]) -> None:
        self.members = list(members)
        if len(self.members) < 2:
            raise ValueError(f"An ensemble needs at least two classifiers, got {len(self.members)}.")
        first = self.members[0]
        for other in self.members[1:]:
            if list(other.labels) != list(first.labels):
                raise LabelsFileError(
                    f"Cannot average {_where(first)} (classes {first.labels}) with {_where(other)} (classes "
                    f"{other.labels}): an ensemble needs the same class names in the same order.")
        self.labels = list(first.labels)
        self.max_pixels = min((m.max_pixels for m in self.members if m.max_pixels is not None), default=None)
        self.image_size = first.image_size
        self.directory = first.directory
        self.card = {"arch": self.name, "ensemble": self.describe()}

    @classmethod
    def load(cls, model_dirs: Sequence[str | Path], max_pixels: int | None = DEFAULT_MAX_PIXELS,
             tta: bool | None = None) -> "Ensemble":
        """Load each model folder with :meth:`Classifier.load` and average them; ``tta`` (None: the first folder's
        card says) is the same for all."""
        first = Classifier.load(model_dirs[0], max_pixels=max_pixels, tta=tta)
        rest = [Classifier.load(folder, max_pixels=max_pixels, tta=first.tta) for folder in model_dirs[1:]]
        return cls([first, *rest])

    @property
    def name(self) -> str:
        return " + ".join(m.name for m in self.members)

    @property
    def tta(self) -> bool:
        return all(m.tta for m in self.members)

    def describe(self) -> list[dict[str, Any]]:
        """One record per member for cards and /health: folder name (not its path), architecture, tta."""
        return [{"folder": None if m.directory is None else Path(m.directory).name, "arch": m.name, "tta": m.tta}
                for m in self.members]

    def member_proba(self, images: Sequence[bytes], names: Sequence[str | Path | None] | None = None,
                     *, tta: bool | None = None) -> list[np.ndarray]:
        """Each member's probabilities (N, C), in member order (to compare the members with their average)."""
        return [m.predict_proba(images, names, tta=tta) for m in self.members]

    def predict_proba(self, images: Sequence[bytes], names: Sequence[str | Path | None] | None = None,
                      *, tta: bool | None = None) -> np.ndarray:
        """The members' probabilities (N, C) averaged; bad bytes raise InvalidImageError as Classifier does."""
        return np.mean(self.member_proba(images, names, tta=tta), axis=0)

    def __repr__(self) -> str:
        return f"Ensemble({', '.join(repr(m) for m in self.members)})"


def _where(classifier: Classifier) -> str:
    return str(classifier.directory) if classifier.directory is not None else repr(classifier.name)


def load_scorer(model_dir: str | Path, ensemble: Sequence[str | Path] = (), *, tta: bool | None = None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Classifier | Ensemble:
    """What ``predict`` and ``serve`` score with: the folder's Classifier, or an Ensemble with the other folders."""
    if not ensemble:
        return Classifier.load(model_dir, max_pixels=max_pixels, tta=tta)
    return Ensemble.load([model_dir, *ensemble], max_pixels=max_pixels, tta=tta)
