"""The data-quality check: duplicate rows and files, images under two classes, leakage between sets, near-duplicates."""
from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workshop_utils import course
from workshop_utils import data
from workshop_utils import quality
from workshop_utils.config import sample_dir
from workshop_utils.core.errors import DataQualityWarning

SAMPLE = sample_dir()


def planted(tmp_path: Path) -> Path:
    """The sample's first 60 rows as a new index, with planted problems:
    - a duplicate row (the same line twice) and a duplicate file (a copy under another name, same class, same set);
    - one image listed under two classes (a copy labelled otherwise);
    - ten validation images also listed as training (copies under new names, subset T);
    - a near-duplicate: one training image resized and re-encoded, as validation.
    """
    index = pd.read_csv(SAMPLE / "index.csv").head(80)
    folder = tmp_path / "planted"
    (folder / "image").mkdir(parents=True)
    for name in index["image"]:
        shutil.copy(SAMPLE / name, folder / name)
    rows = index.values.tolist()
    rows.append(rows[0])  # duplicate row
    t_rows = [r for r in index.values.tolist() if r[2] == "T"]
    v_rows = [r for r in index.values.tolist() if r[2] == "V"]
    shutil.copy(folder / t_rows[1][0], folder / "image/copy_same.jpeg")
    rows.append(["image/copy_same.jpeg", t_rows[1][1], "T"])  # duplicate file
    other = next(label for label in index["class"].unique() if label != t_rows[2][1])
    shutil.copy(folder / t_rows[2][0], folder / "image/copy_other_class.jpeg")
    rows.append(["image/copy_other_class.jpeg", other, "T"])  # two classes
    for k, (name, label, _) in enumerate(v_rows[:10]):
        shutil.copy(folder / name, folder / f"image/leak_{k}.jpeg")
        rows.append([f"image/leak_{k}.jpeg", label, "T"])  # validation image also in train
    with Image.open(folder / t_rows[3][0]) as image:
        image.resize((320, 240)).save(folder / "image/near.jpeg", quality=70)
    rows.append(["image/near.jpeg", t_rows[3][1], "V"])
    pd.DataFrame(rows, columns=["image", "class", "subset"]).to_csv(folder / "index.csv", index=False)
    return folder


@pytest.fixture
def planted_folder(tmp_path: Path) -> Path:
    return planted(tmp_path)


def test_loading_warns_about_each_exact_finding_with_its_count(planted_folder: Path):
    with pytest.warns(DataQualityWarning) as caught:
        data.load_dataset(planted_folder)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataQualityWarning)]
    assert len(messages) == 3, messages  # one line per kind: duplicates, leakage, two classes
    text = "\n".join(messages)
    assert "2 image(s) stored more than once in the same set" in text
    assert "10 image(s) appear in more than one set" in text and "leak_0.jpeg" in text
    assert "1 image(s) are listed under two or more classes" in text and "copy_other_class.jpeg" in text
    assert "2 row(s) left out of training" in text  # both training rows of the two-class image


def test_check_dataset_drops_copies_keeps_evaluation_sets_and_lists_every_group(planted_folder: Path, tmp_path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataQualityWarning)
        frame = data.load_dataset(planted_folder)
    with pytest.warns(DataQualityWarning, match=r"1 pair\(s\) of near-duplicate images.*near\.jpeg"):
        check = quality.check_dataset(frame, workspace=tmp_path / "ws")
    assert check.counts == {"duplicate": 2, "conflict": 1, "leak": 10, "near": 1}
    kept = check.frame
    assert len(kept) == len(frame) - 1 - 1 - 2 - 10  # the duplicate row, the copy, both two-class rows, 10 leaks
    names = {Path(p).name for p in kept["image_path"]}
    assert not any(n.startswith("leak_") for n in names) and "copy_same.jpeg" not in names
    assert "copy_other_class.jpeg" not in names  # the two-class image is out of training...
    validation_before = frame[frame["subset"] == "validation"]
    validation_after = kept[kept["subset"] == "validation"]
    assert list(validation_after["image_path"]) == list(validation_before["image_path"])  # ...evaluation intact
    assert "near.jpeg" in names  # near-duplicates are only reported
    assert not kept.duplicated(["image_path", "label", "subset"]).any()
    listed = pd.read_csv(tmp_path / "ws" / "duplicates.csv")
    assert check.csv_path == tmp_path / "ws" / "duplicates.csv"
    assert listed.groupby("kind")["group"].nunique().to_dict() == {"conflict": 1, "duplicate": 2, "leak": 10,
                                                                     "near": 1}
    assert set(listed.columns) == set(quality.FINDING_COLUMNS)
    assert (~listed["kept"]).sum() == 14
    summary = check.summary()
    assert "10 copies dropped from the lower set" in summary and "duplicates.csv" in summary


