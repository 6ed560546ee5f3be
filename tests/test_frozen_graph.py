"""FrozenGraphScorer and inspect_graph on a small graph shaped like Azure Custom Vision's TensorFlow export.

The graph is a nearest-prototype classifier on the mean colour of the (preprocessed) input, with one
prototype per way of getting the preprocessing wrong, so only the right resize → BGR → (x − mean) * scale
lands on the class called "correct". (This project's own model.pb is scored in test_export.py.)
"""
from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workshop_utils.core.errors import (
    InteropError,
    InvalidImageError,
    LabelsFileError,
    UnscoredImagesWarning,
)
from workshop_utils.core.formats import SUPPORTED_FORMATS
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.core.scorer import Prediction
from workshop_utils.interop.frozen_graph import FrozenGraphScorer, inspect_graph

tf = import_tensorflow()

FORMATS = re.escape(SUPPORTED_FORMATS)
RGB = (200, 30, 60)  # the test image's colour
MEAN_BGR = (104.0, 117.0, 123.0)  # a Caffe-style mean in the model's (BGR) order (real Custom Vision exports use none)
SCALE = 0.5
_bgr = np.array(RGB[::-1], dtype=np.float64)
PROTOTYPES = {
    "rgb_order": (np.array(RGB) - MEAN_BGR) * SCALE,  # channels not swapped
    "no_scale": _bgr - MEAN_BGR,
    "correct": (_bgr - MEAN_BGR) * SCALE,
    "mean_order": ((np.array(RGB) - MEAN_BGR)[::-1]) * SCALE,  # mean applied in RGB order before the swap
    "no_mean": _bgr * SCALE,
}
LABELS = list(PROTOTYPES)


def build_custom_vision_graph(path, batch=None) -> None:
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [batch, 227, 227, 3], name="Placeholder")
        mean_colour = tf.reduce_mean(x, axis=[1, 2])
        protos = tf.constant(np.stack(list(PROTOTYPES.values())), dtype=tf.float32)
        distance = tf.reduce_sum(tf.square(mean_colour[:, None, :] - protos[None]), axis=-1)
        logits = tf.negative(distance, name="logits")
        tf.nn.softmax(logits, name="loss")
    path.write_bytes(graph.as_graph_def().SerializeToString())


def image_bytes(fmt="PNG", color=RGB, size=(50, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cv_graph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cv")
    build_custom_vision_graph(folder / "model.pb")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    return folder


def scorer(folder, **kwargs) -> FrozenGraphScorer:
    settings = dict(mean=MEAN_BGR, scale=SCALE, channel_order="BGR")
    settings.update(kwargs)
    return FrozenGraphScorer(folder / "model.pb", "Placeholder", "loss", (227, 227), folder / "labels.txt", **settings)


def test_inspect_graph_lists_inputs_and_outputs(cv_graph):
    table = inspect_graph(cv_graph / "model.pb")
    assert list(table.columns) == ["role", "name", "op", "dtype", "shape"]
    rows = {r.name: r for r in table.itertuples()}
    assert rows["Placeholder:0"].role == "input"
    assert (rows["Placeholder:0"].dtype, rows["Placeholder:0"].shape) == ("float32", (None, 227, 227, 3))
    assert (rows["loss:0"].role, rows["loss:0"].op, rows["loss:0"].shape) == ("output", "Softmax", (None, 5))
    assert table["role"].tolist() == ["input", "output"]


def test_custom_vision_preprocessing_finds_the_right_class(cv_graph):
    s = scorer(cv_graph)  # image_size from the argument; labels from labels.txt
    p = s.predict_bytes(image_bytes(), name="red.png")
    assert isinstance(p, Prediction)
    assert (p.label, p.source) == ("correct", "red.png")
    assert p.probability > 0.999
    assert list(p.scores) == LABELS


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(channel_order="RGB"), "rgb_order"),
        (dict(mean=0.0), "no_mean"),
        (dict(scale=1.0), "no_scale"),
        (dict(mean=MEAN_BGR[::-1]), "mean_order"),
    ],
)
def test_each_preprocessing_setting_matters(cv_graph, kwargs, expected):
    assert scorer(cv_graph, **kwargs).predict_bytes(image_bytes()).label == expected


