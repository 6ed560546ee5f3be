"""The end-to-end model an export holds (image bytes -> DecodeImageBytes -> backbone -> softmax head); taking
any such model apart (:func:`model_parts`); float32 copies of mixed-precision models."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from workshop_utils.architectures import feature_extractor, get_architecture
from workshop_utils.core.errors import ExportError, ModelFolderError
from workshop_utils.core.images import decode_images
from workshop_utils.core.runtime import import_tensorflow

tf = import_tensorflow()
import keras  # noqa: E402

INPUT_TENSOR, PIXELS_TENSOR, SCORES_TENSOR, LABEL_TENSOR = "image_bytes:0", "pixels:0", "scores:0", "label:0"
DECODE_LAYER, HEAD_LAYER = "decode", "head"
MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")


@keras.saving.register_keras_serializable(package="workshop_utils")
class DecodeImageBytes(keras.layers.Layer):
    """Encoded JPEG/PNG/GIF/BMP bytes (string batch [N]) -> float32 RGB 0–255 [N, H, W, 3].
    The decoding the bottleneck features were made with, so the saved model sees the pixels the head was
    trained on. Graph ops cannot read EXIF orientation: :class:`Classifier` applies it before this point, and
    bytes fed straight into the SavedModel or ``.pb`` must be upright. No Lambda layer: loads with safe_mode."""

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
        return {**super().get_config(), "image_size": list(self.image_size)}


def label_names(trained: Any) -> list[str]:
    """The class names of a trained classifier (its label map's names, in score order)."""
    return [str(n) for n in getattr(trained.label_map, "names", trained.label_map)]


def trained_head(trained: Any, error: type[Exception] = ExportError) -> tuple[keras.Model, tuple[int, int], Any, Any]:
    """(backbone, input size, kernel, bias) of a trained head; raises ``error`` when the head does not fit."""
    arch = get_architecture(trained.arch)
    size = arch.resolve_input_size(trained.image_size)
    n = len(label_names(trained))
    kernel = np.asarray(trained.kernel, dtype=np.float32)
    bias = np.asarray(trained.bias, dtype=np.float32).reshape(-1)
    backbone = feature_extractor(arch.name, trained.backbone_weights, size)
    width = int(backbone.output_shape[-1])
    if kernel.shape != (width, n) or bias.shape != (n,):
        raise error(
            f"The head does not fit {arch.name} at {size[0]}x{size[1]}: kernel {kernel.shape} and bias {bias.shape}, "
            f"but {arch.name} gives {width} features and there are {n} classes; expected kernel ({width}, {n}). "
            "Was it trained with another architecture or image size?")
    return backbone, size, kernel, bias


def build_end_to_end_model(trained: Any) -> keras.Model:
    """Bytes in, probabilities out: decode → resize → the same frozen backbone → a Dense softmax with the head."""
    backbone, size, kernel, bias = trained_head(trained)
    inputs = keras.Input(shape=(), dtype="string", name="image_bytes")
    features = backbone(DecodeImageBytes(size, name=DECODE_LAYER)(inputs), training=False)
    head = keras.layers.Dense(len(bias), activation="softmax", name=HEAD_LAYER)
    outputs = head(features)
    head.set_weights([kernel, bias])
    head.trainable = False
    return keras.Model(inputs, outputs, name=f"{get_architecture(trained.arch).name}_classifier")


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """An end-to-end classifier taken apart (its own layers and weights, nothing rebuilt).
    ``pixels``: RGB 0–255 (H, W, 3) → probabilities; ``bytes_model``: bytes → probabilities (the model itself
    when it decodes bytes); ``pixels_tensor``: the RGB tensor in the model's graph (to cut sub-models from it)."""

    decode: DecodeImageBytes
    pixels: keras.Model
    bytes_model: keras.Model
    pixels_tensor: Any
    image_size: tuple[int, int]
    num_classes: int


def model_parts(model: keras.Model, error: type[Exception] = ModelFolderError) -> ModelParts:
    """Take an end-to-end classifier apart, however it was built (our builder or a learner's cells).
    Accepted: bytes in (string [None], first layer DecodeImageBytes, then anything) or pixels in (float
    (None, H, W, 3) RGB 0–255), with one output (None, C). Anything else raises ``error`` saying what was found."""
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
    takes = ", ".join(f"{t.dtype} {tuple(t.shape)}" for t in model.inputs)
    if str(inp.dtype) == "string":
        decoders = [layer for layer in model.layers if isinstance(layer, DecodeImageBytes)]
        decoder = decoders[0] if len(decoders) == 1 else None  # its output where the model's input feeds it:
        pixels_tensor = next((node.output_tensors[0] for node in getattr(decoder, "_inbound_nodes", [])
                              if any(t is inp for t in node.input_tensors)), None)
        if pixels_tensor is None:
            raise error(f"{what} takes bytes ({takes}) but has {len(decoders)} DecodeImageBytes layers, not one "
                        f"applied to its input; {expected}.")
        pixels = keras.Model(pixels_tensor, model.outputs[0], name=f"{model.name}_pixels")
        return ModelParts(decoders[0], pixels, model, pixels_tensor, decoders[0].image_size, int(out_shape[-1]))
    shape = tuple(inp.shape)
    if len(shape) != 4 or shape[-1] != 3 or None in shape[1:3] or not str(inp.dtype).startswith("float"):
        raise error(f"{what} takes {takes}; {expected}.")
    size = (int(shape[1]), int(shape[2]))
    image_bytes = keras.Input(shape=(), dtype="string", name="image_bytes")
    decode = DecodeImageBytes(size, name=DECODE_LAYER)
    bytes_model = keras.Model(image_bytes, model(decode(image_bytes), training=False), name=f"{model.name}_bytes")
    return ModelParts(decode, model, bytes_model, inp, size, int(out_shape[-1]))


def _is_mixed(layer: keras.layers.Layer) -> bool:
    return getattr(layer.dtype_policy, "name", "") in MIXED_POLICIES


def uses_mixed_precision(model: keras.Model) -> bool:
    """True when a layer of the model (or of a model nested in it) computes in float16/bfloat16."""
    return _is_mixed(model) or any(
        uses_mixed_precision(layer) if isinstance(layer, keras.Model) else _is_mixed(layer) for layer in model.layers
    )


def _float32_config(config: Any) -> Any:
    """A serialized model's config with every mixed dtype policy replaced by float32."""
    if isinstance(config, dict):
        return {k: "float32" if k in ("name", "dtype") and v in MIXED_POLICIES else _float32_config(v)
                for k, v in config.items()}
    return [_float32_config(v) for v in config] if isinstance(config, list) else config


def float32_model(model: keras.Model) -> keras.Model:
    """A float32 copy (same config and weights) of a model built under a mixed policy; else the model itself.
    Mixed precision rounds to float16 for a GPU's speed; an exported or served model has no reason to round."""
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


def serving_functions(parts: ModelParts, labels: list[str]) -> tuple[Any, Any]:
    """((SavedModel endpoint, its input spec), frozen-graph tf.function): bytes [None] → {"scores", "label"}."""
    spec = tf.TensorSpec([None], tf.string, name="image_bytes")
    model, decode, float_model = parts.bytes_model, parts.decode, parts.pixels

    def serve(image_bytes: Any) -> dict[str, Any]:
        scores = tf.cast(model(image_bytes, training=False), tf.float32)
        return {"scores": scores, "label": tf.gather(tf.constant(labels), tf.argmax(scores, axis=-1))}

    @tf.function(input_signature=[spec])
    def frozen(image_bytes: Any) -> dict[str, Any]:
        pixels = tf.identity(decode(image_bytes), name="pixels")
        probabilities = tf.cast(float_model(pixels, training=False), tf.float32)
        # label reads the scores directly, so that scores and label are both leaves of the frozen graph
        label = tf.identity(tf.gather(tf.constant(labels), tf.argmax(probabilities, axis=-1)), name="label")
        return {"scores": tf.identity(probabilities, name="scores"), "label": label}

    return (serve, spec), frozen
