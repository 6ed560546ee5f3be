"""Tests for workshop_utils.data: index loading, folder loading, checks, split, LabelMap, image validation."""
from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workshop_utils import data
from workshop_utils.core.errors import (
    DatasetError,
    DatasetNotFoundError,
    LabelsFileError,
    LeftOutFilesWarning,
    MissingImagesError,
    StratifyFallbackWarning,
    UnseenClassWarning,
)
from workshop_utils.core.labels import LabelMap


def make_image(path: Path, color=None, size=(8, 8), fmt: str | None = None) -> Path:
    """A small solid image; its colour comes from its path unless given, so that no two files are copies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if color is None:
        color = tuple(zlib.crc32(str(path).encode()).to_bytes(4, "big")[:3])
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def write_index(folder: Path, rows: list[tuple[str, str, str]], header: str = "image,class,subset",
                make_images: bool = True) -> Path:
    """index.csv with the given rows (image, class, subset); image files created unless told not to."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [header] + [",".join(r) for r in rows]
    (folder / "index.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if make_images:
        for image, *_ in rows:
            if image and not (folder / image.replace("\\", "/")).exists():
                make_image(folder / image.replace("\\", "/"), fmt="JPEG")
    return folder / "index.csv"


@pytest.fixture
def car_index(tmp_path: Path) -> Path:
    rows = [(f"image/{i}.jpeg", "door_dent" if i % 2 else "head_lamp", "T" if i < 6 else "V") for i in range(8)]
    return write_index(tmp_path / "preprocessed", rows)


# ---------------------------------------------------------------- load_index


def test_load_index_reads_the_car_damage_format(car_index: Path):
    df = data.load_index(car_index)
    assert list(df.columns) == ["image_path", "label", "subset"]
    assert len(df) == 8
    assert df["image_path"].tolist() == [str(car_index.parent / "image" / f"{i}.jpeg") for i in range(8)]
    assert all(os.path.isabs(p) for p in df["image_path"])
    assert df["subset"].tolist() == ["train"] * 6 + ["validation"] * 2
    assert set(df["label"]) == {"door_dent", "head_lamp"}
    assert df.index.tolist() == list(range(8))


def test_load_index_accepts_subset_spellings_label_alias_and_backslashes(tmp_path: Path):
    rows = [("image\\a.jpeg", "x", "t"), ("image/b.jpeg", "x", "TRAIN"), ("image/c.jpeg", "x", "Val"),
            ("image/d.jpeg", "x", "validation"), ("image/e.jpeg", "x", "Test"), ("image/f.jpeg", "x", "v")]
    csv = write_index(tmp_path, rows, header=" Image , Label ,SUBSET")
    df = data.load_index(csv)
    assert df["subset"].tolist() == ["train", "train", "validation", "validation", "test", "validation"]
    assert df["image_path"][0] == str(tmp_path / "image" / "a.jpeg")


def test_load_index_with_image_dir_keeps_only_the_file_name(tmp_path: Path):
    csv = write_index(tmp_path / "meta", [("somewhere/else/1.jpeg", "a", "T")], make_images=False)
    make_image(tmp_path / "pictures" / "1.jpeg")
    df = data.load_index(csv, image_dir=tmp_path / "pictures")
    assert df["image_path"][0] == str(tmp_path / "pictures" / "1.jpeg")


def test_load_index_reads_utf8_bom_and_skips_blank_lines(tmp_path: Path):
    make_image(tmp_path / "image" / "1.jpeg")
    (tmp_path / "index.csv").write_text("\ufeffimage,class,subset\n\nimage/1.jpeg,a,T\n\n", encoding="utf-8")
    df = data.load_index(tmp_path / "index.csv")
    assert df["label"].tolist() == ["a"]


def test_missing_index_file(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match=r"index\.csv does not exist.*Check the path"):
        data.load_index(tmp_path / "index.csv")


def test_missing_columns_names_expected_and_found(tmp_path: Path):
    csv = write_index(tmp_path, [("image/1.jpeg", "a")], header="image,class")  # type: ignore[list-item]
    with pytest.raises(DatasetError, match=r"index\.csv: missing column\(s\) subset; expected image, "
                       r"class, subset, found image, class\. Make the first line"):
        data.load_index(csv)


def test_missing_images_lists_first_ten_line_numbers_and_count(tmp_path: Path):
    rows = [(f"image/{i}.jpeg", "a", "T") for i in range(14)]
    csv = write_index(tmp_path, rows, make_images=False)
    make_image(tmp_path / "image" / "0.jpeg")  # line 2 is fine; lines 3..15 are missing
    with pytest.raises(MissingImagesError) as info:
        data.load_index(csv)
    message = str(info.value)
    assert str(csv) in message
    assert "image files not found" in message and "image/1.jpeg" in message
    assert "lines 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, … and 3 more (13 in all)" in message
    assert "next to index.csv" in message


def test_unknown_subset_values_are_named_with_their_lines(tmp_path: Path):
    csv = write_index(tmp_path, [("image/1.jpeg", "a", "T"), ("image/2.jpeg", "a", "X"), ("image/3.jpeg", "a", "")])
    with pytest.raises(DatasetError, match=r"unknown subset value\(s\) '', 'X' on lines 3, 4 \(2 in all\)\. "
                       r"Use T \(train\) or V \(validation\)"):
        data.load_index(csv)


def test_empty_label_is_reported_with_its_line(tmp_path: Path):
    csv = write_index(tmp_path, [("image/1.jpeg", "a", "T"), ("image/2.jpeg", " ", "T")])
    with pytest.raises(DatasetError, match=r"index\.csv: empty 'class' value on lines 3 \(1 in all\)"):
        data.load_index(csv)


def test_empty_image_path_is_reported_with_its_line(tmp_path: Path):
    csv = write_index(tmp_path, [("", "a", "T")])
    with pytest.raises(DatasetError, match=r"empty 'image' value on lines 2 \(1 in all\)"):
        data.load_index(csv)


def test_line_numbers_count_blank_lines(tmp_path: Path):
    make_image(tmp_path / "image" / "1.jpeg")
    (tmp_path / "index.csv").write_text("image,class,subset\nimage/1.jpeg,a,T\n\nimage/1.jpeg,a,Q\n")
    with pytest.raises(DatasetError, match=r"on lines 4 \(1 in all\)"):
        data.load_index(tmp_path / "index.csv")


def test_index_with_header_only_is_empty(tmp_path: Path):
    csv = write_index(tmp_path, [])
    with pytest.raises(DatasetError, match=r"index\.csv: the index has a header but no data rows"):
        data.load_index(csv)


def test_empty_file_is_empty_dataset(tmp_path: Path):
    (tmp_path / "index.csv").write_text("")
    with pytest.raises(DatasetError, match=r"index\.csv: the file is empty; expected the header"):
        data.load_index(tmp_path / "index.csv")


def test_unparseable_csv(tmp_path: Path):
    (tmp_path / "index.csv").write_text("image,class,subset\na,b,T\na,b,T,extra,fields\n")
    with pytest.raises(DatasetError, match=r"index\.csv: not a readable CSV file"):
        data.load_index(tmp_path / "index.csv")


def test_class_in_validation_but_not_in_train_warns_with_name(tmp_path: Path):
    csv = write_index(tmp_path, [("image/1.jpeg", "a", "T"), ("image/2.jpeg", "glass_shatter", "V")])
    with pytest.warns(UnseenClassWarning, match=r"class 'glass_shatter' is in validation \(lines 3 \(1 in all\)\) "
                      r"but never in train"):
        df = data.load_index(csv)
    # by_subset does not repeat the warning load_index already gave
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, validation = data.by_subset(df)
    assert validation["label"].tolist() == ["glass_shatter"]


# ---------------------------------------------------------------- folders and load_dataset


def test_load_images_from_directory_is_recursive_and_case_insensitive(tmp_path: Path):
    make_image(tmp_path / "CD" / "7001-1.JPG", fmt="JPEG")
    make_image(tmp_path / "CD" / "deeper" / "x.Png", fmt="PNG")
    make_image(tmp_path / "UD" / "a.jpeg", fmt="JPEG")
    (tmp_path / "UD" / "notes.txt").write_text("not an image")
    make_image(tmp_path / ".hidden" / "h.jpg", fmt="JPEG")
    with pytest.warns(LeftOutFilesWarning, match=r"left out 1 file — UD/notes\.txt: not a JPEG/PNG/GIF/BMP/WebP "):
        df = data.load_images_from_directory(tmp_path)
    assert list(df.columns) == ["image_path", "label", "subset"]
    assert df["label"].tolist() == ["CD", "deeper", "UD"]
    assert (df["subset"] == "").all()
    assert df["image_path"][0] == str(tmp_path / "CD" / "7001-1.JPG")


def test_labels_from_file_name_prefix(tmp_path: Path):
    make_image(tmp_path / "all" / "UD7001-220.jpg", fmt="JPEG")
    make_image(tmp_path / "all" / "CD7002-1.jpg", fmt="JPEG")
    df = data.load_images_from_directory(tmp_path, use_folder_name_as_label=False)
    assert sorted(df["label"]) == ["CD", "UD"]


def test_file_names_without_leading_letters_have_no_label(tmp_path: Path):
    make_image(tmp_path / "all" / "7001-220.jpg", fmt="JPEG")
    with pytest.raises(DatasetError, match=r"files 7001-220\.jpg \(1 in all\) do not start with letters"):
        data.load_images_from_directory(tmp_path, use_folder_name_as_label=False)


def test_folder_without_images(tmp_path: Path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"no images found \(\.jpg, \.jpeg, \.jpe, \.jfif, \.png, \.gif, "
                       r"\.bmp, \.webp in any case, searched recursively; left out 1 other file\(s\): "
                       r"cls/readme\.txt\)\. Point at the folder"):
        data.load_images_from_directory(tmp_path)


def test_missing_folder(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match=r"nope does not exist"):
        data.load_images_from_directory(tmp_path / "nope")


def test_every_format_of_the_table_is_taken_from_folders(tmp_path: Path):
    """GIF/BMP/WebP are read by training and the scorers, so class folders must not silently drop them."""
    for fmt, name in [("JPEG", "a.jpg"), ("PNG", "b.PNG"), ("GIF", "c.gif"), ("BMP", "d.bmp"), ("WEBP", "e.webp")]:
        make_image(tmp_path / "cls" / name, fmt=fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left out, nothing to report
        df = data.load_images_from_directory(tmp_path)
    assert [Path(p).name for p in df["image_path"]] == ["a.jpg", "b.PNG", "c.gif", "d.bmp", "e.webp"]
    assert df.attrs["left_out"] == []


def test_left_out_files_are_counted_and_named(tmp_path: Path):
    make_image(tmp_path / "cls" / "a.jpg", fmt="JPEG")
    for name in ["notes.txt", "scan.tif", "clip.mp4", "z.heic"]:
        (tmp_path / "cls" / name).write_bytes(b"x")
    (tmp_path / "cls" / ".DS_Store").write_bytes(b"x")  # hidden: not data, not reported
    with pytest.warns(LeftOutFilesWarning) as caught:
        df = data.load_images_from_directory(tmp_path)
    message = str(caught[0].message)
    assert message == (f"{tmp_path}: left out 4 files — cls/clip.mp4, cls/notes.txt, cls/scan.tif, … (4 in all): "
                       "not a JPEG/PNG/GIF/BMP/WebP image (by its extension). All of them, with reasons, are in the "
                       "table's attrs['left_out'].")
    assert len(df) == 1 and [Path(p).name for p, _ in df.attrs["left_out"]] == ["clip.mp4", "notes.txt", "scan.tif",
                                                                                "z.heic"]


def test_webp_is_decided_by_what_tf_decodes(tmp_path: Path, monkeypatch):
    """WebP is taken when the installed TensorFlow decodes it (asked at run time), else left out and reported."""
    from workshop_utils.core import (  # loads TensorFlow: only this test needs it
        images,
        runtime,
    )

    make_image(tmp_path / "cls" / "a.jpg", fmt="JPEG")
    make_image(tmp_path / "cls" / "b.webp", fmt="WEBP")
    runtime.tf_decodes.cache_clear()
    assert runtime.tf_decodes("WEBP") == _tf_reads_webp(images)
    monkeypatch.setattr(runtime, "tf_decodes", lambda fmt: False)
    with pytest.warns(LeftOutFilesWarning, match=r"left out 1 file — cls/b\.webp: the installed TensorFlow .* cannot "
                      r"decode WebP images; convert it to JPEG or PNG, or upgrade TensorFlow\."):
        df = data.load_images_from_directory(tmp_path)
    assert [Path(p).name for p in df["image_path"]] == ["a.jpg"]
    problems = data.validate_images([tmp_path / "cls" / "b.webp"])
    assert problems["reason"].tolist() == [
        f"the bytes are a WebP image, but the installed TensorFlow {images.tf.__version__} cannot decode WebP images; "
        "convert it to JPEG or PNG, or upgrade TensorFlow."]


def _tf_reads_webp(images) -> bool:
    """Independent check: decode a WebP written by Pillow with the installed TensorFlow."""
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buffer, format="WEBP")
    try:
        images.tf.io.decode_image(buffer.getvalue(), channels=3)
        return True
    except images.tf.errors.OpError:
        return False


def test_load_dataset_passes_image_dir(tmp_path: Path):
    photos = tmp_path / "photos"
    for i in range(3):
        make_image(photos / f"{i}.jpeg", fmt="JPEG")
    rows = [("image/0.jpeg", "a", "T"), ("image/1.jpeg", "b", "T"), ("image/2.jpeg", "a", "V")]
    csv = write_index(tmp_path / "meta", rows, make_images=False)
    with pytest.raises(MissingImagesError, match=r"looked relative to .*meta"):
        data.load_dataset(csv)
    for where in (csv, csv.parent):  # the CSV itself or the folder holding it
        df = data.load_dataset(where, image_dir=photos)
        assert df["image_path"].tolist() == [str(photos / f"{i}.jpeg") for i in range(3)]
    make_image(tmp_path / "folders" / "a" / "x.jpg", fmt="JPEG")
    with pytest.raises(DatasetError, match=r"folders is a folder of class folders \(no index\.csv\), so "
                       r"image_dir='.*photos' has nothing to apply to"):
        data.load_dataset(tmp_path / "folders", image_dir=photos)


def test_load_dataset_dispatches(car_index: Path, tmp_path: Path):
    assert len(data.load_dataset(car_index)) == 8
    assert len(data.load_dataset(car_index.parent)) == 8
    make_image(tmp_path / "folders" / "a" / "1.png", fmt="PNG")
    assert data.load_dataset(tmp_path / "folders")["label"].tolist() == ["a"]
    with pytest.raises(DatasetNotFoundError, match=r"missing does not exist: give an index\.csv"):
        data.load_dataset(tmp_path / "missing")


# ---------------------------------------------------------------- split and by_subset


def frame(counts: dict[str, int]) -> pd.DataFrame:
    labels = [label for label, n in counts.items() for _ in range(n)]
    return pd.DataFrame({"image_path": [f"/img/{i}.jpg" for i in range(len(labels))], "label": labels,
                         "subset": ""})


def test_split_follows_the_mlnet_tutorial_sizes_and_stratifies():
    df = frame({"a": 60, "b": 40, "c": 100})
    train, validation, test = data.split(df)
    assert (len(train), len(validation), len(test)) == (140, 54, 6)
    assert set(train["subset"]) == {"train"} and set(validation["subset"]) == {"validation"}
    assert set(test["subset"]) == {"test"}
    everything = pd.concat([train, validation, test])
    assert sorted(everything["image_path"]) == sorted(df["image_path"])
    assert train["label"].value_counts().to_dict() == {"c": 70, "a": 42, "b": 28}


def test_split_is_deterministic_per_seed():
    df = frame({"a": 30, "b": 30})
    first = data.split(df, seed=3)
    again = data.split(df, seed=3)
    other = data.split(df, seed=4)
    for x, y in zip(first, again):
        pd.testing.assert_frame_equal(x, y)
    assert first[0]["image_path"].tolist() != other[0]["image_path"].tolist()


def test_split_falls_back_to_random_with_the_reason():
    df = frame({"a": 20, "lonely": 1})
    with pytest.warns(StratifyFallbackWarning, match=r"classes 'lonely' \(1 in all\) have only 1 image"):
        with pytest.warns(UnseenClassWarning, match=r"class 'lonely' is in validation \(1 image\) but never"):
            parts = data.split(df, stratify=True)
    assert sum(len(p) for p in parts) == 21


def test_split_without_stratify_does_not_warn_and_whole_holdout_can_be_validation():
    df = frame({"a": 10, "b": 10})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, validation, test = data.split(df, validation_fraction=1.0, stratify=False)
    assert (len(train), len(validation), len(test)) == (14, 6, 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"test_fraction": 0}, r"test_fraction must be between 0 and 1 \(exclusive\), got 0"),
    ({"test_fraction": 1.5}, r"test_fraction must be between 0 and 1 \(exclusive\), got 1\.5"),
    ({"validation_fraction": 0}, r"validation_fraction must be in \(0, 1\], got 0"),
])
def test_split_rejects_bad_fractions(kwargs, message):
    with pytest.raises(DatasetError, match=message):
        data.split(frame({"a": 10}), **kwargs)


