"""export_model / Classifier / export_tflite on a tiny stand-in classifier (random MobileNetV2 at 64x64).

One export is shared by the module (it is the slow part); the atomic-write rules are tested with a
stubbed writer so they cost nothing.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import image_cases
from workshop_utils.architectures import feature_extractor, get_architecture
from workshop_utils.core.errors import (
    ExportError,
    ImageTooLargeError,
    InvalidImageError,
    LabelsFileError,
    ModelFolderError,
    UnscoredImagesWarning,
)
from workshop_utils.core.formats import SUPPORTED_FORMATS
from workshop_utils.core.images import decode_image
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.export import writer
from workshop_utils.export.card import UPRIGHT_NOTE, stored_classes
from workshop_utils.export.graph import (
    INPUT_TENSOR,
    LABEL_TENSOR,
    PIXELS_TENSOR,
    SCORES_TENSOR,
    DecodeImageBytes,
    build_end_to_end_model,
    float32_model,
    uses_mixed_precision,
)
from workshop_utils.export.writer import export_model, export_tflite
from workshop_utils.interop.frozen_graph import FrozenGraphScorer, inspect_graph
from workshop_utils.scoring import Classifier

tf = import_tensorflow()
import keras  # noqa: E402

ARCH, SIZE = "MobilenetV2", (64, 64)
CLASSES = ["bumper_dent", "door_scratch", "glass_shatter", "unknown"]
TOL = 1e-5
FORMATS = re.escape(SUPPORTED_FORMATS)  # "JPEG/PNG/GIF/BMP[/WebP]": what the installed TensorFlow decodes


class StandInLabelMap:
    def __init__(self, names):
        self.names = list(names)

    def save(self, path):
        Path(path).write_text("\n".join(self.names) + "\n", encoding="utf-8")


@dataclass
class StandInOptions:
    arch: str = ARCH
    epoch: int = 5
    learning_rate: float = 0.01
    workspace_path: Path | None = Path("/tmp/ws")
    metrics_callback: Any = print
    early_stopping: Any = None


@dataclass
class StandInTrained:
    """The spec's TrainedClassifier attributes, and its predict_proba (softmax of features @ kernel + bias)."""

    arch: str
    backbone_weights: str | None
    image_size: tuple[int, int]
    label_map: StandInLabelMap
    kernel: np.ndarray
    bias: np.ndarray
    history: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"epoch": [1, 2, 3], "accuracy": [0.2, 0.4, 0.5]}))
    best_epoch: int = 3
    stopped_early: bool = False
    options: StandInOptions = field(default_factory=StandInOptions)

    def predict_proba(self, features):
        logits = np.asarray(features, np.float64) @ self.kernel.astype(np.float64) + self.bias.astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def make_trained() -> StandInTrained:
    """A head that tells the first four test images apart (class i = image i), so labels are meaningful."""
    extractor = feature_extractor(ARCH, None, SIZE)
    blobs = list(varied_images().values())[: len(CLASSES)]
    features = np.concatenate(
        [np.asarray(extractor(decode_image(tf.constant(b), SIZE)[None], training=False)) for b in blobs]
    ).astype(np.float64)
    kernel = np.linalg.lstsq(features, 5.0 * np.eye(len(CLASSES)), rcond=None)[0]  # logits ≈ 5 · one-hot(i) on image i
    return StandInTrained(
        arch=ARCH,
        backbone_weights=None,
        image_size=SIZE,
        label_map=StandInLabelMap(CLASSES),
        kernel=kernel.astype(np.float32),
        bias=np.array([0.1, -0.2, 0.05, 0.0], np.float32),
    )


def encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def varied_images() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:70, 0:90]
    base = np.stack([x * 2.8, y * 3.6, 128 + 60 * np.sin(x / 6)], -1)
    noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    blocks = np.kron(rng.integers(0, 256, (5, 4, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    return {
        "noise.jpg": encode(noisy, "JPEG"),
        "blocks.png": encode(blocks, "PNG"),
        "gray.png": encode(noisy, "PNG", "L"),
        "plain.bmp": encode(noisy[::-1], "BMP"),
        "rgba.png": encode(blocks, "PNG", "RGBA"),  # same pixels as blocks.png once alpha is dropped
        "anim.gif": encode(blocks, "GIF"),
    }


def garbled_png(png: bytes) -> bytes:
    """Every chunk whole (the walk passes it) but the compressed pixels zeroed: only decoding finds it broken."""
    data = bytearray(png)
    start = data.index(b"IDAT") + 8
    data[start:start + 32] = bytes(32)
    return bytes(data)


def reference_scores(trained, data: bytes) -> np.ndarray:
    """What the in-memory model says: the backbone's features of the decoded image through the head."""
    features = feature_extractor(trained.arch, trained.backbone_weights, trained.image_size)(
        decode_image(tf.constant(data), trained.image_size)[None], training=False
    )
    return trained.predict_proba(np.asarray(features))[0]


@pytest.fixture(scope="module")
def trained():
    return make_trained()


@pytest.fixture(scope="module")
def images():
    return varied_images()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained):
    root = tmp_path_factory.mktemp("export")
    metrics = SimpleNamespace(
        micro_accuracy=0.75, macro_accuracy=0.5, log_loss=np.float64(0.9), log_loss_reduction=0.2,
        per_class_log_loss=np.array([0.1, 0.2, 0.3, 0.4]), top_k_accuracy=None,
    )
    return export_model(trained, root / "model", metrics=metrics)


@pytest.fixture(scope="module")
def classifier(exported):
    return Classifier.load(exported)


# -- the export folder ------------------------------------------------------------------------------------
def test_export_writes_the_documented_files(exported):
    assert sorted(p.name for p in exported.iterdir()) == sorted(
        ["model.keras", "saved_model", "model.pb", "labels.txt", "model_card.json"]
    )
    assert (exported / "labels.txt").read_text(encoding="utf-8") == "\n".join(CLASSES) + "\n"
    assert [p.name for p in exported.parent.iterdir()] == ["model"]  # no temp or backup folders left


def test_model_card(exported):
    card = json.loads((exported / "model_card.json").read_text(encoding="utf-8"))
    assert card["arch"] == ARCH and card["classes"] == CLASSES and card["num_classes"] == 4
    assert card["image_size"] == [64, 64]
    assert card["backbone_weights"] is None and card["backbone_weights_id"] == "random-init:seed0"
    assert [t["name"] for t in card["inputs"]["frozen_graph"]] == [INPUT_TENSOR, PIXELS_TENSOR]
    assert [t["name"] for t in card["outputs"]["frozen_graph"]] == [SCORES_TENSOR, LABEL_TENSOR]
    assert card["inputs"]["saved_model"]["signature"] == "serving_default"
    assert card["metrics"]["micro_accuracy"] == 0.75 and card["metrics"]["log_loss"] == 0.9
    assert card["metrics"]["per_class_log_loss"] == dict(zip(CLASSES, [0.1, 0.2, 0.3, 0.4]))
    assert "top_k_accuracy" not in card["metrics"]
    options = card["training"]["options"]
    assert options["type"] == "StandInOptions" and options["epoch"] == 5 and options["workspace_path"] == "/tmp/ws"
    assert options["metrics_callback"] == "print"
    assert card["training"]["best_epoch"] == 3 and card["training"]["epochs_run"] == 3
    assert set(card["versions"]) >= {"python", "tensorflow", "keras"}
    assert card["versions"]["tensorflow"] == tf.__version__
    assert dt.datetime.fromisoformat(card["created"]).tzinfo is not None
    assert "x * 0.00784314 - 1 (inside the model)" in card["preprocessing"]
    assert card["orientation"] == UPRIGHT_NOTE and card["precision"] == "float32"
    assert card["orientation"].startswith("The model expects upright images. Bytes fed straight into model.keras, "
                                          "saved_model/ or model.pb are decoded as stored")
    assert "upright image" in card["inputs"]["keras"]["description"]
    assert "EXIF orientation is not applied" in card["inputs"]["frozen_graph"][0]["description"]
    assert card["tta"] is False and "evaluations" not in card  # off by default: it doubles the cost


def test_keras_file_has_no_lambda_and_loads_in_safe_mode(exported):
    with zipfile.ZipFile(exported / "model.keras") as archive:
        config = archive.read("config.json").decode()
    assert "Lambda" not in config
    assert '"workshop_utils>DecodeImageBytes"' in config
    model = keras.models.load_model(exported / "model.keras", safe_mode=True)
    assert model.input.dtype == "string" and tuple(model.input.shape) == (None,)
    assert tuple(model.output.shape) == (None, len(CLASSES))


# -- predictions agree everywhere ---------------------------------------------------------------------------
def test_reloaded_classifier_matches_in_memory_model(classifier, trained, images):
    in_memory = Classifier.from_trained(trained)
    for name, data in images.items():
        expected = reference_scores(trained, data)
        prediction = classifier.predict_bytes(data, name=name)
        np.testing.assert_allclose(list(prediction.scores.values()), expected, atol=TOL, err_msg=name)
        np.testing.assert_allclose(in_memory.predict_proba([data])[0], expected, atol=TOL, err_msg=name)
        assert prediction.label == CLASSES[int(np.argmax(expected))]
        assert prediction.probability == pytest.approx(expected.max(), abs=TOL)
        assert prediction.source == name
    batch = classifier.predict_proba(list(images.values()))
    np.testing.assert_allclose(batch, [reference_scores(trained, d) for d in images.values()], atol=TOL)
    assert [CLASSES[i] for i in batch[:4].argmax(axis=1)] == CLASSES  # the head was built to tell them apart


def test_saved_model_signature(exported, trained, images):
    serving = tf.saved_model.load(str(exported / "saved_model")).signatures["serving_default"]
    spec = serving.structured_input_signature[1]["image_bytes"]
    assert spec.dtype == tf.string and spec.shape.as_list() == [None]
    out = serving(image_bytes=tf.constant(list(images.values())))
    assert set(out) == {"scores", "label"}
    expected = np.array([reference_scores(trained, d) for d in images.values()])
    np.testing.assert_allclose(out["scores"].numpy(), expected, atol=TOL)
    assert [b.decode() for b in out["label"].numpy()] == [CLASSES[i] for i in expected.argmax(axis=1)]


def test_frozen_graph_tensor_names_and_scores(exported, trained, images):
    table = inspect_graph(exported / "model.pb")
    inputs = table[table.role == "input"]
    assert inputs[["name", "dtype", "shape"]].values.tolist() == [[INPUT_TENSOR, "string", (None,)]]
    outputs = table[table.role == "output"].set_index("name")
    assert outputs.loc[SCORES_TENSOR, "shape"] == (None, len(CLASSES)) and outputs.loc[LABEL_TENSOR, "dtype"] == "string"

    bytes_scorer = FrozenGraphScorer(exported / "model.pb", INPUT_TENSOR, SCORES_TENSOR, None, exported / "labels.txt")
    pixel_scorer = FrozenGraphScorer(exported / "model.pb", PIXELS_TENSOR, SCORES_TENSOR, SIZE, exported / "labels.txt")
    expected = np.array([reference_scores(trained, d) for d in images.values()])
    np.testing.assert_allclose(bytes_scorer.predict_proba(list(images.values())), expected, atol=TOL)
    np.testing.assert_allclose(pixel_scorer.predict_proba(list(images.values())), expected, atol=TOL)
    assert bytes_scorer.predict_bytes(images["noise.jpg"]).label == CLASSES[int(expected[0].argmax())]

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((exported / "model.pb").read_bytes())
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    labels = wrapped.prune(INPUT_TENSOR, LABEL_TENSOR)(tf.constant(list(images.values())))
    assert [b.decode() for b in labels.numpy()] == [CLASSES[i] for i in expected.argmax(axis=1)]


def test_predict_file_and_frame(classifier, trained, images, tmp_path):
    paths = []
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    p = classifier.predict_file(tmp_path / "blocks.png")
    assert p.source == str(tmp_path / "blocks.png")
    assert str(p).startswith(f"{tmp_path / 'blocks.png'}: {p.label} (")
    (tmp_path / "cut.jpg").write_bytes(images["noise.jpg"][:1500])
    df = pd.DataFrame({"image_path": paths + [str(tmp_path / "cut.jpg")], "label": ["?"] * (len(paths) + 1)})
    with pytest.warns(UnscoredImagesWarning, match=r"1 of 7 images could not be scored"):
        out = classifier.predict_frame(df, batch_size=4)
    expected = np.array([reference_scores(trained, d) for d in images.values()])
    np.testing.assert_allclose(out[[f"score_{c}" for c in CLASSES]].to_numpy()[:6], expected, atol=TOL)
    assert out["predicted"].tolist()[:6] == [CLASSES[i] for i in expected.argmax(axis=1)]
    assert out["error"].tolist()[:6] == [None] * 6
    assert out.loc[6, "predicted"] is None and np.isnan(out.loc[6, "probability"])
    assert f"cut.jpg': the bytes are not a decodable {SUPPORTED_FORMATS} image (truncated or corrupt" in out.loc[6, "error"]


# -- untrusted input -----------------------------------------------------------------------------------------
def test_bad_image_bytes(classifier, images):
    with pytest.raises(InvalidImageError, match=rf"image 'up\.jpg': the bytes are empty \(0 bytes\): not a decodable {FORMATS} image"):
        classifier.predict_bytes(b"", name="up.jpg")
    with pytest.raises(InvalidImageError, match=rf"^the bytes \(.*\) are not a decodable {FORMATS} image"):
        classifier.predict_bytes(b"%PDF-1.4 not an image")
    jpeg = images["noise.jpg"]
    for cut in (len(jpeg) - 2, len(jpeg) // 2, 1500):  # missing end marker; half the scan; mostly header
        with pytest.raises(InvalidImageError, match=rf"image 'cut\.jpg': the bytes are not a decodable {FORMATS} image \(truncated or corrupt"):
            classifier.predict_bytes(jpeg[:cut], name="cut.jpg")
    with pytest.raises(InvalidImageError, match=rf"^image 'cut\.jpg': the bytes are not a decodable {FORMATS} image "
                                                r"\(truncated or corrupt: the data stops after 1,500 bytes"):
        classifier.predict_proba([images["blocks.png"], jpeg[:1500]], ["blocks.png", "cut.jpg"])  # found by the walk
    with pytest.raises(InvalidImageError, match=r"^one of 2 images \(score them one by one to find it\): the bytes are "
                                                r"not a decodable .*\(truncated or corrupt"):
        classifier.predict_proba([images["blocks.png"], garbled_png(images["blocks.png"])])  # found by TensorFlow
    assert issubclass(InvalidImageError, ValueError)


def test_pixel_limit(exported, images):
    strict = Classifier.load(exported, max_pixels=6_000)
    with pytest.raises(ImageTooLargeError, match=r"image 'big\.jpg': the image is 90x70 = 0.0063 MP, over the limit of 0.006 MP \(max_pixels=6000\)"):
        strict.predict_bytes(images["noise.jpg"], name="big.jpg")
    assert strict.predict_bytes(images["blocks.png"]).label in CLASSES  # 64x80 = 5120 pixels: allowed


def test_missing_file(classifier, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Image file '.*nope\.jpg' does not exist"):
        classifier.predict_file(tmp_path / "nope.jpg")


# -- loading errors -------------------------------------------------------------------------------------------
def test_load_missing_folder_or_files(exported, tmp_path):
    with pytest.raises(ModelFolderError, match=r"Model folder '.*nowhere' does not exist\. Re-export it with workshop_utils\.export\.writer\.export_model"):
        Classifier.load(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    with pytest.raises(ModelFolderError, match=r"'.*partial' is missing model\.keras, labels\.txt\. Re-export"):
        Classifier.load(partial)
    shutil.copy(exported / "labels.txt", partial / "labels.txt")
    shutil.copy(exported / "model_card.json", partial / "model_card.json")
    with pytest.raises(ModelFolderError, match=r"'.*partial' is missing model\.keras\. Re-export .*python -m workshop_utils run"):
        Classifier.load(partial)


def test_load_rejects_labels_of_another_model(exported, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "model.keras").symlink_to(exported / "model.keras")
    (folder / "labels.txt").write_text("a\nb\n", encoding="utf-8")
    shutil.copy(exported / "model_card.json", folder / "model_card.json")
    with pytest.raises(LabelsFileError, match=r"2 labels but the model has 4 outputs in .*mixed; the labels\.txt does not belong"):
        Classifier.load(folder)


# -- the class names live inside model.keras (issue 10, item 3) -----------------------------------------------
def copy_export(exported: Path, folder: Path) -> Path:
    shutil.copytree(exported, folder)
    return folder


def test_class_names_are_stored_inside_model_keras(exported):
    with zipfile.ZipFile(exported / "model.keras") as archive:
        record = json.loads(archive.read("workshop_classes.json"))
    assert record["classes"] == CLASSES and record["num_classes"] == 4
    assert stored_classes(exported / "model.keras") == CLASSES
    card = json.loads((exported / "model_card.json").read_text(encoding="utf-8"))
    assert "workshop_classes.json" in card["files"]["model.keras"]


def test_reordered_labels_txt_is_refused(exported, tmp_path):
    folder = copy_export(exported, tmp_path / "model")
    swapped = [CLASSES[1], CLASSES[0], *CLASSES[2:]]
    (folder / "labels.txt").write_text("\n".join(swapped) + "\n", encoding="utf-8")
    with pytest.raises(LabelsFileError) as caught:
        Classifier.load(folder)
    message = str(caught.value)
    assert f"{folder / 'labels.txt'} lists the classes as {swapped}" in message
    assert f"but {folder / 'model.keras'} was trained with {CLASSES} (in this order, stored inside it)" in message
    assert "Restore labels.txt to that order (one name per line)" in message and "Re-export it with" in message
    (folder / "labels.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")  # restored: loads again
    assert Classifier.load(folder).labels == CLASSES


def without_stored_classes(keras_file: Path) -> None:
    """Rewrite a .keras file as an older export wrote it: without workshop_classes.json."""
    with zipfile.ZipFile(keras_file) as archive:
        entries = {name: archive.read(name) for name in archive.namelist() if name != "workshop_classes.json"}
    with zipfile.ZipFile(keras_file, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def test_an_older_export_is_checked_against_the_model_card(exported, tmp_path, recwarn):
    """No class names inside model.keras (an older export, or a plain model.save with a hand-made card): the card's
    classes guard labels.txt, without a warning (the folder is valid, there is nothing to re-export)."""
    folder = copy_export(exported, tmp_path / "old")
    without_stored_classes(folder / "model.keras")
    assert Classifier.load(folder).labels == CLASSES
    assert not [w for w in recwarn if "labels.txt" in str(w.message) or "class names" in str(w.message)]
    (folder / "labels.txt").write_text("\n".join(CLASSES[::-1]) + "\n", encoding="utf-8")
    with pytest.raises(LabelsFileError, match=r"labels\.txt lists the classes as .* but .*model_card\.json says the model \(.*model\.keras\) was trained with"):
        Classifier.load(folder)


def test_the_model_card_is_optional(exported, tmp_path, recwarn):
    """Without a card (a plain Keras folder) the stored class names still guard labels.txt; a broken card is named."""
    folder = copy_export(exported, tmp_path / "no_card")
    (folder / "model_card.json").unlink()
    loaded = Classifier.load(folder)
    assert loaded.labels == CLASSES and loaded.card is None and not loaded.tta
    assert not [w for w in recwarn if "labels.txt" in str(w.message)]
    (folder / "labels.txt").write_text("\n".join(CLASSES[::-1]) + "\n", encoding="utf-8")
    with pytest.raises(LabelsFileError, match=r"labels\.txt lists the classes as .* \(in this order, stored inside it\)"):
        Classifier.load(folder)
    (folder / "model_card.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelFolderError, match=r"model_card\.json is not valid JSON \(.*\); fix or delete it\."):
        Classifier.load(folder)


def test_an_older_export_without_classes_anywhere_trusts_labels_txt(exported, tmp_path, recwarn):
    folder = copy_export(exported, tmp_path / "old")
    without_stored_classes(folder / "model.keras")
    card = json.loads((folder / "model_card.json").read_text(encoding="utf-8"))
    del card["classes"]
    (folder / "model_card.json").write_text(json.dumps(card), encoding="utf-8")
    assert Classifier.load(folder).labels == CLASSES  # nothing to check the order against: trusted
    assert not [w for w in recwarn if "labels.txt" in str(w.message)]
    (folder / "labels.txt").write_text("a\nb\n", encoding="utf-8")  # the count still is checked
    with pytest.raises(LabelsFileError, match=r"2 labels but the model has 4 outputs in .*old; the labels\.txt does not belong"):
        Classifier.load(folder)


def test_tampered_stored_classes_are_reported(exported, tmp_path):
    folder = copy_export(exported, tmp_path / "model")
    without_stored_classes(folder / "model.keras")
    record = {"format": 1, "classes": CLASSES[::-1], "num_classes": 4, "labels_txt_sha256": "0" * 64}
    with zipfile.ZipFile(folder / "model.keras", "a") as archive:
        archive.writestr("workshop_classes.json", json.dumps(record))
    with pytest.raises(ModelFolderError, match=r"model\.keras: the class names stored in its workshop_classes\.json do not match their checksum"):
        Classifier.load(folder)


# -- a garbage model.keras (issue 10, item 8) ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)), r"\(3000 bytes, starting b'.*'\) is not\. "),
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", r"\(48 bytes, starting b'<!DOCTYPE html><'\) is not \(it looks like an HTML page: a failed download\?\)"),
    ],
    ids=["random-bytes", "html-page"],
)
def test_garbage_model_keras_is_named_as_such(exported, tmp_path, content, detail):
    folder = copy_export(exported, tmp_path / "model")
    (folder / "model.keras").write_bytes(content)
    with pytest.raises(ModelFolderError) as caught:
        Classifier.load(folder)
    message = str(caught.value)
    assert "File not found" not in message
    assert re.search(r"model\.keras is not a valid \.keras file: a Keras 3 model file is a zip archive, but this one " + detail, message), message
    assert "Re-export it with workshop_utils.export.writer.export_model(trained, " in message


def test_a_zip_that_is_not_a_keras_file(exported, tmp_path):
    folder = copy_export(exported, tmp_path / "model")
    with zipfile.ZipFile(folder / "model.keras", "w") as archive:
        archive.writestr("photo.jpg", b"x")
    with pytest.raises(ModelFolderError, match=r"model\.keras is not a valid \.keras file: the zip holds no config\.json \(it has \['photo\.jpg'\]\)\. Re-export"):
        Classifier.load(folder)


def test_head_must_fit_the_backbone(trained):
    bad = make_trained()
    bad.kernel = bad.kernel[:1000]
    with pytest.raises(ExportError, match=r"kernel \(1000, 4\) .* MobilenetV2 gives 1280 features and there are 4 classes; expected kernel \(1280, 4\)"):
        build_end_to_end_model(bad)


# -- atomic export (stubbed writer: the rules, not TensorFlow) --------------------------------------------
def fake_writer(content: str, fail: bool = False):
    def write(folder, trained, metrics, verify, model=None, scoring=None):
        (folder / "model.keras").write_text(content)
        if fail:
            raise RuntimeError("disk full (simulated)")
        (folder / "model_card.json").write_text("{}")

    return write


def test_failed_export_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(writer, "_write_export", fake_writer("new", fail=True))
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(None, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_the_previous_one(monkeypatch, tmp_path):
    monkeypatch.setattr(writer, "_write_export", fake_writer("old"))
    export_model(None, tmp_path / "model")
    monkeypatch.setattr(writer, "_write_export", fake_writer("new", fail=True))
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(None, tmp_path / "model")
    assert (tmp_path / "model" / "model.keras").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_export_replaces_a_previous_export(monkeypatch, tmp_path):
    monkeypatch.setattr(writer, "_write_export", fake_writer("old"))
    export_model(None, tmp_path / "model")
    (tmp_path / "model" / "stale.txt").write_text("from the old export")
    monkeypatch.setattr(writer, "_write_export", fake_writer("new"))
    assert export_model(None, tmp_path / "model") == (tmp_path / "model").absolute()
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.keras", "model_card.json"]
    assert (tmp_path / "model" / "model.keras").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~umask  # not a private temp dir's 0700
    with pytest.raises(ExportError, match=r"model already exists; pass overwrite=True"):
        export_model(None, tmp_path / "model", overwrite=False)


def test_export_refuses_a_folder_that_is_not_an_export(monkeypatch, tmp_path):
    monkeypatch.setattr(writer, "_write_export", fake_writer("new"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.docx").write_text("precious")
    with pytest.raises(ExportError, match=r"notes is not empty and holds no model_card\.json, so it is not a previous export; refusing"):
        export_model(None, tmp_path / "notes")
    assert (tmp_path / "notes" / "thesis.docx").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match=r"file exists and is a file"):
        export_model(None, tmp_path / "file")
    (tmp_path / "empty").mkdir()
    export_model(None, tmp_path / "empty")  # an empty folder is fine
    assert (tmp_path / "empty" / "model.keras").read_text() == "new"


def test_verification_failure_message():
    with pytest.raises(ExportError, match=r"Export check failed: model\.pb gives scores \(1, 2\) that differ .* by 0\.1 \(tolerance 1e-05\)\. Nothing was written"):
        writer._check_close("model.pb", [[0.6, 0.4]], np.array([[0.5, 0.5]]))


# -- TFLite ---------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_export_tflite(exported, trained, images, tmp_path):
    if not hasattr(tf, "lite") or not hasattr(tf.lite, "Interpreter"):
        pytest.skip(f"TensorFlow {tf.__version__} has no tf.lite (Interpreter/TFLiteConverter)")
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    path = export_tflite(folder)
    assert path == folder / "model.tflite" and path.stat().st_size > 0
    card = json.loads((folder / "model_card.json").read_text(encoding="utf-8"))
    assert card["tflite"]["input"]["shape"] == [1, 64, 64, 3]
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(inp["shape"]) == [1, 64, 64, 3] and inp["dtype"] == np.float32
    for name in ("noise.jpg", "blocks.png"):
        pixels = decode_image(tf.constant(images[name]), SIZE)[None].numpy()
        interpreter.set_tensor(inp["index"], pixels)
        interpreter.invoke()
        np.testing.assert_allclose(interpreter.get_tensor(out["index"])[0], reference_scores(trained, images[name]), atol=1e-4)


# -- the model as trained (issue 12's export prerequisite) ------------------------------------------------
def perturbed_backbone() -> keras.Model:
    """A fresh copy of the stand-in backbone with one conv kernel changed, as fine-tuning would change it."""
    backbone = get_architecture(ARCH).build(None, SIZE)
    conv = next(layer for layer in backbone.layers[-1].layers if isinstance(layer, keras.layers.Conv2D))
    kernel, *rest = conv.get_weights()
    conv.set_weights([kernel + np.random.default_rng(0).normal(0, 0.5, kernel.shape).astype(np.float32), *rest])
    return backbone


def learner_model(trained) -> keras.Model:
    """Built as a learner's notebook cells would: bytes → DecodeImageBytes → backbone → a Sequential softmax head."""
    backbone = perturbed_backbone()
    head = keras.Sequential([keras.Input((1280,)), keras.layers.Dense(len(CLASSES), activation="softmax")])
    head.layers[-1].set_weights([trained.kernel, trained.bias])
    inputs = keras.Input(shape=(), dtype="string")
    outputs = head(backbone(DecodeImageBytes(SIZE)(inputs)))
    return keras.Model(inputs, outputs, name="fine_tuned")


def test_export_takes_the_model_as_trained(trained, images, tmp_path):
    model = learner_model(trained)
    folder = export_model(trained, tmp_path / "model", model=model)
    blobs = list(images.values())
    in_memory = np.asarray(model(tf.constant(blobs), training=False), np.float64)
    rebuilt = Classifier.from_trained(trained).predict_proba(blobs)  # backbone rebuilt from its weights spec
    assert np.abs(in_memory - rebuilt).max() > 0.05  # the changed kernel matters: the test can tell them apart

    np.testing.assert_allclose(Classifier.load(folder).predict_proba(blobs), in_memory, atol=TOL)
    served = tf.saved_model.load(str(folder / "saved_model")).signatures["serving_default"](image_bytes=tf.constant(blobs))
    np.testing.assert_allclose(served["scores"].numpy(), in_memory, atol=TOL)
    for tensor in (INPUT_TENSOR, PIXELS_TENSOR):
        graph = FrozenGraphScorer(folder / "model.pb", tensor, SCORES_TENSOR, None if tensor == INPUT_TENSOR else SIZE, CLASSES)
        np.testing.assert_allclose(graph.predict_proba(blobs), in_memory, atol=TOL, err_msg=tensor)
    card = json.loads((folder / "model_card.json").read_text(encoding="utf-8"))
    assert card["source"] == "the Keras model 'fine_tuned' as trained (its own weights), bytes in"
    assert stored_classes(folder / "model.keras") == CLASSES


def tiny_pixels_model() -> keras.Model:
    """RGB 0-255 (32, 32, 3) in: a 1x1 conv, pooling and a softmax over the four classes."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 1, activation="relu")(x))
    return keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation="softmax")(x), name="tiny")


def test_export_wraps_a_pixels_in_model(trained, images, tmp_path):
    model = tiny_pixels_model()
    folder = export_model(trained, tmp_path / "model", model=model)
    blobs = list(images.values())
    expected = np.asarray(model(np.stack([decode_image(tf.constant(b), (32, 32)).numpy() for b in blobs])), np.float64)
    assert expected.std(axis=0).max() > 1e-4  # the rows differ: a real comparison
    loaded = Classifier.load(folder)
    assert loaded.image_size == (32, 32) and loaded.model.input.dtype == "string"
    np.testing.assert_allclose(loaded.predict_proba(blobs), expected, atol=TOL)
    np.testing.assert_allclose(Classifier.from_model(model, CLASSES).predict_proba(blobs), expected, atol=TOL)
    graph = FrozenGraphScorer(folder / "model.pb", PIXELS_TENSOR, SCORES_TENSOR, (32, 32), CLASSES)
    np.testing.assert_allclose(graph.predict_proba(blobs), expected, atol=TOL)
    card = json.loads((folder / "model_card.json").read_text(encoding="utf-8"))
    assert card["image_size"] == [32, 32] and card["source"].endswith("pixels in")


def test_export_records_tta_and_evaluations_in_the_card(trained, tmp_path):
    """export_model(tta=True) makes TTA Classifier.load's default; the evaluations (e.g. of an ensemble) are kept."""
    record = {"scorer": "average of the 2, flip TTA", "tta": True, "ensemble": ["this run", "/w2/model"],
              "macro_accuracy": np.float64(0.9), "ms_per_photo": 41.5}
    folder = export_model(trained, tmp_path / "model", model=tiny_pixels_model(), verify=False, tta=True,
                          evaluations=[record])
    card = json.loads((folder / "model_card.json").read_text(encoding="utf-8"))
    assert card["tta"] is True and card["evaluations"] == [{**record, "macro_accuracy": 0.9}]
    assert Classifier.load(folder).tta and not Classifier.load(folder, tta=False).tta


def test_export_refuses_a_model_that_does_not_fit(trained, tmp_path):
    three = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")], name="three")
    with pytest.raises(ExportError, match=r"Model 'three' outputs 3 scores but the trained classifier has 4 classes \(bumper_dent, door_scratch, glass_shatter, unknown\)"):
        export_model(trained, tmp_path / "a", model=three)
    features_in = keras.Sequential([keras.Input((1280,)), keras.layers.Dense(4, activation="softmax")], name="head_only")
    with pytest.raises(ExportError, match=r"Model 'head_only' takes float32 \(None, 1280\); expected a Keras functional model taking encoded image bytes"):
        export_model(trained, tmp_path / "b", model=features_in)
    assert list(tmp_path.iterdir()) == []


# -- notebook 06 (issue 10, item 14) ----------------------------------------------------------------------------
def test_notebook_06_checks_bad_bytes_on_a_separate_panel():
    """After Run All the learner's panel must still show the photo and chart, not the bad-bytes message."""
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "06_consume_model.ipynb"
    code = ["".join(c["source"]) for c in json.loads(notebook.read_text(encoding="utf-8"))["cells"]
            if c["cell_type"] == "code"]
    shown = next(i for i, s in enumerate(code) if re.search(r"^panel = widgets\.upload_panel\(", s, re.M))
    assert any(re.search(r"^panel$", s, re.M) for s in code[shown:shown + 1]), "the panel is displayed"
    checks = [s for s in code[shown:] if "this is not a photo" in s]
    assert checks, "notebook 06 no longer checks that bytes which are not a photo are refused"
    for source in checks:
        assert not re.search(r"\bpanel\.classify\(", source), "the bad bytes go through the learner's own panel"
        other = re.search(r"^(\w+) = widgets\.upload_panel\(", source, re.M)
        assert other and re.search(rf"\b{other.group(1)}\.classify\(b\"this is not a photo\"", source)


# -- EXIF orientation, images that lie, mixed precision -------------------------------------------------------
def position_model(size=(32, 32), classes=len(CLASSES)) -> keras.Model:
    """Pixels in, probabilities out, and very sensitive to where things are (4x4 average colours → Dense): a photo
    on its side scores quite differently from the upright one."""
    inputs = keras.Input((*size, 3), name="rgb_0_255")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Flatten()(keras.layers.AveragePooling2D(size[0] // 4)(x))
    dense = keras.layers.Dense(classes, activation="softmax", dtype="float32",
                               kernel_initializer=keras.initializers.RandomNormal(0, 0.3, seed=0))
    return keras.Model(inputs, dense(x), name="position")


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_photo_stored_on_its_side_scores_like_its_upright_copy(orientation, tmp_path):
    classifier = Classifier.from_model(position_model(), CLASSES)
    photo = image_cases.asymmetric_photo()
    upright, turned = image_cases.jpeg(photo), image_cases.jpeg(photo, orientation)
    expected = classifier.predict_proba([upright])[0]
    np.testing.assert_allclose(classifier.predict_proba([turned])[0], expected, atol=0.01)  # JPEG noise only
    as_stored = classifier.model(tf.constant([turned])).numpy()[0]  # the bytes model itself reads no EXIF
    assert np.abs(as_stored - expected).max() > 0.1, "the control: on its side the photo scores differently"
    path = tmp_path / "phone.jpg"
    path.write_bytes(turned)
    np.testing.assert_allclose(list(classifier.predict_file(path).scores.values()), expected, atol=0.01)
    mixed = classifier.predict_proba([turned, upright, turned])  # a batch: each photo with its own orientation
    np.testing.assert_allclose(mixed, [expected] * 3, atol=0.01)


def test_an_exported_model_turns_phone_photos_upright_when_loaded(classifier):
    """predict and serve load the folder with Classifier.load: the same rule as in memory."""
    photo = image_cases.asymmetric_photo(64, 64)
    expected = classifier.predict_proba([image_cases.jpeg(photo)])[0]
    turned = image_cases.jpeg(photo, 6)
    # a random backbone and a head fitted to four images amplify JPEG noise more than the tiny model above
    np.testing.assert_allclose(classifier.predict_proba([turned])[0], expected, atol=0.03)
    assert np.abs(classifier.model(tf.constant([turned])).numpy()[0] - expected).max() > 0.1  # on its side


def test_a_jpeg_that_lies_about_its_size_is_refused_not_scored(classifier, tmp_path):
    lie = image_cases.lying_jpeg()
    assert np.isfinite(classifier.model(tf.constant([lie])).numpy()).all()  # the graph alone scores the grey filler
    message = (rf"^image '.*lie\.jpg': the bytes are not a decodable {FORMATS} image \(truncated or corrupt: the "
               r"header declares 1000x30000 pixels, whose 705,000 blocks take at least 88,125 bytes of compressed data")
    with pytest.raises(InvalidImageError, match=message):
        classifier.predict_bytes(lie, name="lie.jpg")
    (tmp_path / "lie.jpg").write_bytes(lie)
    with pytest.raises(InvalidImageError, match=message):
        classifier.predict_file(tmp_path / "lie.jpg")
    frame = pd.DataFrame({"image_path": [str(tmp_path / "lie.jpg")]})
    with pytest.warns(UnscoredImagesWarning, match="1 of 1 images could not be scored"):
        out = classifier.predict_frame(frame)
    assert out.loc[0, "predicted"] is None and re.search(message[1:], out.loc[0, "error"])


def mixed_position_model() -> keras.Model:
    """position_model() built under the mixed_float16 policy (restored afterwards)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return position_model()
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_a_mixed_precision_model_is_exported_and_served_in_float32(trained, tmp_path):
    mixed = mixed_position_model()
    assert uses_mixed_precision(mixed) and mixed.output.dtype == "float32"
    copy = float32_model(mixed)
    assert not uses_mixed_precision(copy) and copy is not mixed
    assert all(np.array_equal(a, b) for a, b in zip(copy.get_weights(), mixed.get_weights()))
    assert float32_model(copy) is copy  # nothing to do for a float32 model

    out = export_model(trained, tmp_path / "model", model=mixed)
    card = json.loads((out / "model_card.json").read_text(encoding="utf-8"))
    assert card["precision"] == "float32" and card["source"].endswith("exported as its float32 copy")
    loaded = Classifier.load(out)
    assert not uses_mixed_precision(loaded.model) and loaded.model.output.dtype == "float32"
    blobs = list(varied_images().values())
    pixels = np.stack([decode_image(tf.constant(b), (32, 32)).numpy() for b in blobs])
    np.testing.assert_allclose(loaded.predict_proba(blobs), copy(pixels).numpy(), atol=TOL)  # float32 everywhere
    np.testing.assert_allclose(loaded.predict_proba(blobs), mixed(pixels).numpy(), atol=2e-2)  # float16 rounding
    served = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"](image_bytes=tf.constant(blobs))
    assert served["scores"].dtype == tf.float32


def test_a_classifier_scores_a_mixed_precision_model_in_float32():
    """An in-memory model still in mixed precision (or an export made before exports were float32) is scored as
    its float32 copy."""
    mixed = mixed_position_model()
    classifier = Classifier.from_model(mixed, CLASSES)
    assert not uses_mixed_precision(classifier.model)
    blob = image_cases.jpeg(image_cases.asymmetric_photo())
    pixels = decode_image(tf.constant(blob), (32, 32))[None]
    np.testing.assert_allclose(classifier.predict_proba([blob]), float32_model(mixed)(pixels), atol=TOL)
