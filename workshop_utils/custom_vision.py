"""A stand-in for another tool's export: the workshop's classifier frozen with Azure Custom Vision's conventions.

Custom Vision's "TensorFlow" export is a frozen ``model.pb`` plus ``labels.txt``; the application feeds a
float image batch to ``Placeholder:0`` and reads softmax probabilities from ``loss:0``. No such export can be
downloaded here (it needs an Azure account), so :func:`export_custom_vision_style` freezes *this workshop's*
trained model (backbone + head) behind the same tensor names and the same kind of preprocessing contract.
It is a stand-in with Custom Vision's conventions, not a real Custom Vision model: the point is to practise
scoring a graph you did not build, by tensor names, with the preprocessing its documentation states.

The convention implemented (the contract a scorer must follow)::

    Placeholder:0  float32 [None, H, W, 3]   H×W = image_size (227×227 by default; a real export's placeholder
                                             shape tells its size);
                                             the image resized (bilinear) to H×W, channels in **BGR** order,
                                             values 0–255 **minus mean_bgr** per channel (B, G, R):
                                             x[..., c] = pixel_bgr[..., c] - mean_bgr[c]
    loss:0         float32 [None, C]         softmax probabilities, classes in labels.txt order

Real exports differ by domain and version: some take plain BGR 0–255 (mean 0), others expect a mean
subtracted (ML.NET's TensorFlow image samples pass a single offset such as 117). Always read the export's own
documentation; here ``mean_bgr=(0, 0, 0)`` gives the plain-BGR variant. Inside the graph the
input is turned back into RGB 0–255 and resized (bilinear) to the backbone's input size, so the workshop's
backbone and head see (nearly) the pixels they were trained on; the extra 227 → backbone-size resize is why
its probabilities differ slightly from the workshop's own export.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .architectures import feature_extractor, get_architecture
from .config import import_tensorflow
from .frozen_graph import freeze_concrete_function
from .predictions import write_labels

tf = import_tensorflow()

__all__ = [
    "INPUT_TENSOR", "OUTPUT_TENSOR", "IMAGE_SIZE", "MEAN_BGR", "LABELS_FILE", "CustomVisionExportError",
    "export_custom_vision_style",
]

INPUT_TENSOR = "Placeholder:0"
OUTPUT_TENSOR = "loss:0"
IMAGE_SIZE = (227, 227)
MEAN_BGR = (104.0, 117.0, 123.0)
"""Default per-channel mean, in B, G, R order (the ImageNet channel means Caffe-style BGR models subtract)."""
LABELS_FILE = "labels.txt"


class CustomVisionExportError(ValueError):
    """The settings or the trained head cannot be turned into a Custom-Vision-style frozen graph."""


def _check_settings(image_size: Sequence[int], mean_bgr: Sequence[float]) -> tuple[tuple[int, int], np.ndarray]:
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise CustomVisionExportError(
            f"image_size must be two whole numbers (height, width), got {image_size!r}; e.g. (227, 227)."
        ) from None
    if h < 1 or w < 1:
        raise CustomVisionExportError(f"image_size must be positive, got {(h, w)}; e.g. (227, 227).")
    mean = np.asarray(mean_bgr, dtype=np.float32).reshape(-1)
    if mean.size != 3 or not np.isfinite(mean).all():
        raise CustomVisionExportError(
            f"mean_bgr must be three finite numbers (B, G, R), got {mean_bgr!r}; use (0, 0, 0) for no mean."
        )
    return (h, w), mean


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temp name in the same folder, then rename: readers never see a half-written file."""
    staged = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        write(staged)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def export_custom_vision_style(
    trained: Any,
    pb_path: str | Path,
    image_size: tuple[int, int] = IMAGE_SIZE,
    mean_bgr: Sequence[float] = MEAN_BGR,
) -> Path:
    """Freeze ``trained`` (backbone + head) as a Custom-Vision-style ``.pb``; writes ``labels.txt`` beside it.

    Input ``Placeholder:0`` float32 [None, H, W, 3]: BGR 0–255 minus ``mean_bgr`` (see the module docstring);
    output ``loss:0``: softmax probabilities. Returns the ``.pb`` path. A stand-in, not a real Custom Vision model.
    """
    (h, w), mean = _check_settings(image_size, mean_bgr)
    names = [str(n) for n in getattr(trained.label_map, "names", trained.label_map)]
    arch = get_architecture(trained.arch)
    size = arch.resolve_input_size(trained.image_size)
    backbone = feature_extractor(arch.name, trained.backbone_weights, size)
    width = int(backbone.output_shape[-1])
    kernel = np.asarray(trained.kernel, dtype=np.float32)
    bias = np.asarray(trained.bias, dtype=np.float32).reshape(-1)
    if kernel.shape != (width, len(names)) or bias.shape != (len(names),):
        raise CustomVisionExportError(
            f"The head does not fit {arch.name} at {size[0]}x{size[1]}: kernel {kernel.shape}, bias {bias.shape}, "
            f"but the backbone gives {width} features and there are {len(names)} classes. Was it trained with "
            "another architecture or image size?"
        )
    kernel_t, bias_t, mean_t = tf.constant(kernel), tf.constant(bias), tf.constant(mean)

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name="Placeholder")])
    def score(placeholder: Any) -> Any:
        bgr = placeholder + mean_t  # undo the mean: BGR 0-255
        rgb = tf.reverse(bgr, axis=[-1])
        if (h, w) != tuple(size):
            rgb = tf.image.resize(rgb, size, method="bilinear")
        features = backbone(rgb, training=False)
        logits = tf.matmul(features, kernel_t) + bias_t
        return tf.nn.softmax(logits, name="loss")

    graph_def, outputs = freeze_concrete_function(score.get_concrete_function())
    if outputs != [OUTPUT_TENSOR]:
        raise CustomVisionExportError(
            f"Freezing named the output {outputs}, not {OUTPUT_TENSOR!r}; please report this."
        )
    pb_path = Path(pb_path).expanduser()
    pb_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(pb_path.with_name(LABELS_FILE), lambda p: write_labels(names, p))
    _atomic_write(pb_path, lambda p: p.write_bytes(graph_def.SerializeToString()))
    return pb_path