def test_split_needs_two_images_and_a_label_column():
    with pytest.raises(DatasetError, match=r"split\(\) needs at least 2 images, got 1"):
        data.split(frame({"a": 1}))
    with pytest.raises(DatasetError, match=r"missing column\(s\) label; expected image_path, label"):
        data.split(pd.DataFrame({"image_path": ["x"]}))


def test_by_subset(car_index: Path):
    train, validation = data.by_subset(data.load_index(car_index))
    assert len(train) == 6 and len(validation) == 2
    assert train.index.tolist() == list(range(6))


def test_by_subset_without_validation_rows_says_what_to_do(tmp_path: Path):
    df = data.load_index(write_index(tmp_path, [("image/1.jpeg", "a", "T")]))
    with pytest.raises(DatasetError, match=r"index\.csv: no validation rows \(subset values found: "
                       r"'train'\)\. Mark rows T/V in index\.csv, or make the parts with split\(df\)"):
        data.by_subset(df)


def test_by_subset_on_folder_data_points_to_split(tmp_path: Path):
    make_image(tmp_path / "a" / "1.png", fmt="PNG")
    with pytest.raises(DatasetError, match=r"no train rows \(subset values found: ''\)"):
        data.by_subset(data.load_images_from_directory(tmp_path))


def test_by_subset_warns_about_unseen_classes_in_a_hand_made_table():
    df = pd.DataFrame({"image_path": ["1", "2"], "label": ["a", "b"], "subset": ["train", "validation"]})
    with pytest.warns(UnseenClassWarning, match=r"the table: class 'b' is in validation \(1 image\)"):
        data.by_subset(df)


