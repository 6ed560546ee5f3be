"""Flip test-time augmentation, ensembles of exports and plain Keras model folders (issue 19 items 4, 5, 8; issue 20).

Tiny pixels-in models that are sensitive to where things are (a left/right mirror scores differently), saved the
way a learner's notebook saves them (``model.save`` + ``labels.txt``, no card): seconds, no backbone.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import image_cases
from workshop_utils.apps import cli
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.scoring import Classifier, Ensemble, load_scorer
from workshop_utils.core.errors import LabelsFileError

tf = import_tensorflow()
import keras  # noqa: E402

CLASSES = ["dent", "scratch", "shatter"]
TTA_TOL = 1e-6


def position_model(seed: int, size: tuple[int, int] = (32, 32)) -> keras.Model:
    """RGB 0-255 in, probabilities out, through 4x4 average colours and a Dense: left and right weigh differently."""
    inputs = keras.Input((*size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Flatten()(keras.layers.AveragePooling2D(size[0] // 4)(x))
    dense = keras.layers.Dense(len(CLASSES), activation="softmax",
                               kernel_initializer=keras.initializers.RandomNormal(0, 0.5, seed=seed))
    return keras.Model(inputs, dense(x), name=f"position{seed}")


def plain_folder(folder: Path, model: keras.Model, labels: list[str] = CLASSES) -> Path:
    """What notebooks/your_own_photos.py writes without export_model: model.keras and labels.txt, nothing else."""
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    (folder / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    return folder


def png(photo: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")  # lossless: the mirror holds exactly the mirrored pixels
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("plain")
    return plain_folder(root / "a", position_model(0)), plain_folder(root / "b", position_model(1, (40, 40)))


# -- test-time augmentation --------------------------------------------------------------------------------------
def test_tta_averages_a_photo_with_its_mirror():
    classifier = Classifier.from_model(position_model(0), CLASSES)
    photos = [image_cases.asymmetric_photo(48, 64, seed) for seed in (0, 1)]
    plain = classifier.predict_proba([png(p) for p in photos])
    mirrored = classifier.predict_proba([png(p[:, ::-1]) for p in photos])
    assert np.abs(plain - mirrored).max() > 0.05, "the control: the mirror scores differently"
    tta = classifier.predict_proba([png(p) for p in photos], tta=True)
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=TTA_TOL, rtol=0)
    always = Classifier.from_model(position_model(0), CLASSES, tta=True)  # on by default, off per call
    np.testing.assert_allclose(always.predict_proba([png(photos[0])]), tta[:1], atol=TTA_TOL, rtol=0)
    np.testing.assert_allclose(always.predict_proba([png(photos[0])], tta=False), plain[:1], atol=TTA_TOL, rtol=0)
    prediction = always.predict_bytes(png(photos[1]))
    np.testing.assert_allclose(list(prediction.scores.values()), tta[1], atol=TTA_TOL, rtol=0)
    assert "flip TTA" in repr(always) and "flip TTA" not in repr(classifier)


def test_a_mirror_symmetric_photo_scores_the_same_with_and_without_tta():
    classifier = Classifier.from_model(position_model(0), CLASSES)
    half = image_cases.asymmetric_photo(48, 32)
    symmetric = png(np.concatenate([half, half[:, ::-1]], axis=1))
    asymmetric = png(np.concatenate([half, half], axis=1))
    np.testing.assert_allclose(classifier.predict_proba([symmetric], tta=True), classifier.predict_proba([symmetric]),
                               atol=TTA_TOL, rtol=0)
    changed = classifier.predict_proba([asymmetric], tta=True) - classifier.predict_proba([asymmetric])
    assert np.abs(changed).max() > 1e-3  # the control: an asymmetric photo does change


def test_tta_mirrors_the_photo_once_it_is_upright():
    """A phone photo on its side is turned upright first, then mirrored: it scores like its upright copy."""
    classifier = Classifier.from_model(position_model(0), CLASSES, tta=True)
    photo = image_cases.asymmetric_photo()
    expected = classifier.predict_proba([image_cases.jpeg(photo)])
    np.testing.assert_allclose(classifier.predict_proba([image_cases.jpeg(photo, 6)]), expected, atol=0.01)


# -- plain Keras folders (issue 20) ------------------------------------------------------------------------------
def test_a_plain_keras_folder_loads_and_trusts_labels_txt(folders, recwarn):
    folder = folders[0]
    loaded = Classifier.load(folder)
    assert loaded.labels == CLASSES and loaded.card is None and not loaded.tta and loaded.image_size == (32, 32)
    assert not [w for w in recwarn if "labels.txt" in str(w.message)]  # nothing to warn about: the names are trusted
    blob = png(image_cases.asymmetric_photo())
    np.testing.assert_allclose(loaded.predict_proba([blob]),
                               Classifier.from_model(position_model(0), CLASSES).predict_proba([blob]), atol=1e-6)


def test_the_card_says_whether_tta_is_on_by_default(folders, tmp_path):
    folder = plain_folder(tmp_path / "m", position_model(0))
    (folder / "model_card.json").write_text(json.dumps({"arch": "position", "tta": True}), encoding="utf-8")
    assert Classifier.load(folder).tta and not Classifier.load(folder, tta=False).tta
    assert Classifier.load(folder).name == "position"  # a card without classes: labels.txt is trusted


# -- ensembles ---------------------------------------------------------------------------------------------------
def test_an_ensemble_averages_its_members(folders):
    a, b = Classifier.load(folders[0]), Classifier.load(folders[1])
    ensemble = load_scorer(folders[0], [folders[1]])
    assert isinstance(ensemble, Ensemble) and ensemble.labels == CLASSES and ensemble.image_size == (32, 32)
    blobs = [png(image_cases.asymmetric_photo(48, 64, seed)) for seed in (0, 1, 2)]
    pa, pb = a.predict_proba(blobs), b.predict_proba(blobs)
    assert np.abs(pa - pb).max() > 0.05, "the control: the members disagree"
    np.testing.assert_allclose(ensemble.predict_proba(blobs), (pa + pb) / 2, atol=1e-6)
    np.testing.assert_allclose(ensemble.predict_proba(blobs, tta=True),
                               (a.predict_proba(blobs, tta=True) + b.predict_proba(blobs, tta=True)) / 2, atol=1e-6)
    frame = ensemble.predict_frame(pd.DataFrame({"image_path": []}))
    assert list(frame.columns) == ["image_path", "predicted", "probability", *(f"score_{c}" for c in CLASSES), "error"]
    assert ensemble.describe() == [{"folder": "a", "arch": "position0", "tta": False},
                                   {"folder": "b", "arch": "position1", "tta": False}]
    assert load_scorer(folders[0], [folders[1]], tta=True).tta and not ensemble.tta


def test_an_ensemble_refuses_members_with_other_classes(folders, tmp_path):
    other = plain_folder(tmp_path / "reordered", position_model(2), [CLASSES[1], CLASSES[0], CLASSES[2]])
    message = (rf"^Cannot average {re.escape(str(folders[0]))} \(classes \['dent', 'scratch', 'shatter'\]\) with "
               rf"{re.escape(str(other))} \(classes \['scratch', 'dent', 'shatter'\]\): an ensemble needs the same "
               r"class names in the same order\.$")
    with pytest.raises(LabelsFileError, match=message):
        Ensemble.load([folders[0], other])
    with pytest.raises(ValueError, match=r"An ensemble needs at least two classifiers, got 1\."):
        Ensemble([Classifier.load(folders[0])])


# -- the command line --------------------------------------------------------------------------------------------
def test_predict_with_tta_and_an_ensemble(folders, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    photo.write_bytes(png(image_cases.asymmetric_photo()))
    assert cli.main(["predict", str(folders[0]), str(photo), "--json", "--tta", "--ensemble", str(folders[1])]) == 0
    record = json.loads(capsys.readouterr().out)
    expected = load_scorer(folders[0], [folders[1]], tta=True).predict_proba([photo.read_bytes()])[0]
    np.testing.assert_allclose(list(record["scores"].values()), expected, atol=1e-6)
    assert cli.main(["predict", str(folders[0]), str(photo), "--json", "--no-tta"]) == 0
    record = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(list(record["scores"].values()),
                               Classifier.load(folders[0]).predict_proba([photo.read_bytes()])[0], atol=1e-6)


def test_predict_refuses_a_bad_ensemble_in_one_line(folders, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    photo.write_bytes(png(image_cases.asymmetric_photo()))
    assert cli.main(["predict", str(folders[0]), str(photo), "--ensemble", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {tmp_path / 'nope'} is missing, not a model folder: pass a folder `run` exported "
                   "(workspace/model) or one with model.keras and labels.txt.\n")
    other = plain_folder(tmp_path / "four", keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")]),
        ["a", "b", "c"])
    assert cli.main(["predict", str(folders[0]), str(photo), "--ensemble", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Cannot average {folders[0]} (classes ['dent', 'scratch', 'shatter']) with {other} "
                          "(classes ['a', 'b', 'c'])") and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["--fine-tune", "--tta"], "--tta and --ensemble score the head-only model and do not combine with --fine-tune"),
    (["--ensemble", "NOPE"], "NOPE is missing, not a model folder"),
])
def test_run_checks_its_scoring_flags_first(argv, message, tmp_path, capsys):
    argv = [a.replace("NOPE", str(tmp_path / "nope")) for a in argv]
    assert cli.main(["run", "--dataset", "sample", "--workspace", str(tmp_path / "ws"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.replace("NOPE", str(tmp_path / "nope")) in err
    assert not (tmp_path / "ws" / "bottlenecks").exists()  # refused before any work


def test_serve_passes_tta_and_ensemble_on(folders, monkeypatch):
    from workshop_utils.apps.serve import server as serve

    calls = []
    monkeypatch.setattr(serve, "serve", lambda model_dir, **kwargs: calls.append((model_dir, kwargs)) or 0)
    assert cli.main(["serve", str(folders[0]), "--tta", "--ensemble", str(folders[1])]) == 0
    assert calls[0][0] == folders[0] and calls[0][1]["tta"] is True and calls[0][1]["ensemble"] == [folders[1]]
    assert cli.main(["serve", str(folders[0])]) == 0
    assert calls[1][1]["tta"] is None and calls[1][1]["ensemble"] == []


def test_an_ensemble_takes_tta_from_the_first_folder_s_card(folders, tmp_path):
    first = plain_folder(tmp_path / "first", position_model(0))
    (first / "model_card.json").write_text(json.dumps({"tta": True}), encoding="utf-8")
    assert [m.tta for m in Ensemble.load([first, folders[1]]).members] == [True, True]
    assert [m.tta for m in Ensemble.load([folders[1], first]).members] == [False, False]
    assert [m.tta for m in Ensemble.load([folders[1], first], tta=True).members] == [True, True]
