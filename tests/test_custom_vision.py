"""export_custom_vision_style on a tiny stand-in classifier (random MobileNetV2 at 64x64, four classes).

Two frozen graphs are shared by the module: one at the backbone's own size (64x64, so scoring it must
reproduce the end-to-end model) and one at Custom Vision's 227x227 (an extra resize inside, so close only).
"""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workshop_utils.architectures import feature_extractor
from workshop_utils.core.errors import InteropError
from workshop_utils.core.images import decode_image
from workshop_utils.core.labels import LabelMap
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.export.graph import DecodeImageBytes
from workshop_utils.head import Options, TrainedClassifier
from workshop_utils.interop.custom_vision import (
    INPUT_TENSOR,
    MEAN_BGR,
    MODEL_OUTPUTS_TENSOR,
    OUTPUT_TENSOR,
    detect_preprocessing,
    export_custom_vision_style,
    load_export,
    tutorial_pixels,
)
from workshop_utils.interop.frozen_graph import FrozenGraphScorer, inspect_graph
from workshop_utils.scoring import Classifier

tf = import_tensorflow()
import keras  # noqa: E402

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
    assert table["role"].tolist() == ["input", "output", "possible output"]
    inp, out, loss = table.iloc[0], table.iloc[1], table.iloc[2]
    assert (inp["name"], inp["dtype"], inp["shape"]) == ("Placeholder:0", "float32", (None, 227, 227, 3))
    assert (out["name"], out["op"], out["shape"]) == ("model_outputs:0", "Identity", (None, len(CLASSES)))
    assert (loss["name"], loss["op"], loss["shape"]) == ("loss:0", "Softmax", (None, len(CLASSES)))
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(standard.read_bytes())
    assert [n.input[0] for n in graph_def.node if n.name == "model_outputs"] == ["loss"]  # the Identity reads loss
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


@pytest.mark.parametrize("wrong", [dict(channel_order="RGB"), dict(mean=(104.0, 117.0, 123.0)), dict(mean=117.0)])
def test_wrong_preprocessing_changes_the_probabilities(native, images, reference, wrong):
    scores = scorer(native, SIZE, **wrong).predict_proba(images)
    assert np.abs(scores - reference).max() > 0.01


def test_real_exports_take_plain_bgr_so_the_default_mean_is_zero():
    assert MEAN_BGR == (0.0, 0.0, 0.0)


def test_a_mean_can_still_be_asked_for(tmp_path, trained, images, reference):
    mean = (104.0, 117.0, 123.0)
    pb = export_custom_vision_style(trained, tmp_path / "mean.pb", image_size=SIZE, mean_bgr=mean)
    np.testing.assert_allclose(scorer(pb, SIZE, mean=mean).predict_proba(images), reference, atol=1e-4)
    assert np.abs(scorer(pb, SIZE).predict_proba(images) - reference).max() > 0.01


def test_bad_settings(tmp_path, trained):
    with pytest.raises(InteropError,
                       match=r"mean_bgr must be three finite numbers \(B, G, R\), got \(1, 2\)"):
        export_custom_vision_style(trained, tmp_path / "m.pb", mean_bgr=(1, 2))
    with pytest.raises(InteropError,
                       match=r"image_size must be two whole numbers \(height, width\), got 227"):
        export_custom_vision_style(trained, tmp_path / "m.pb", image_size=227)
    with pytest.raises(InteropError, match=r"image_size must be positive, got \(0, 227\)"):
        export_custom_vision_style(trained, tmp_path / "m.pb", image_size=(0, 227))
    wrong = TrainedClassifier(
        arch=ARCH, backbone_weights=None, image_size=SIZE, label_map=LabelMap(CLASSES),
        kernel=np.zeros((10, 4), np.float32), bias=np.zeros(4, np.float32), history=pd.DataFrame(),
        best_epoch=0, stopped_early=False, options=Options(),
    )
    with pytest.raises(InteropError, match=r"The head does not fit MobilenetV2 at 64x64: kernel \(10, 4\)"):
        export_custom_vision_style(wrong, tmp_path / "m.pb")
    with pytest.raises(InteropError, match=r"activation must be 'softmax' or 'sigmoid', got 'relu'"):
        export_custom_vision_style(trained, tmp_path / "m.pb", activation="relu")
    assert not list(tmp_path.iterdir())  # nothing written on failure


