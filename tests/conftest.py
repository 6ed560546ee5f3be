"""Fixtures shared by several test files: the bundled sample's frames, and a cheap exported model trained on it
(a least-squares head over a random-weights MobileNetV2 at 64x64) with the photos it was fitted on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workshop_utils.architectures import feature_extractor
from workshop_utils.config import sample_dir
from workshop_utils.core.images import decode_image
from workshop_utils.core.labels import LabelMap
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.data import by_subset, load_dataset
from workshop_utils.export.writer import export_model
from workshop_utils.head import Options, TrainedClassifier
from workshop_utils.scoring import Classifier

tf = import_tensorflow()
PHOTOS = 16  # validation photos of the sample the stand-in head tells apart


@pytest.fixture(scope="session")
def sample_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) frames of the bundled sample."""
    return by_subset(load_dataset(sample_dir()))


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory, sample_frames) -> Path:
    """An export folder: a head fitted (least squares) to tell 16 of the sample's photos apart by their class,
    so labels come with clear margins. Cheap: no training, no export verification (tests/test_export.py does)."""
    train, validation = sample_frames
    frame, size = validation.iloc[:PHOTOS], (64, 64)
    label_map = LabelMap.from_labels(train["label"])
    pixels = tf.stack([decode_image(tf.io.read_file(p), size) for p in frame["image_path"]])
    features = np.asarray(feature_extractor("MobilenetV2", None, size)(pixels, training=False), np.float64)
    targets = 5.0 * np.eye(len(label_map))[[label_map.index(label) for label in frame["label"]]]
    kernel = np.linalg.lstsq(features, targets, rcond=None)[0].astype(np.float32)  # logits ≈ 5 · one-hot(class)
    history = pd.DataFrame({"epoch": [0], "dataset": ["Train"], "accuracy": [1.0], "cross_entropy": [0.1],
                            "learning_rate": [0.01]})
    trained = TrainedClassifier(
        arch="MobilenetV2", backbone_weights=None, image_size=size, label_map=label_map, kernel=kernel,
        bias=np.zeros(len(label_map), np.float32), history=history, best_epoch=0, stopped_early=False,
        options=Options(arch="MobilenetV2", weights=None, image_size=size))
    return export_model(trained, tmp_path_factory.mktemp("serve-model") / "model", verify=False)


@pytest.fixture(scope="session")
def classifier(exported_model) -> Classifier:
    return Classifier.load(exported_model)


@pytest.fixture(scope="session")
def photos(sample_frames) -> dict[str, bytes]:
    """The sample's validation photos the head was fitted on: file name -> bytes."""
    _, validation = sample_frames
    return {Path(p).name: Path(p).read_bytes() for p in validation["image_path"].iloc[:PHOTOS]}


@pytest.fixture(scope="session")
def expected(classifier, photos) -> dict[str, np.ndarray]:
    """In-process scores of each photo (one call per photo)."""
    return {name: classifier.predict_proba([data], [name])[0] for name, data in photos.items()}
