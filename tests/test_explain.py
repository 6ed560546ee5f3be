"""Grad-CAM (notebook 08): works for every registered architecture, maps have the photo's aspect ratio, and a
map highlights a planted object more than the background."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from workshop_utils.core.runtime import import_tensorflow

tf = import_tensorflow()
import keras  # noqa: E402

import image_cases  # noqa: E402
from workshop_utils import explain  # noqa: E402
from workshop_utils import finetune
from workshop_utils.export.graph import uses_mixed_precision
from workshop_utils.architectures import ARCHITECTURES, get_architecture  # noqa: E402
from workshop_utils.core.errors import ConfigError  # noqa: E402
from workshop_utils.core.labels import LabelMap  # noqa: E402


def fake_trained(arch: str, size: tuple[int, int]) -> SimpleNamespace:
    width = get_architecture(arch).bottleneck_width
    rng = np.random.default_rng(0)
    return SimpleNamespace(arch=arch, image_size=size, backbone_weights=None, label_map=LabelMap(["a", "b", "c"]),
                           kernel=rng.normal(0, 0.1, (width, 3)).astype(np.float32), bias=np.zeros(3, np.float32))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_gives_maps_at_the_photo_size(arch: str) -> None:
    side = max(get_architecture(arch).min_input_size, 64)
    model = finetune.compose_model(fake_trained(arch, (side, side)), finetune.build_augmentation(0.1))
    cam = explain.GradCAM(model)
    backbone = finetune.inner_backbone(model)
    assert len(cam.layer.output.shape) == 4  # found by shape, and it is the last such layer
    after = backbone.layers[backbone.layers.index(cam.layer) + 1:]
    assert all(len(layer.output.shape) != 4 for layer in after)
    x = np.random.default_rng(1).uniform(0, 255, (2, side, side, 3)).astype(np.float32)
    maps, probabilities = cam(x)
    np.testing.assert_allclose(probabilities, model(x, training=False), atol=1e-5)  # the replay is the model
    assert maps.shape[0] == 2 and maps.ndim == 3 and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    photo_map = explain.resize_heatmap(maps[0], (90, 160))  # a 16:9 photo
    assert photo_map.shape == (90, 160)


def planted_model(size: int = 32) -> keras.Model:
    """A tiny CNN built like ours (features model → nested backbone → Dense softmax head) whose class 1 is
    "there is a bright square": channel 0 fires only on bright pixels, channel 1 on the dark background."""
    inputs = keras.Input((size, size, 3))
    conv = keras.layers.Conv2D(2, 3, padding="same", name="detector")
    x = keras.layers.ReLU(name="detector_relu")(conv(inputs))
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(x), name="tiny_backbone")
    conv.set_weights([np.stack([np.full((3, 3, 3), 1 / 27), np.full((3, 3, 3), -1 / 27)], axis=-1).astype(np.float32),
                      np.array([-0.8, 0.5], np.float32)])
    pixels = keras.Input((size, size, 3), name="rgb_0_255")
    features = keras.Model(pixels, backbone(keras.layers.Rescaling(1 / 255, name="preprocess")(pixels)),
                           name="features")
    top = keras.Input((size, size, 3))
    head = keras.layers.Dense(2, activation="softmax", name="head")
    model = keras.Model(top, head(features(top)), name="planted")
    head.set_weights([np.array([[-200.0, 200.0], [1.0, -1.0]], np.float32), np.zeros(2, np.float32)])
    return model


def test_map_highlights_a_planted_object_more_than_the_background() -> None:
    model = planted_model()
    rng = np.random.default_rng(0)
    image = rng.uniform(40, 90, (32, 32, 3)).astype(np.float32)
    image[18:26, 4:12] = 255.0  # the object, off-centre
    maps, probabilities = explain.GradCAM(model)(image)
    assert probabilities[0].argmax() == 1, "the tiny model should see the object"
    heat = maps[0]
    inside = np.zeros_like(heat, dtype=bool)
    inside[18:26, 4:12] = True
    assert heat[inside].mean() > 0.5 > 0.05 > heat[~inside].mean()
    assert np.unravel_index(heat.argmax(), heat.shape)[0] in range(17, 27)


def test_a_class_without_evidence_gives_an_empty_map_not_noise() -> None:
    image = np.full((32, 32, 3), 60.0, np.float32)
    maps, probabilities = explain.GradCAM(planted_model())(image, class_index=1)
    assert probabilities[0].argmax() == 0 and maps.max() == 0  # nothing bright: nothing speaks for class 1


def test_explain_files_gives_predicted_and_true_maps_at_each_photo_size(tmp_path) -> None:
    model = planted_model(32)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(48, 64), (60, 45)]):
        photo = rng.integers(40, 90, (h, w, 3)).astype(np.uint8)
        photo[h // 3: h // 2, w // 3: w // 2] = 255
        path = tmp_path / f"{i}.png"
        path.write_bytes(tf.io.encode_png(photo).numpy())
        paths.append(str(path))
    items = explain.explain_files(explain.GradCAM(model), paths, true_indices=[1, 0])
    assert [item["predicted"] for item in items] == [1, 1]
    assert items[0]["true_heatmap"] is None  # right: one map
    assert items[1]["true_heatmap"] is not None and items[1]["true_heatmap"].shape == (60, 45)  # wrong: two
    assert items[0]["heatmap"].shape == (48, 64) and items[0]["photo"].shape == (48, 64, 3)


def test_bytes_in_export_model_is_explained_from_pixels() -> None:
    from workshop_utils.export.graph import DecodeImageBytes

    inner = finetune.compose_model(fake_trained("EfficientNetLite0", (32, 32)))
    image_bytes = keras.Input(shape=(), dtype="string")
    model = keras.Model(image_bytes, inner(DecodeImageBytes((32, 32))(image_bytes)))
    cam = explain.GradCAM(model)
    x = np.random.default_rng(2).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    maps, probabilities = cam(x)
    np.testing.assert_allclose(probabilities, inner(x), atol=1e-5)
    assert maps.shape == (1, 1, 1)  # a 32² input leaves a 1×1 map in Lite0


def test_bad_inputs_say_what_is_expected() -> None:
    cam = explain.GradCAM(planted_model())
    with pytest.raises(ConfigError, match=r"pixels of shape \(N, 32, 32, 3\), got \(1, 20, 20, 3\)"):
        cam(np.zeros((1, 20, 20, 3), np.float32))
    dense_only = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(ConfigError, match="no nested backbone with a convolutional feature map"):
        explain.GradCAM(dense_only)
    with pytest.raises(ConfigError, match=r"must be 2-D \(height, width\), got shape \(3,\)"):
        explain.resize_heatmap(np.zeros(3), (4, 4))


def test_gallery_plots_one_tile_per_right_two_per_wrong_and_checks_sizes() -> None:
    from workshop_utils import plots

    photo = np.zeros((30, 40, 3), np.uint8)
    base = {"photo": photo, "heatmap": np.zeros((30, 40)), "probabilities": np.array([0.7, 0.3])}
    items = [dict(base, predicted=0, true=0, path="a.jpeg"),
             dict(base, predicted=0, true=1, path="b.jpeg", true_heatmap=np.ones((30, 40)))]
    fig = plots.plot_grad_cam_gallery(items, ["dent", "scratch"], ncols=3)
    tiles = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert len(tiles) == 3
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylim() == (0.0, 1.0)  # one colour bar for every tile: 0 … the peak
    assert "evidence" in bars[0].get_ylabel()
    with pytest.raises(ConfigError, match=r"heatmap of shape \(7, 7\) does not match its photo \(30, 40\)"):
        plots.plot_grad_cam_gallery([dict(base, predicted=0, heatmap=np.zeros((7, 7)))], ["dent", "scratch"])


def test_a_mixed_precision_model_is_explained_in_float32() -> None:
    """float16 feature maps and gradients are cast before they are combined: the map matches the float32 model's."""
    trained = fake_trained("EfficientNetLite0", (64, 64))
    trained.backbone_weights = "imagenet"  # a random backbone's features vanish in float16 (see test_finetune)
    mixed = finetune.compose_model(trained, mixed_precision=True)
    assert uses_mixed_precision(mixed)
    x = np.random.default_rng(3).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    maps, probabilities = explain.GradCAM(mixed)(x)
    assert maps.dtype == np.float32 and probabilities.dtype == np.float32 and np.isfinite(maps).all()
    float_maps, float_probabilities = explain.GradCAM(finetune.compose_model(trained))(x)
    assert maps.max() == 1.0 and float_maps.max() == 1.0  # not an empty map from float16 gradients rounded to 0
    np.testing.assert_allclose(probabilities, float_probabilities, atol=2e-2)
    np.testing.assert_allclose(maps, float_maps, atol=0.1)


def test_explain_files_shows_a_phone_photo_upright(tmp_path) -> None:
    photo = image_cases.asymmetric_photo()  # 48 x 64, upright
    path = tmp_path / "phone.jpg"
    path.write_bytes(image_cases.jpeg(photo, 6))  # stored 64 x 48, on its side
    upright_path = tmp_path / "upright.jpg"
    upright_path.write_bytes(image_cases.jpeg(photo))
    cam = explain.GradCAM(planted_model())
    turned, upright = explain.explain_files(cam, [str(path), str(upright_path)])
    assert turned["photo"].shape == (48, 64, 3) and turned["heatmap"].shape == (48, 64)
    assert np.abs(turned["photo"].astype(int) - photo.astype(int)).mean() < 5  # JPEG noise only
    np.testing.assert_allclose(turned["probabilities"], upright["probabilities"], atol=1e-2)
    np.testing.assert_allclose(turned["heatmap"], upright["heatmap"], atol=0.1)