def test_by_subset_needs_a_subset_column():
    with pytest.raises(DatasetError, match=r"missing column\(s\) subset.*use split\(\)"):
        data.by_subset(pd.DataFrame({"image_path": ["x"], "label": ["a"]}))


# ---------------------------------------------------------------- LabelMap


def test_label_map_sorts_and_maps_both_ways():
    labels = LabelMap.from_labels(["tail_lamp", "bumper_dent", "tail_lamp", "door_dent"])
    assert labels.names == ["bumper_dent", "door_dent", "tail_lamp"]
    assert len(labels) == 3 and list(labels) == labels.names
    assert labels.index("door_dent") == 1 and labels.name(2) == "tail_lamp"
    assert labels.encode(["tail_lamp", "bumper_dent"]).tolist() == [2, 0]
    assert labels.encode(["tail_lamp"]).dtype == np.int64
    assert labels == LabelMap(["door_dent", "tail_lamp", "bumper_dent"]) != LabelMap(["x"])
    assert hash(labels) == hash(LabelMap(labels.names))


def test_label_map_errors():
    labels = LabelMap(["a", "b"])
    with pytest.raises(DatasetError, match=r"Unknown class 'z'; this label map knows 2: a, b"):
        labels.index("z")
    with pytest.raises(DatasetError, match=r"unknown classes 'y', 'z' \(2 in all\); this label map knows a, b"):
        labels.encode(["a", "z", "y"])
    with pytest.raises(IndexError, match=r"Class index 5 is out of range: this label map has 2 classes"):
        labels.name(5)
    with pytest.raises(DatasetError, match=r"class names must be non-blank single lines"):
        LabelMap(["a", " "])


