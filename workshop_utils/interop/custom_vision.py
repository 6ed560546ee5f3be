"""Azure Custom Vision's TensorFlow exports (model.pb + labels.txt; ``Placeholder:0`` BGR 0-255, no mean ->
``loss:0``/``model_outputs:0``): score a real one with Microsoft's "tutorial" or "s1" preprocessing, and freeze a
stand-in with the same conventions (:func:`export_custom_vision_style`: no real export without an Azure account).
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from workshop_utils.core.errors import ImageTooLargeError, InteropError
from workshop_utils.core.formats import DEFAULT_MAX_PIXELS, check_image_bytes, describe_source, undecodable
from workshop_utils.core.fsutil import atomic_write
from workshop_utils.core.labels import write_labels
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.export.card import FROZEN_GRAPH_FILE, LABELS_FILE
from workshop_utils.export.graph import label_names, model_parts, trained_head
from workshop_utils.interop.frozen_graph import (FrozenGraphScorer, freeze_concrete_function, inspect_graph,
                                                 load_graph_def, node_name)

tf = import_tensorflow()
import keras  # noqa: E402

INPUT_TENSOR, OUTPUT_TENSOR, MODEL_OUTPUTS_TENSOR = "Placeholder:0", "loss:0", "model_outputs:0"
IMAGE_SIZE = (227, 227)
MEAN_BGR = (0.0, 0.0, 0.0)  # real exports take BGR 0-255, no mean subtracted; a non-zero mean is for other graphs
MANIFEST_FILE, METADATA_FILE = "cvexport.manifest", "metadata_properties.json"
PIXEL_FORMAT_KEY = "Image.BitmapPixelFormat"
PREPROCESSINGS = ("tutorial", "s1")
_BY_PIXEL_FORMAT = {"bgr8": "tutorial", "rgb8": "s1"}
MAX_SIDE, SQUARE = 1600, 256  # the tutorial's cap on the longer side, and its intermediate square


def find_tensors(graph_def: Any, pb_path: str | Path = FROZEN_GRAPH_FILE, input_tensor: str | None = None,
                 output_tensor: str | None = None) -> tuple[str, str]:
    """(input, output) tensor names: explicit names win, else ``Placeholder`` (or the only placeholder) and
    ``model_outputs`` (else ``loss``); raises :class:`InteropError` listing the graph's tensors when not there."""
    placeholders = [n.name for n in graph_def.node if n.op == "Placeholder"]
    if not input_tensor:
        if "Placeholder" not in placeholders and len(placeholders) != 1:
            raise InteropError(
                f"{str(pb_path)!r} has {len(placeholders)} placeholders {placeholders} and none is called "
                "'Placeholder'; pass input_tensor=... (inputs and outputs:\n"
                f"{inspect_graph(pb_path).to_string(index=False)})")
        input_tensor = f"{'Placeholder' if 'Placeholder' in placeholders else placeholders[0]}:0"
    outputs = [f"{name}:0" for name in ("model_outputs", "loss") if name in {n.name for n in graph_def.node}]
    if not output_tensor:
        if not outputs:
            raise InteropError(
                f"{str(pb_path)!r} has no tensor called model_outputs or loss, so it is not laid out like a Custom "
                "Vision export; pass output_tensor=... (inputs and outputs:\n"
                f"{inspect_graph(pb_path).to_string(index=False)})")
        output_tensor = outputs[0]
    return input_tensor, output_tensor


def _activation(graph_def: Any, tensor: str) -> str:
    """The op that makes ``tensor`` (looking through Identity ops): 'Softmax', 'Sigmoid', ..."""
    nodes = {n.name: n for n in graph_def.node}
    node = nodes.get(node_name(tensor))
    while node is not None and node.op == "Identity" and node.input:
        node = nodes.get(node_name(node.input[0]))
    return node.op if node is not None else "?"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise InteropError(f"{path} is not readable JSON ({exc}); re-download the export.") from exc
    if not isinstance(data, dict):
        raise InteropError(f"{path} holds {type(data).__name__}, not a JSON object; re-download the export.")
    return data