# -- real exports: load_export, tensors, preprocessing, multi-label (issue 10, item 10) ------------------------
def write_metadata(folder, pixel_format, manifest_name=None):
    """The files a newer export ships: cvexport.manifest naming its metadata file, which holds the pixel format."""
    name = manifest_name or "metadata_properties.json"
    manifest = {"DomainType": "Classification", "Platform": "TensorFlow", "Flavor": None, "ExporterVersion": "2.0",
                "ModelFileName": "model.pb", "LabelFileName": "labels.txt", "MetadataPropsFileName": name}
    (folder / "cvexport.manifest").write_text(json.dumps(manifest), encoding="utf-8")
    props = {"CustomVision.Postprocess.Method": "ClassificationMultiClass", "Image.BitmapPixelFormat": pixel_format,
             "Image.NominalPixelRange": "NominalRange_0_255"}
    (folder / name).write_text(json.dumps(props), encoding="utf-8")


def bands(colours, height=60, width=180) -> np.ndarray:
    """Vertical bands of the given RGB colours, left to right."""
    out = np.zeros((height, width, 3), np.uint8)
    for i, colour in enumerate(colours):
        out[:, i * width // len(colours):(i + 1) * width // len(colours)] = colour
    return out


def test_load_export_finds_the_tensors_and_uses_the_tutorial_preprocessing(native, trained, images):
    s = load_export(native.parent)
    assert (s.input_name, s.output_name) == ("Placeholder:0", "model_outputs:0")  # model_outputs before loss
    assert (s.preprocessing, s.channel_order, s.image_size) == ("tutorial", "BGR", SIZE)
    assert (s.activation, s.multi_label) == ("Softmax", False)
    assert s.mean.tolist() == [0.0] and s.labels == CLASSES
    assert "no metadata_properties.json" in repr(s)
    # the graph at the backbone's own size: scoring = the backbone on the tutorial's pixels, through the head
    extractor = feature_extractor(ARCH, None, SIZE)
    for data in images:
        pixels = tutorial_pixels(data, SIZE)
        features = np.asarray(extractor(pixels[None], training=False))
        np.testing.assert_allclose(s.predict_proba([data])[0], trained.predict_proba(features)[0], atol=1e-4)
    p = s.predict_bytes(images[1], name="blue.png")
    assert list(p.scores) == CLASSES and p.source == "blue.png"


def test_explicit_tensor_names_win(native):
    s = load_export(native.parent, output_tensor="loss")
    assert (s.input_name, s.output_name, s.activation) == ("Placeholder:0", "loss:0", "Softmax")


def test_older_exports_have_only_loss_and_odd_graphs_are_refused(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="Placeholder")
        tf.nn.softmax(tf.reduce_mean(x, axis=[1, 2]), name="loss")
    (tmp_path / "model.pb").write_bytes(graph.as_graph_def().SerializeToString())
    (tmp_path / "labels.txt").write_text("b\ng\nr\n", encoding="utf-8")
    s = load_export(tmp_path)
    assert (s.input_name, s.output_name, s.image_size) == ("Placeholder:0", "loss:0", (8, 8))
    other = tf.Graph()
    with other.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
        tf.nn.softmax(tf.reduce_mean(x, axis=[1, 2]), name="probabilities")
    (tmp_path / "model.pb").write_bytes(other.as_graph_def().SerializeToString())
    with pytest.raises(InteropError, match=r"(?s)has no tensor called model_outputs or loss, so it is not laid out like a Custom Vision export; pass output_tensor=.*probabilities:0"):
        load_export(tmp_path)
    s = load_export(tmp_path, output_tensor="probabilities")  # the single placeholder is the input
    assert (s.input_name, s.output_name) == ("images:0", "probabilities:0")


def test_load_export_folder_errors(tmp_path):
    with pytest.raises(InteropError, match=r"Custom Vision export folder '.*nowhere' does not exist"):
        load_export(tmp_path / "nowhere")
    (tmp_path / "labels.txt").write_text("a\n", encoding="utf-8")
    with pytest.raises(InteropError, match=r"is missing model\.pb: a Custom Vision TensorFlow export holds model\.pb and labels\.txt"):
        load_export(tmp_path)


def test_the_folder_metadata_chooses_the_preprocessing(native, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(native.parent, folder)
    write_metadata(folder, "Rgb8")
    s = load_export(folder)
    assert (s.preprocessing, s.channel_order) == ("s1", "RGB")
    assert "metadata_properties.json: Image.BitmapPixelFormat = Rgb8" in repr(s)
    assert load_export(folder, preprocessing="tutorial").channel_order == "BGR"  # an explicit choice wins
    write_metadata(folder, "Bgr8", manifest_name="props.json")  # the manifest names the metadata file
    assert detect_preprocessing(folder) == ("tutorial", "props.json: Image.BitmapPixelFormat = Bgr8")
    write_metadata(folder, "Gray8")
    with pytest.raises(InteropError, match=r"metadata_properties\.json: Image\.BitmapPixelFormat is 'Gray8'; expected 'Bgr8' or 'Rgb8'"):
        load_export(folder)
    with pytest.raises(InteropError, match=r"preprocessing must be one of \('tutorial', 's1'\), got 'crop'"):
        load_export(folder, preprocessing="crop")


def test_s1_preprocessing_is_a_plain_rgb_resize(native, images):
    s1 = load_export(native.parent, preprocessing="s1")
    expected = decode_image(tf.constant(images[0]), SIZE).numpy()
    np.testing.assert_allclose(s1.preprocess(images[0]), expected, atol=1e-4)


def test_tutorial_crops_the_centre_square():
    wide = png(bands([(250, 0, 0), (0, 250, 0), (0, 0, 250)]))  # 180x60: the centre square is the green band
    pixels = tutorial_pixels(wide, (32, 32))
    assert pixels.shape == (32, 32, 3)
    np.testing.assert_allclose(pixels.reshape(-1, 3).mean(axis=0), [0, 250, 0], atol=1.0)
    plain = decode_image(tf.constant(wide), (32, 32)).numpy()  # a plain resize keeps all three bands
    assert plain[:, 0, 0].mean() > 200 and plain[:, -1, 2].mean() > 200
    # 256 then the centre: the middle 200 of 256 rows of a square with a red frame show no red at all
    framed = np.full((256, 256, 3), (0, 0, 250), np.uint8)
    framed[:20], framed[-20:], framed[:, :20], framed[:, -20:] = (250, 0, 0), (250, 0, 0), (250, 0, 0), (250, 0, 0)
    assert tutorial_pixels(png(framed), (200, 200))[..., 0].max() < 1.0


def test_tutorial_caps_the_longer_side():
    big = png(np.kron(bands([(10, 20, 240), (200, 100, 0)], height=2, width=4), np.ones((500, 500, 1))).astype(np.uint8))
    pixels = tutorial_pixels(big, (64, 64))  # 2000x1000: capped to 1600x800, centre 800 square
    assert pixels.shape == (64, 64, 3)
    left, right = pixels[:, :28].reshape(-1, 3).mean(axis=0), pixels[:, 36:].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(left, [10, 20, 240], atol=1.0)
    np.testing.assert_allclose(right, [200, 100, 0], atol=1.0)


def test_tutorial_honours_the_exif_orientation():
    from PIL import Image

    top_red = np.zeros((40, 80, 3), np.uint8)
    top_red[:20] = (250, 0, 0)
    top_red[20:] = (0, 0, 250)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the red top becomes the right side
    buffer = io.BytesIO()
    Image.fromarray(top_red).save(buffer, format="JPEG", quality=95, exif=exif)
    pixels = tutorial_pixels(buffer.getvalue(), (32, 32))
    assert pixels[:, 24:, 0].mean() > 200 and pixels[:, :8, 2].mean() > 200  # red right, blue left
    assert pixels[:4, :, 0].mean() < 180  # not red along the top: the rotation was applied


def test_scorer_feeds_bgr_without_a_mean(native):
    s = load_export(native.parent)
    fed = s.preprocess(png(np.full((50, 50, 3), (200, 30, 60), np.uint8)))
    np.testing.assert_allclose(fed.reshape(-1, 3).mean(axis=0), [60, 30, 200], atol=0.5)


def test_sigmoid_export_is_multi_label(tmp_path, trained, images):
    pb = export_custom_vision_style(trained, tmp_path / "ml" / "model.pb", image_size=SIZE, activation="sigmoid")
    s = load_export(pb.parent)
    assert (s.activation, s.multi_label, s.output_name) == ("Sigmoid", True, "model_outputs:0")
    assert "multi-label (Sigmoid)" in repr(s)
    extractor = feature_extractor(ARCH, None, SIZE)
    scores = s.predict_proba(images)
    for data, row in zip(images, scores):
        features = np.asarray(extractor(tutorial_pixels(data, SIZE)[None], training=False), np.float64)
        logits = features @ trained.kernel.astype(np.float64) + trained.bias
        np.testing.assert_allclose(row, 1 / (1 + np.exp(-logits[0])), atol=1e-4)
    assert np.abs(scores.sum(axis=1) - 1).max() > 0.05  # independent scores, not a softmax
    p = s.predict_bytes(images[2])
    assert list(p.scores) == CLASSES and p.label == CLASSES[int(np.argmax(scores[2]))]
    assert p.probability == pytest.approx(scores[2].max())


# -- the stand-in from the model as trained (issue 12's export prerequisite) -----------------------------------
def tiny_model(bytes_in: bool) -> keras.Model:
    """A small classifier built as a learner would: (bytes → DecodeImageBytes →) conv backbone → Sequential head."""
    keras.utils.set_random_seed(5)
    pixels = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(pixels)
    backbone = keras.Model(pixels, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 1, activation="relu")(x)))
    head = keras.Sequential([keras.Input((8,)), keras.layers.Dense(len(CLASSES), activation="softmax")])
    if not bytes_in:
        inputs = keras.Input((32, 32, 3))
        return keras.Model(inputs, head(backbone(inputs)), name="tiny_pixels")
    inputs = keras.Input((), dtype="string")
    return keras.Model(inputs, head(backbone(DecodeImageBytes((32, 32))(inputs))), name="tiny_bytes")