def test_image_size_from_graph_and_file_scoring(cv_graph, tmp_path):
    s = FrozenGraphScorer(cv_graph / "model.pb", "Placeholder:0", "loss:0", None, LABELS, MEAN_BGR, SCALE, "bgr")
    assert s.image_size == (227, 227)
    path = tmp_path / "car.bmp"
    path.write_bytes(image_bytes("BMP"))
    p = s.predict_file(path)
    assert (p.label, p.source) == ("correct", str(path))
    assert "Placeholder:0" in repr(s)


def test_logits_output_with_softmax_and_fixed_batch(tmp_path):
    build_custom_vision_graph(tmp_path / "b1.pb", batch=1)
    s = FrozenGraphScorer(tmp_path / "b1.pb", "Placeholder", "logits", None, LABELS, MEAN_BGR, SCALE, "BGR", softmax=True)
    scores = s.predict_proba([image_bytes(), image_bytes(color=(10, 10, 10))])  # fed one at a time
    assert scores.shape == (2, 5)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)
    assert LABELS[int(np.argmax(scores[0]))] == "correct"


def test_predict_frame(cv_graph, tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(image_bytes("PNG"))  # extension does not matter, the header does
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.warns(UnscoredImagesWarning, match=r"1 of 2 images"):
        out = scorer(cv_graph).predict_frame(pd.DataFrame({"image_path": [str(good), str(bad)]}))
    assert out["predicted"].tolist() == ["correct", None]
    assert f"not a decodable {SUPPORTED_FORMATS} image" in out.loc[1, "error"]


def test_bad_images_rejected(cv_graph):
    s = scorer(cv_graph)
    with pytest.raises(InvalidImageError, match=rf"image 'x': the bytes are empty \(0 bytes\): not a decodable {FORMATS} image"):
        s.predict_bytes(b"", name="x")
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()  # cut in the middle of the scan data: the header still reads fine
    with pytest.raises(InvalidImageError, match=rf"image 'cut\.jpg': the bytes are not a decodable {FORMATS} image \(truncated or corrupt"):
        s.predict_bytes(jpeg[: len(jpeg) // 2], name="cut.jpg")
    small = FrozenGraphScorer(s.pb_path, "Placeholder", "loss", None, LABELS, max_pixels=1000)
    with pytest.raises(InvalidImageError, match=r"50x40 = 0.002 MP, over the limit"):
        small.predict_bytes(image_bytes())


def test_setting_errors(cv_graph, tmp_path):
    pb = cv_graph / "model.pb"
    with pytest.raises(InteropError, match=r"(?s)The input tensor 'input:0' is not in .*Placeholder:0.*loss:0"):
        FrozenGraphScorer(pb, "input", "loss", None, LABELS)
    with pytest.raises(InteropError, match=r"The output tensor 'scores:0' is not in"):
        FrozenGraphScorer(pb, "Placeholder", "scores", None, LABELS)
    with pytest.raises(InteropError, match=r"channel_order must be 'RGB' or 'BGR', got 'RBG'"):
        FrozenGraphScorer(pb, "Placeholder", "loss", None, LABELS, channel_order="RBG")
    with pytest.raises(InteropError, match=r"mean must be one number or three"):
        FrozenGraphScorer(pb, "Placeholder", "loss", None, LABELS, mean=(1.0, 2.0))
    with pytest.raises(InteropError, match=r"image_size \(224, 224\) does not match input Placeholder:0 .*use image_size=\(227, 227\)"):
        FrozenGraphScorer(pb, "Placeholder", "loss", (224, 224), LABELS)
    with pytest.raises(LabelsFileError, match=r"returned 5 scores but there are 2 labels"):
        FrozenGraphScorer(pb, "Placeholder", "loss", None, ["a", "b"]).predict_bytes(image_bytes())


def test_file_errors(tmp_path):
    with pytest.raises(InteropError, match=r"Frozen graph '.*missing\.pb' does not exist"):
        inspect_graph(tmp_path / "missing.pb")
    (tmp_path / "junk.pb").write_bytes(b"\xff\xff\xff\xffjunk")
    with pytest.raises(InteropError, match=r"'.*junk\.pb' is not a frozen TensorFlow GraphDef .*saved_model\.pb is a different format"):
        FrozenGraphScorer(tmp_path / "junk.pb", "Placeholder", "loss", None, LABELS)