def _manifest(folder: Path) -> dict[str, Any]:
    """cvexport.manifest (names the model, labels and metadata files), or {} when the folder has none."""
    return _read_json(folder / MANIFEST_FILE) if (folder / MANIFEST_FILE).is_file() else {}


def detect_preprocessing(folder: str | Path) -> tuple[str, str]:
    """("tutorial" or "s1", why): ``Image.BitmapPixelFormat`` in the metadata file (the manifest's
    ``MetadataPropsFileName``, default metadata_properties.json): "Rgb8" → "s1", "Bgr8" or none → "tutorial"."""
    folder = Path(folder)
    metadata_path = folder / str(_manifest(folder).get("MetadataPropsFileName") or METADATA_FILE)
    if not metadata_path.is_file():
        return "tutorial", f"no {metadata_path.name}: Microsoft's Python tutorial preprocessing (BGR)"
    value = _read_json(metadata_path).get(PIXEL_FORMAT_KEY)
    if value is None:
        return "tutorial", (f"{metadata_path.name} has no {PIXEL_FORMAT_KEY}: Microsoft's Python tutorial "
                            "preprocessing (BGR)")
    mode = _BY_PIXEL_FORMAT.get(str(value).lower())
    if mode is None:
        raise InteropError(f"{metadata_path}: {PIXEL_FORMAT_KEY} is {value!r}; expected 'Bgr8' or 'Rgb8'. Pass "
                           "preprocessing='tutorial' (BGR) or 's1' (RGB) to load_export to choose yourself.")
    return mode, f"{metadata_path.name}: {PIXEL_FORMAT_KEY} = {value}"


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize without antialiasing, rounded to whole 0-255 levels: what OpenCV's INTER_LINEAR does
    to the 8-bit image in Microsoft's sample."""
    if tuple(pixels.shape[:2]) == tuple(size):
        return pixels.astype(np.float32)
    resized = tf.image.resize(pixels.astype(np.float32), size, method="bilinear", antialias=False).numpy()
    return np.clip(np.round(resized), 0, 255).astype(np.float32)


