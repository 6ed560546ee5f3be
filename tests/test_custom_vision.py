"""export_custom_vision_style on a tiny stand-in classifier (random MobileNetV2 at 64x64, four classes).

Two frozen graphs are shared by the module: one at the backbone's own size (64x64, so scoring it must
reproduce the end-to-end model) and one at Custom Vision's 227x227 (an extra resize inside, so close only).
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workshop_utils.architectures import feature_extractor
from workshop_utils.config import import_tensorflow
from workshop_utils.custom_vision import (
    INPUT_TENSOR,
    MEAN_BGR,
    OUTPUT_TENSOR,
    CustomVisionExportError,
    export_custom_vision_style,
)
from workshop_utils.data import LabelMap
from workshop_utils.frozen_graph import FrozenGraphScorer, inspect_graph
from workshop_utils.images import decode_image
from workshop_utils.model_io import Classifier
from workshop_utils.trainer import Options, TrainedClassifier

tf = import_tensorflow()

ARCH, SIZE = "MobilenetV2", (64, 64)
CLASSES = ["bumper_dent", "door_scratch", "glass_shatter", "unknown"]


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_images() -> list[bytes]:
    """Smooth, strongly coloured images (gradients survive resizing; colours make BGR vs RGB matter)."""
    y, x = np.mgrid[0:80, 0:100] / 100.0
    images = []
    for r, g, b in [(230, 40, 20), (20, 60, 220), (40, 200, 60), (200, 180, 30)]:
        shade = 0.6 + 0.4 * np.stack([x, y, 1 - x], axis=-1)
        images.append(png(np.clip(shade * np.array([r, g, b]), 0, 255)))
    return images


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return sample_images()


@pytest.fixture(scope="module")
def trained(images) -> TrainedClassifier:
    """A head that tells the four images apart (class i = image i), so the probabilities are not flat."""
    extractor = feature_extractor(ARCH, None, SIZE)
    features = np.concatenate(
        [np.asarray(extractor(decode_image(tf.constant(b), SIZE)[None], training=False)) for b in images]
    ).astype(np.float64)
    kernel = np.linalg.lstsq(features, 4.0 * np.eye(len(CLASSES)), rcond=None)[0]
    return TrainedClassifier(
        arch=ARCH, backbone_weights=None, image_size=SIZE, label_map=LabelMap(CLASSES),
        kernel=kernel.astype(np.float32), bias=np.array([0.1, -0.2, 0.05, 0.0], np.float32),
        history=pd.DataFrame(), best_epoch=0, stopped_early=False,
        options=Options(arch=ARCH, weights=None, image_size=SIZE),
    )


@pytest.fixture(scope="module")
def reference(trained, images) -> np.ndarray:
    """The workshop's own end-to-end model on the same bytes."""
    return Classifier.from_trained(trained).predict_proba(images)


@pytest.fixture(scope="module")
def native(tmp_path_factory, trained):
    """Frozen at the backbone's own size: no resize inside the graph."""
    return export_custom_vision_style(trained, tmp_path_factory.mktemp("cv64") / "model.pb", image_size=SIZE)


@pytest.fixture(scope="module")
def standard(tmp_path_factory, trained):
    """Frozen with the defaults: 227x227, mean MEAN_BGR."""
    return export_custom_vision_style(trained, tmp_path_factory.mktemp("cv227") / "sub" / "model.pb")


def scorer(pb, size, **kwargs) -> FrozenGraphScorer:
    settings = dict(mean=MEAN_BGR, channel_order="BGR")
    settings.update(kwargs)
    return FrozenGraphScorer(pb, INPUT_TENSOR, OUTPUT_TENSOR, size, pb.with_name("labels.txt"), **settings)


def test_tensor_names_labels_and_no_leftovers(standard):
    table = inspect_graph(standard)
    assert table["role"].tolist() == ["input", "output"]
    inp, out = table.iloc[0], table.iloc[1]
    assert (inp["name"], inp["dtype"], inp["shape"]) == ("Placeholder:0", "float32", (None, 227, 227, 3))
    assert (out["name"], out["op"], out["shape"]) == ("loss:0", "Softmax", (None, len(CLASSES)))
    assert standard.with_name("labels.txt").read_text(encoding="utf-8").splitlines() == CLASSES
    assert sorted(p.name for p in standard.parent.iterdir()) == ["labels.txt", "model.pb"]


def test_right_preprocessing_reproduces_the_end_to_end_model(native, images, reference):
    scores = scorer(native, SIZE).predict_proba(images)
    np.testing.assert_allclose(scores, reference, atol=1e-4)
    assert np.argmax(reference, axis=1).tolist() == [0, 1, 2, 3]  # the comparison is not between flat rows


def test_at_227_the_extra_resize_changes_little(standard, images, reference):
    s = scorer(standard, (227, 227))
    assert s.image_size == (227, 227)
    scores = s.predict_proba(images)
    np.testing.assert_allclose(scores, reference, atol=1e-3)  # smooth images: measured 3e-5
    assert np.argmax(scores, axis=1).tolist() == np.argmax(reference, axis=1).tolist()
    p = s.predict_bytes(images[2], name="green.png")
    assert (p.label, list(p.scores)) == ("glass_shatter", CLASSES)


@pytest.mark.parametrize("wrong", [dict(channel_order="RGB"), dict(mean=0.0), dict(mean=MEAN_BGR[::-1])])
def test_wrong_preprocessing_changes_the_probabilities(native, images, reference, wrong):
    scores = scorer(native, SIZE, **wrong).predict_proba(images)
    assert np.abs(scores - reference).max() > 0.01


def test_mean_zero_gives_plain_bgr_input(tmp_path, trained, images, reference):
    pb = export_custom_vision_style(trained, tmp_path / "plain.pb", image_size=SIZE, mean_bgr=(0, 0, 0))
    scores = scorer(pb, SIZE, mean=0.0).predict_proba(images)
    np.testing.assert_allclose(scores, reference, atol=1e-4)


def test_bad_settings(tmp_path, trained):
    with pytest.raises(CustomVisionExportError,
                       match=r"mean_bgr must be three finite numbers \(B, G, R\), got \(1, 2\)"):
        export_custom_vision_style(trained, tmp_path / "m.pb", mean_bgr=(1, 2))
    with pytest.raises(CustomVisionExportError,
                       match=r"image_size must be two whole numbers \(height, width\), got 227"):
        export_custom_vision_style(trained, tmp_path / "m.pb", image_size=227)
    with pytest.raises(CustomVisionExportError, match=r"image_size must be positive, got \(0, 227\)"):
        export_custom_vision_style(trained, tmp_path / "m.pb", image_size=(0, 227))
    wrong = TrainedClassifier(
        arch=ARCH, backbone_weights=None, image_size=SIZE, label_map=LabelMap(CLASSES),
        kernel=np.zeros((10, 4), np.float32), bias=np.zeros(4, np.float32), history=pd.DataFrame(),
        best_epoch=0, stopped_early=False, options=Options(),
    )
    with pytest.raises(CustomVisionExportError, match=r"The head does not fit MobilenetV2 at 64x64: kernel \(10, 4\)"):
        export_custom_vision_style(wrong, tmp_path / "m.pb")
    assert not list(tmp_path.iterdir())  # nothing written on failure
