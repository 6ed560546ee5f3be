"""TODO: describe this module."""
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

INPUT_TENSOR = "image_bytes:0"


PIXELS_TENSOR = "pixels:0"


SCORES_TENSOR = "scores:0"


LABEL_TENSOR = "label:0"


DECODE_LAYER, HEAD_LAYER = "decode", "head"


@keras.saving.register_keras_serializable(package="workshop_utils")
class DecodeImageBytes(keras.layers.Layer):
    """Encoded JPEG/PNG/GIF/BMP bytes (string batch [N]) -> float32 RGB 0–255 [N, H, W, 3].

    Uses :func:`workshop_utils.core.images.decode_image`, the same decoding the bottleneck features were made
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