def _crop_centre(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    top, left = h // 2 - height // 2, w // 2 - width // 2
    return pixels[top:top + height, left:left + width]


def tutorial_pixels(data: bytes, size: tuple[int, int], name: str | Path | None = None) -> np.ndarray:
    """RGB float32 (H, W, 3) 0-255 as Microsoft's Python tutorial prepares it (before its BGR swap): EXIF
    orientation, longer side capped at 1600 px, centre square, 256x256 (or the input size when larger), centre
    H×W. Decoded with Pillow (it reads EXIF); every resize gives whole levels, as the sample's 8-bit images."""
    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            image = ImageOps.exif_transpose(image)
            rgb = np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{describe_source(name)}the image is too large to decode safely ({exc}); "
                                 "downscale it.") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt pixel data behind a valid header
        raise undecodable(name, exc) from exc
    h, w = rgb.shape[:2]
    if h >= MAX_SIDE or w >= MAX_SIDE:
        rgb = _resize(rgb, (MAX_SIDE, MAX_SIDE * w // h) if h > w else (MAX_SIDE * h // w, MAX_SIDE))
        h, w = rgb.shape[:2]
    square = max(SQUARE, *size)
    resized = _resize(_crop_centre(rgb, min(h, w), min(h, w)), (square, square))
    return _crop_centre(resized, int(size[0]), int(size[1])).astype(np.float32)


class CustomVisionScorer(FrozenGraphScorer):
    """A frozen Custom Vision graph with its preprocessing ("tutorial": centre crop, BGR; "s1": resize, RGB).
    ``multi_label``: the output is a Sigmoid, so each class's score is its own probability (no sum to 1)."""

    def __init__(self, pb_path: str | Path, labels: str | Path | Iterable[str] | None, *,
                 input_tensor: str | None = None, output_tensor: str | None = None, preprocessing: str = "tutorial",
                 mean: float | Sequence[float] = 0.0, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 preprocessing_source: str = "chosen by the caller") -> None:
        if preprocessing not in PREPROCESSINGS:
            raise InteropError(
                f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}: 'tutorial' is Microsoft's "
                "Python tutorial (centre crop, BGR), 's1' the [S1] compact domains (plain resize, RGB).")
        graph_def = load_graph_def(pb_path)
        input_tensor, output_tensor = find_tensors(graph_def, pb_path, input_tensor, output_tensor)
        super().__init__(pb_path, input_tensor, output_tensor, None, labels, mean=mean,
                         channel_order="BGR" if preprocessing == "tutorial" else "RGB", max_pixels=max_pixels)
        if self.string_input:
            raise InteropError(f"Input {self.input_name} takes strings, not the pixels a Custom Vision export takes.")
        self.preprocessing, self.preprocessing_source = preprocessing, preprocessing_source
        self.activation = _activation(graph_def, self.output_name)
        self.multi_label = self.activation == "Sigmoid"

    def preprocess(self, data: bytes, name: str | Path | None = None) -> np.ndarray:
        """Bytes → the float32 (H, W, 3) array fed to the graph ("s1": the plain resize of FrozenGraphScorer)."""
        if self.preprocessing == "s1":
            return super().preprocess(data, name)
        check_image_bytes(data, name=name, max_pixels=self.max_pixels, complete=True)
        bgr = tutorial_pixels(data, self.image_size, name)[..., ::-1]
        return ((bgr - self.mean) * self.scale).astype(np.float32)

    def __repr__(self) -> str:
        kind = "multi-label (Sigmoid)" if self.multi_label else f"multi-class ({self.activation})"
        return (f"CustomVisionScorer({str(self.pb_path)!r}, {self.input_name!r} → {self.output_name!r}, "
                f"{self.image_size[0]}x{self.image_size[1]} {self.channel_order}, preprocessing={self.preprocessing!r} "
                f"({self.preprocessing_source}), {kind})")


def load_export(folder: str | Path, *, preprocessing: str | None = None, input_tensor: str | None = None,
                output_tensor: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> CustomVisionScorer:
    """A scorer for an unzipped Custom Vision TensorFlow export folder (model.pb + labels.txt).
    Tensors: ``Placeholder`` → ``model_outputs`` (else ``loss``) unless named; preprocessing: the folder's
    metadata says (see :func:`detect_preprocessing`) unless ``preprocessing`` is given."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InteropError(f"Custom Vision export folder {str(folder)!r} does not exist; unzip the export and pass "
                           "its folder.")
    manifest = _manifest(folder)
    model_file = folder / str(manifest.get("ModelFileName") or FROZEN_GRAPH_FILE)
    labels_file = folder / str(manifest.get("LabelFileName") or LABELS_FILE)
    missing = [p.name for p in (model_file, labels_file) if not p.is_file()]
    if missing:
        raise InteropError(
            f"{str(folder)!r} is missing {', '.join(missing)}: a Custom Vision TensorFlow export holds "
            f"{model_file.name} and {labels_file.name}. Export the iteration as 'TensorFlow' and unzip it there.")
    why = "chosen by the caller"
    if preprocessing is None:
        preprocessing, why = detect_preprocessing(folder)
    return CustomVisionScorer(model_file, labels_file, input_tensor=input_tensor, output_tensor=output_tensor,
                              preprocessing=preprocessing, max_pixels=max_pixels, preprocessing_source=why)


# -- the stand-in
def _check_settings(image_size: Sequence[int], mean_bgr: Sequence[float]) -> tuple[tuple[int, int], np.ndarray]:
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise InteropError(f"image_size must be two whole numbers (height, width), got {image_size!r}; "
                           "e.g. (227, 227).") from None
    if h < 1 or w < 1:
        raise InteropError(f"image_size must be positive, got {(h, w)}; e.g. (227, 227).")
    mean = np.asarray(mean_bgr, dtype=np.float32).reshape(-1)
    if mean.size != 3 or not np.isfinite(mean).all():
        raise InteropError(f"mean_bgr must be three finite numbers (B, G, R), got {mean_bgr!r}; use (0, 0, 0) "
                           "for no mean.")
    return (h, w), mean


def _features_and_dense(output: Any, inputs: Any) -> tuple[Any, keras.layers.Dense]:
    """(pixels → features function, the final Dense) of a functional graph ending in a Dense (maybe nested)."""
    operation, node_index, _ = output._keras_history
    features = operation._inbound_nodes[node_index].input_tensors[0]
    outer = (lambda x: x) if features is inputs else keras.Model(inputs, features)
    if isinstance(operation, keras.layers.Dense):
        return outer, operation
    if isinstance(operation, keras.Model) and len(operation.outputs) == 1:
        inner, dense = _features_and_dense(operation.outputs[0], operation.inputs[0])
        return (lambda x: inner(outer(x))), dense
    raise InteropError(
        f"The model ends in {type(operation).__name__} {operation.name!r}; the stand-in needs a final Dense layer "
        "with softmax (its logits feed the graph's Softmax or Sigmoid).")


def _head_of(trained: Any, model: keras.Model | None, names: list[str]) -> tuple[Any, Any, Any, tuple[int, int]]:
    """(pixels → features, kernel, bias, backbone input size) from the model as trained, or the trained head."""
    if model is not None:
        parts = model_parts(model, InteropError)
        features, dense = _features_and_dense(model.outputs[0], parts.pixels_tensor)
        activation = getattr(dense.activation, "__name__", str(dense.activation))
        if activation != "softmax":
            raise InteropError(
                f"The final Dense {dense.name!r} of model {model.name!r} has activation {activation!r}; the stand-in "
                "needs the softmax classifier it was trained as.")
        kernel, bias = (np.asarray(w, dtype=np.float32) for w in dense.get_weights()[:2])
        if kernel.shape[-1] != len(names):
            raise InteropError(f"Model {model.name!r} gives {kernel.shape[-1]} scores but there are {len(names)} "
                               "classes.")
        return features, kernel, bias, parts.image_size
    backbone, size, kernel, bias = trained_head(trained, InteropError)
    return (lambda x: backbone(x, training=False)), kernel, bias, size


def export_custom_vision_style(trained: Any, pb_path: str | Path, image_size: tuple[int, int] = IMAGE_SIZE,
                               mean_bgr: Sequence[float] = MEAN_BGR, *, activation: str = "softmax",
                               model: keras.Model | None = None) -> Path:
    """Freeze a classifier as a Custom-Vision-style ``.pb``; writes ``labels.txt`` beside it; returns the path.
    Input ``Placeholder:0`` float32 [None, H, W, 3], BGR 0–255 (minus ``mean_bgr``, zero by default, as real
    exports); outputs ``loss:0`` (Softmax, or Sigmoid with ``activation="sigmoid"``: a multi-label export)
    and ``model_outputs:0`` (an Identity after it). ``model``: the end-to-end model as trained (bytes or
    pixels in, a final softmax Dense); without it, ``trained``'s head on the frozen backbone. A stand-in."""
    (h, w), mean = _check_settings(image_size, mean_bgr)
    if activation not in ("softmax", "sigmoid"):
        raise InteropError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}.")
    names = label_names(trained)
    features_of, kernel, bias, size = _head_of(trained, model, names)
    kernel_t, bias_t, mean_t = tf.constant(kernel), tf.constant(bias), tf.constant(mean)
    squash = tf.nn.softmax if activation == "softmax" else tf.math.sigmoid

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name="Placeholder")])
    def score(placeholder: Any) -> Any:
        rgb = tf.reverse(placeholder + mean_t, axis=[-1])  # undo the mean (none by default): RGB 0-255
        if (h, w) != tuple(size):
            rgb = tf.image.resize(rgb, size, method="bilinear", antialias=True)  # as images.decode_image does
        logits = tf.matmul(tf.cast(features_of(rgb), tf.float32), kernel_t) + bias_t
        return tf.identity(squash(logits, name="loss"), name="model_outputs")

    graph_def, outputs = freeze_concrete_function(score.get_concrete_function())
    if outputs != [MODEL_OUTPUTS_TENSOR] or _activation(graph_def, OUTPUT_TENSOR) != activation.capitalize():
        raise InteropError(f"Freezing named the output {outputs}, not {MODEL_OUTPUTS_TENSOR!r} after "
                           f"{OUTPUT_TENSOR!r}; please report this.")
    pb_path = Path(pb_path).expanduser()
    pb_path.parent.mkdir(parents=True, exist_ok=True)
    write_labels(names, pb_path.with_name(LABELS_FILE))
    atomic_write(pb_path, graph_def.SerializeToString())
    return pb_path
