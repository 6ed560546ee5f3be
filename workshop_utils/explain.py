"""Grad-CAM (Selvaraju et al., 2017; notebook 08): where in a photo did the model look for a class? Each channel of
the backbone's last 4-D feature map (found by shape) is weighed by the mean gradient of the class score; the positive
part of the sum is a coarse map (7x7 for 224²). Mixed-precision models are explained in float32."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from workshop_utils.core.errors import ConfigError
from workshop_utils.core.images import read_image, read_photo
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.export.graph import DecodeImageBytes

tf = import_tensorflow()
import keras  # noqa: E402


def last_feature_map_layer(backbone: keras.Model) -> keras.layers.Layer:
    """The last layer of ``backbone`` whose output is a 4-D feature map (batch, height, width, channels)."""
    for layer in reversed(backbone.layers):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # a layer used more than once has no single output
            continue
        if len(shape) == 4 and not isinstance(layer, keras.layers.InputLayer):
            return layer
    raise ConfigError(f"Backbone {backbone.name!r} has no layer with a 4-D (batch, height, width, channels) output: "
                      "Grad-CAM needs a convolutional feature map.")


def _has_feature_map(model: keras.Model) -> bool:
    """True when a layer of ``model`` (or of a model nested in it) outputs a 4-D feature map."""
    return any(_has_feature_map(layer) if isinstance(layer, keras.Model)
               else len(getattr(layer.output, "shape", ())) == 4
               for layer in model.layers if not isinstance(layer, keras.layers.InputLayer))


def _find_backbone(model: keras.Model) -> tuple[list[keras.Model], keras.Model]:
    """(the nested models leading to the backbone, the backbone): the deepest nested model with a 4-D map."""
    path: list[keras.Model] = []
    current = model
    while True:
        nested = [layer for layer in current.layers if isinstance(layer, keras.Model) and layer.name != "augmentation"
                  and _has_feature_map(layer)]
        if not nested:
            break
        path.append(current)
        current = nested[-1]
    if not path:
        raise ConfigError(f"Model {model.name!r} has no nested backbone with a convolutional feature map; build it "
                          "as in 07 (keras.Input → backbone → Dense head).")
    return path, current


class GradCAM:
    """Grad-CAM for an end-to-end classifier (pixels 0–255 in, probabilities out), replayed layer by layer without
    augmentation or decoding; the backbone also returns its last 4-D map, whose class-score gradient the tape records.
    A softmax Dense head is read as its logits."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self.containers, self.backbone = _find_backbone(model)
        self.layer = last_feature_map_layer(self.backbone)
        self.grad_model = keras.Model(self.backbone.inputs, [self.layer.output, self.backbone.output],
                                      name=f"{self.backbone.name}_gradcam")
        self.image_size = tuple(int(v) for v in self.backbone.input.shape[1:3])

    def _run(self, container: keras.Model, x: Any, depth: int, last: bool = True) -> tuple[Any, Any]:
        """Replay ``container`` on ``x``: (the backbone's feature map, output). ``last``: the container's output is
        the model's; then a final softmax Dense yields ("logits", tensor)."""
        fmap = None
        target = self.containers[depth + 1] if depth + 1 < len(self.containers) else self.backbone
        layers = [layer for layer in container.layers if not isinstance(layer, keras.layers.InputLayer)]
        for i, layer in enumerate(layers):
            if isinstance(layer, DecodeImageBytes) or layer.name == "augmentation":
                continue
            final = last and i == len(layers) - 1
            if layer is target:
                fmap, x = self.grad_model(x, training=False) if target is self.backbone else \
                    self._run(target, x, depth + 1, final)
            else:
                x = _final_layer(layer, x) if fmap is not None and final else layer(x, training=False)
        return fmap, x

    def scores(self, pixels: Any) -> tuple[Any, Any, Any]:
        """(feature maps, class scores used for the gradient, probabilities) for a batch of pixels."""
        fmap, out = self._run(self.model, pixels, 0)
        if isinstance(out, tuple):  # ("logits", tensor)
            return fmap, out[1], tf.nn.softmax(out[1])
        return fmap, out, out

    def __call__(self, pixels: Any, class_index: int | Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(heatmaps (N, h, w) in [0, 1] at the feature map's resolution, probabilities (N, C)). ``class_index``:
        the class to explain per image (one for all, or one each); None = the predicted one."""
        pixels = tf.convert_to_tensor(np.asarray(pixels, dtype=np.float32))
        if pixels.shape.rank == 3:
            pixels = pixels[None]
        if pixels.shape.rank != 4 or tuple(pixels.shape[1:]) != (*self.image_size, 3):
            h, w = self.image_size
            raise ConfigError(f"Grad-CAM needs pixels of shape (N, {h}, {w}, 3), got {tuple(pixels.shape)}; read the "
                              "photo with workshop_utils.core.images.read_image first.")
        with tf.GradientTape() as tape:
            raw_map, score, probabilities = self.scores(pixels)
            if class_index is None:
                chosen = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            else:
                chosen = tf.broadcast_to(tf.constant(class_index, tf.int32), [tf.shape(pixels)[0]])
            picked = tf.gather(tf.cast(score, tf.float32), chosen, axis=1, batch_dims=1)
        grads = tf.cast(tape.gradient(picked, raw_map), tf.float32)  # float16 in a mixed-precision model
        fmap = tf.cast(raw_map, tf.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # one weight per channel
        cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1)).numpy()
        peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
        return cam.astype(np.float32), np.asarray(probabilities, dtype=np.float32)


def _final_layer(layer: keras.layers.Layer, x: Any) -> Any:
    """The model's last layer on ``x``; a softmax Dense (also as the last layer of a head model such as
    ``trained.head``) gives its logits, tagged ("logits", tensor)."""
    if isinstance(layer, keras.Model):
        *body, layer = [inner for inner in layer.layers if not isinstance(inner, keras.layers.InputLayer)]
        for inner in body:
            x = inner(x, training=False)
    if isinstance(layer, keras.layers.Dense) and getattr(layer.activation, "__name__", "") == "softmax":
        return "logits", tf.matmul(tf.cast(x, layer.kernel.dtype), layer.kernel) + layer.bias
    return layer(x, training=False)


def resize_heatmap(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A coarse heatmap (h, w) resized to (height, width), e.g. a photo's own size, values kept in [0, 1]."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ConfigError(f"A heatmap must be 2-D (height, width), got shape {heatmap.shape}.")
    resized = tf.image.resize(heatmap[..., None], size, method="bilinear").numpy()[..., 0]
    return np.clip(resized, 0.0, 1.0)


load_photo = read_photo  # a photo's pixels at its own size (uint8 RGB), upright, for overlays


def explain_files(cam: GradCAM, paths: Sequence[str], true_indices: Sequence[int] | None = None,
                  batch_size: int = 16) -> list[dict[str, Any]]:
    """Grad-CAM for image files: per image its photo, predicted class, probabilities and heatmaps at the
    photo's own size for the predicted class and (when it differs) the true class. Photos are read upright."""
    results: list[dict[str, Any]] = []
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start:start + batch_size])
        pixels = np.stack([read_image(p, cam.image_size).numpy() for p in chunk])
        predicted_maps, probabilities = cam(pixels)
        predicted = probabilities.argmax(axis=1)
        truth = None if true_indices is None else np.asarray(true_indices[start:start + batch_size])
        true_maps = cam(pixels, truth)[0] if truth is not None and (truth != predicted).any() else None
        for j, path in enumerate(chunk):
            photo = load_photo(path)
            size = photo.shape[:2]
            wrong = true_maps is not None and truth[j] != predicted[j]
            results.append({"path": str(path), "photo": photo, "probabilities": probabilities[j],
                            "predicted": int(predicted[j]), "true": None if truth is None else int(truth[j]),
                            "heatmap": resize_heatmap(predicted_maps[j], size),
                            "true_heatmap": resize_heatmap(true_maps[j], size) if wrong else None})
    return results