def test_label_map_save_and_load(tmp_path: Path):
    labels = LabelMap(["b", "ä-umlaut", "a"])
    written = labels.save(tmp_path)
    assert written == tmp_path / "labels.txt"
    assert written.read_text(encoding="utf-8") == "a\nb\nä-umlaut\n"
    assert LabelMap.load(tmp_path) == labels
    assert LabelMap.load(labels.save(tmp_path / "model" / "classes.txt")) == labels
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


@pytest.mark.parametrize("text, message", [
    ("", r"labels\.txt: empty file"),
    ("a\n\nb\n", r"labels\.txt: blank lines 2 \(1 in all\)"),
    ("b\na\n", r"labels\.txt: class names are not sorted and unique.*Re-save it with LabelMap\.save"),
])
def test_label_map_load_rejects_bad_files(tmp_path: Path, text: str, message: str):
    (tmp_path / "labels.txt").write_text(text, encoding="utf-8")
    with pytest.raises(LabelsFileError, match=message):
        LabelMap.load(tmp_path / "labels.txt")


def test_label_map_load_missing_file(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match=r"labels\.txt does not exist"):
        LabelMap.load(tmp_path)


# ---------------------------------------------------------------- validate_images


def test_validate_images_reports_every_problem_and_keeps_going(tmp_path: Path):
    good_jpeg = make_image(tmp_path / "good.jpg", fmt="JPEG", size=(64, 64))
    good_png = make_image(tmp_path / "good.png", fmt="PNG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good_jpeg.read_bytes()[:200])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    tiff = make_image(tmp_path / "scan.jpg", fmt="TIFF")
    missing = tmp_path / "missing.jpg"
    df = pd.DataFrame({"image_path": [str(p) for p in [good_jpeg, truncated, garbage, good_png, tiff, missing]],
                       "label": "x", "subset": "train"})
    problems = data.validate_images(df)
    assert list(problems.columns) == ["path", "reason"]
    reasons = dict(zip(problems["path"], problems["reason"]))
    assert set(reasons) == {str(truncated), str(garbage), str(tiff), str(missing)}
    assert reasons[str(missing)] == "file not found"
    assert "are not a decodable JPEG/PNG/GIF/BMP/WebP image" in reasons[str(truncated)]  # its header is cut
    assert reasons[str(garbage)].startswith("the bytes (20 bytes, starting b'this is ') are not a decodable "
                                            "JPEG/PNG/GIF/BMP/WebP image")
    assert reasons[str(tiff)] == ("the bytes are a TIFF image, not a decodable JPEG/PNG/GIF/BMP/WebP image; "
                                  "convert it to JPEG or PNG.")


def test_validate_images_catches_cut_pixel_data(tmp_path: Path):
    noisy = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(noisy).save(whole, format="JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # the header is intact
    problems = data.validate_images([whole, cut])
    assert problems["path"].tolist() == [str(cut)]
    assert "(truncated or corrupt: the data stops after" in problems["reason"][0]  # found before any decoding


def test_validate_images_agrees_with_the_scorers_on_formats(tmp_path: Path):
    """MPO (a phone's JPEG with a second frame) and WebP are scored by predict, so validation must pass them too."""
    mpo = tmp_path / "phone.jpg"
    Image.new("RGB", (16, 8), "red").save(mpo, format="MPO", save_all=True,
                                          append_images=[Image.new("RGB", (16, 8), "blue")])
    assert Image.open(mpo).format == "MPO"
    paths = [mpo, make_image(tmp_path / "a.gif", fmt="GIF"), make_image(tmp_path / "a.bmp", fmt="BMP")]
    from workshop_utils.core import runtime

    if runtime.tf_decodes("WEBP"):
        paths.append(make_image(tmp_path / "a.webp", fmt="WEBP"))
    assert data.validate_images(paths).empty


def test_validate_images_applies_the_scorers_pixel_limit(tmp_path: Path):
    """One limit for every reader: predictions.DEFAULT_MAX_PIXELS (40 MP), from the header, not Pillow's ~179 MP."""
    from workshop_utils.core.formats import DEFAULT_MAX_PIXELS

    big = tmp_path / "big.png"
    Image.new("1", (9000, 5000)).save(big)  # 45 MP, a 6 kB file
    problems = data.validate_images([big])
    assert problems["reason"].tolist() == [
        "the image is 9000x5000 = 45 MP, over the limit of 40 MP (max_pixels=40000000); downscale it or pass a "
        "larger max_pixels."]
    assert DEFAULT_MAX_PIXELS == 40_000_000
    small = make_image(tmp_path / "small.png", size=(40, 30), fmt="PNG")
    assert data.validate_images([small], max_pixels=1000)["reason"][0].startswith("the image is 40x30 = 0.0012 MP")
    assert data.validate_images([small], max_pixels=1200).empty


def test_validate_images_all_good_and_list_input(tmp_path: Path):
    paths = [make_image(tmp_path / f"{i}.png", fmt="PNG") for i in range(3)]
    problems = data.validate_images(paths, progress=False)
    assert problems.empty and list(problems.columns) == ["path", "reason"]


def test_validate_images_needs_image_path_column():
    with pytest.raises(DatasetError, match=r"missing column\(s\) image_path"):
        data.validate_images(pd.DataFrame({"path": ["x"]}))


def test_require_columns_names_the_table_and_refuses_what_is_not_a_table():
    with pytest.raises(DatasetError, match=r"^the history: missing column\(s\) b; expected a, b, found a\. Fix it\.$"):
        data.require_columns(pd.DataFrame({"a": []}), ["a", "b"], "Fix it.", what="the history")
    with pytest.raises(DatasetError, match=r"^the table must be a pandas DataFrame, got list\.$"):
        data.require_columns([1], ["a"])