def test_the_mlnet_protocol_only_reports(planted_folder: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataQualityWarning)
        frame = data.load_dataset(planted_folder)
        check = quality.check_dataset(frame, drop=False)
    assert check.frame is frame and check.left_out == 0
    assert "nothing dropped (mlnet protocol)" in check.summary()


def test_plan_run_trains_without_copies_and_tests_on_the_intact_validation_set(planted_folder: Path, tmp_path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataQualityWarning)
        plan = course.plan_run("quick", str(planted_folder), workspace=tmp_path)
        train_names = {Path(p).name for p in plan.train["image_path"]} | {
            Path(p).name for p in plan.validation["image_path"]}
        assert not any(n.startswith("leak_") or n.startswith("copy_") for n in train_names)
        digests = {quality.file_digest(p) for p in plan.test["image_path"]}
        assert not digests & {quality.file_digest(p) for p in plan.train["image_path"]}
        assert (tmp_path / "duplicates.csv").is_file()
        mlnet = course.plan_run("quick", str(planted_folder), workspace=tmp_path, protocol="mlnet")
    assert len(mlnet.train) + len(mlnet.validation) == len(mlnet.frame)  # nothing dropped


def test_folder_copies_under_two_classes_are_left_out(tmp_path: Path):
    names = sorted(pd.read_csv(SAMPLE / "index.csv")["image"])[:6]
    for k, name in enumerate(names):
        (tmp_path / ("a" if k % 2 else "b")).mkdir(exist_ok=True)
        shutil.copy(SAMPLE / name, tmp_path / ("a" if k % 2 else "b") / Path(name).name)
    shutil.copy(SAMPLE / names[0], tmp_path / "a" / "again.jpeg")  # names[0] is in b/
    with pytest.warns(DataQualityWarning, match=r"1 image\(s\) are listed under two or more classes"):
        frame = data.load_images_from_directory(tmp_path)
    check = quality.check_dataset(frame, near=False)
    assert len(check.frame) == 5 and check.counts == {"conflict": 1}  # unsplit: both copies out, 5 remain


def test_the_sample_is_clean_and_near_duplicates_are_found_by_look(tmp_path: Path):
    frame = data.load_dataset(SAMPLE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataQualityWarning)  # the bundled sample has no copies, near or exact
        check = quality.check_dataset(frame)
    assert check.findings.empty and "no duplicate images" in check.summary()
    original = Path(frame["image_path"][0])
    copies = []
    with Image.open(original) as image:
        for k, (size, quality_) in enumerate([((320, 240), 60), ((80, 60), 90), ((160, 120), 40)]):
            buffer = io.BytesIO()
            image.resize(size).save(buffer, format="JPEG", quality=quality_)
            copies.append(tmp_path / f"copy{k}.jpeg")
            copies[-1].write_bytes(buffer.getvalue())
    signatures = np.stack([quality.thumbnail_signature(p) for p in [original, *copies]])
    pairs = quality.near_pairs(signatures)
    assert {(0, k) for k in (1, 2, 3)} <= {(i, j) for i, j, _ in pairs}


def test_check_dataset_needs_the_columns(tmp_path: Path):
    with pytest.raises(ValueError, match=r"lacks column\(s\) label; load it with data.load_dataset"):
        quality.check_dataset(pd.DataFrame({"image_path": []}))