@pytest.mark.parametrize("bytes_in", [True, False], ids=["bytes-in", "pixels-in"])
def test_stand_in_takes_the_model_as_trained(tmp_path, trained, images, bytes_in):
    model = tiny_model(bytes_in)
    pb = export_custom_vision_style(trained, tmp_path / "model.pb", image_size=(32, 32), model=model)
    plain = FrozenGraphScorer(pb, INPUT_TENSOR, MODEL_OUTPUTS_TENSOR, None, CLASSES, channel_order="BGR")
    expected = Classifier.from_model(model, CLASSES).predict_proba(images)
    assert expected.std(axis=0).max() > 1e-4
    np.testing.assert_allclose(plain.predict_proba(images), expected, atol=1e-5)
    rebuilt = export_custom_vision_style(trained, tmp_path / "rebuilt" / "model.pb", image_size=(32, 32))
    other = FrozenGraphScorer(rebuilt, INPUT_TENSOR, MODEL_OUTPUTS_TENSOR, None, CLASSES, channel_order="BGR")
    assert np.abs(other.predict_proba(images) - expected).max() > 0.01


def test_stand_in_needs_a_softmax_dense_at_the_end(tmp_path, trained):
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    relu = keras.Model(inputs, keras.layers.Dense(4, activation="relu")(pooled), name="relu_head")
    with pytest.raises(InteropError, match=r"The final Dense '.*' of model 'relu_head' has activation 'relu'; the stand-in needs the softmax classifier"):
        export_custom_vision_style(trained, tmp_path / "m.pb", model=relu)
    normalised = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(4)(pooled)), name="softmax_layer")
    with pytest.raises(InteropError, match=r"The model ends in Softmax .*; the stand-in needs a final Dense layer"):
        export_custom_vision_style(trained, tmp_path / "m.pb", model=normalised)
