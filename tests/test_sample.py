"""The bundled synthetic sample: reproducible (byte for byte on one machine, picture for picture across machines),
in the car-damage layout, small, and learnable."""
import filecmp
import hashlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from workshop_utils.config import sample_dir
from workshop_utils.core.errors import ToolingError
from workshop_utils.data import load_index
from workshop_utils.tooling import paint, sample

SAMPLE = sample_dir()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A fresh generation of the default sample, made once for this module."""
    out = tmp_path_factory.mktemp("fresh") / "sample"
    index = sample.generate(out)
    return out, index


@pytest.fixture(scope="module")
def index():
    return load_index(SAMPLE / "index.csv")


picture_differences = sample.picture_differences


def test_the_generator_is_deterministic_on_one_machine(tmp_path):
    """Two fresh generations on this machine are byte-identical (a smaller sample keeps it fast)."""
    first = sample.generate(tmp_path / "a", n_train=2, n_val=1)
    second = sample.generate(tmp_path / "b", n_train=2, n_val=1)
    assert first.equals(second)
    a, b = tmp_path / "a", tmp_path / "b"
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert filecmp.cmpfiles(a, b, names, shallow=False)[0] == names, "the two generations differ in bytes"


def test_committed_sample_matches_a_fresh_generation(fresh):
    """Same labels, counts, names and sizes; decoded pixels within a few levels, whatever the JPEG build."""
    out, _ = fresh
    problems = picture_differences(SAMPLE, out)
    assert problems == [], (
        f"data/sample differs from a fresh generation ({sample.pillow_build()}; committed with "
        f"{sample.REFERENCE_BUILD}): {problems[:5]}. If the generator changed on purpose, run "
        "`python -m workshop_utils sample`."
    )


@pytest.fixture
def sample_copy(tmp_path):
    copy = tmp_path / "sample"
    shutil.copytree(SAMPLE, copy)
    return copy


def test_the_comparison_tolerates_another_encoder_but_not_a_changed_picture(sample_copy):
    # Re-encoding the same pixels (other bytes, other JPEG settings) is not a change of the sample.
    with Image.open(sample_copy / "image" / "7.jpeg") as im:
        im.load()
    im.save(sample_copy / "image" / "7.jpeg", quality=100, subsampling=0)
    assert (sample_copy / "image" / "7.jpeg").read_bytes() != (SAMPLE / "image" / "7.jpeg").read_bytes()
    assert picture_differences(SAMPLE, sample_copy) == []

    # A small mark (a 6 x 6 white patch) in one picture is.
    pixels = np.asarray(Image.open(sample_copy / "image" / "12.jpeg")).copy()
    pixels[50:56, 70:76] = 255
    Image.fromarray(pixels).save(sample_copy / "image" / "12.jpeg", quality=100, subsampling=0)
    problems = picture_differences(SAMPLE, sample_copy)
    assert len(problems) == 1 and re.match(r"image/12\.jpeg: pixels differ by up to \d+ levels", problems[0]), problems

    # So is a slight change of the whole picture: two levels brighter everywhere (a mean change of about 2).
    pixels = np.asarray(Image.open(SAMPLE / "image" / "12.jpeg"), np.int16)
    Image.fromarray(np.clip(pixels + 2, 0, 255).astype(np.uint8)).save(sample_copy / "image" / "12.jpeg",
                                                                        quality=100, subsampling=0)
    assert re.search(r"image/12\.jpeg: .* on average \(allowed 8 and 0\.5\)", " ".join(picture_differences(SAMPLE, sample_copy)))


def test_the_comparison_reports_a_changed_label_a_missing_image_and_another_size(sample_copy):
    index = pd.read_csv(sample_copy / "index.csv")
    row = index.index[index["image"] == "image/5.jpeg"][0]
    old = index.loc[row, "class"]
    index.loc[row, "class"] = "door_dent" if old != "door_dent" else "door_scratch"
    index.to_csv(sample_copy / "index.csv", index=False)
    (sample_copy / "image" / "9.jpeg").unlink()
    with Image.open(SAMPLE / "image" / "3.jpeg") as im:
        im.resize((80, 60)).save(sample_copy / "image" / "3.jpeg")
    problems = picture_differences(SAMPLE, sample_copy)
    assert f"index.csv row {row + 2}: image/5.jpeg, {index.loc[row, 'class']}, {index.loc[row, 'subset']} " \
        f"(expected image/5.jpeg, {old}, {index.loc[row, 'subset']})" in problems
    assert "image/9.jpeg (missing)" in problems
    assert "image/3.jpeg: 80x60 RGB, expected 160x120 RGB" in problems
    assert len(problems) == 3, problems


def test_index_has_the_car_damage_layout():
    text = (SAMPLE / "index.csv").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "image,class,subset"
    raw = pd.read_csv(SAMPLE / "index.csv")
    assert all(re.fullmatch(r"image/\d+\.jpeg", p) for p in raw["image"])
    assert sorted(int(p[6:-5]) for p in raw["image"]) == list(range(1, len(raw) + 1))
    assert set(raw["subset"]) == {"T", "V"}
    assert raw["class"].head(16).nunique() >= 5, "rows should be shuffled so that classes interleave"
    on_disk = {p.name for p in (SAMPLE / "image").iterdir()}
    assert on_disk == {p[6:] for p in raw["image"]}, "image/ must hold exactly the indexed files"


def test_every_class_in_both_subsets_with_enough_images(index):
    assert set(index["label"]) == set(sample.CLASSES)
    counts = index.groupby(["label", "subset"]).size().unstack(fill_value=0)
    assert (counts["train"] >= 12).all() and (counts["validation"] >= 3).all(), counts
    assert {label: (row["train"], row["validation"]) for label, row in counts.iterrows()} == sample.COUNTS


def test_sample_is_at_most_2_mb():
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total <= 2 * 1024 * 1024, f"data/sample is {total / 1e6:.2f} MB"


def test_images_are_distinct_rgb_jpegs_of_the_expected_size(index):
    digests = set()
    for path in index["image_path"]:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == paint.IMAGE_SIZE, path
            im.load()
        digests.add(hashlib.sha256(open(path, "rb").read()).hexdigest())
    assert len(digests) == len(index), "some pictures are byte-identical copies"


def _cheap_features(path: str) -> np.ndarray:
    """Downscaled pixels, a colour histogram and edge statistics: features with no learned knowledge."""
    im = Image.open(path).convert("RGB")
    pixels = np.asarray(im.resize((16, 12), Image.Resampling.BILINEAR), np.float32).ravel() / 255
    a = np.asarray(im, np.float32) / 255
    q = (a * 3.999).astype(int)
    colours = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64) / q[..., 0].size
    g = a.mean(axis=2)
    mag = np.hypot(np.diff(g, axis=1)[:-1], np.diff(g, axis=0)[:, :-1])
    edges = np.histogram(mag, bins=[0, 0.02, 0.05, 0.1, 0.2, 0.4, 1.5])[0] / mag.size
    h, w = (s // 4 * 4 for s in mag.shape)
    grid = mag[:h, :w].reshape(4, h // 4, 4, w // 4).mean(axis=(1, 3)).ravel()
    return np.concatenate([pixels, colours, edges, grid])


def test_classes_are_learnable_from_cheap_features(index):
    """Not a hard bar (an ImageNet backbone scores about 0.9 here), but well above chance (0.125)."""
    x = np.stack([_cheap_features(p) for p in index["image_path"]])
    y = index["label"].to_numpy()
    train = (index["subset"] == "train").to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    accuracy = model.fit(x[train], y[train]).score(x[~train], y[~train])
    assert accuracy >= 0.4, f"validation accuracy {accuracy:.3f}: the classes are not visibly distinct"
    # The same features learn nothing from shuffled labels: the accuracy above comes from the pictures.
    shuffled = np.random.default_rng(0).permutation(y[train])
    chance = model.fit(x[train], shuffled).score(x[~train], y[~train])
    assert chance < 0.3, chance


def test_generate_replaces_an_old_sample_and_leaves_no_temporary_folders(tmp_path):
    out = tmp_path / "sample"
    first = sample.generate(out, seed=1, n_train=1, n_val=1)
    before = (out / "image" / "1.jpeg").read_bytes()
    second = sample.generate(out, seed=2, n_train=1, n_val=1)
    assert len(first) == len(second) == 2 * len(sample.CLASSES)
    assert (out / "image" / "1.jpeg").read_bytes() != before, "another seed draws other pictures"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample"]
    assert len(list((out / "image").iterdir())) == len(second)


def test_generate_refuses_to_replace_a_folder_holding_other_files(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ToolingError, match=r"photos exists and holds more than a generated sample"):
        sample.generate(tmp_path / "photos", n_train=1, n_val=1)
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"


def test_generate_rejects_empty_subsets(tmp_path):
    with pytest.raises(ValueError, match=r"n_val=0: both subsets need at least one image per class"):
        sample.generate(tmp_path / "s", n_train=3, n_val=0)


def test_check_names_the_differing_files(tmp_path, fresh, monkeypatch, capsys):
    out, _ = fresh
    # generate() itself is covered above; here a stand-in copies the fresh sample to keep this test fast.
    monkeypatch.setattr(sample, "generate", lambda target, seed=0: shutil.copytree(out, target))
    copy = tmp_path / "sample"
    shutil.copytree(out, copy)
    assert sample.main(["--check", "--out", str(copy)]) == 0
    assert "matches a fresh generation" in capsys.readouterr().out

    (copy / "image" / "3.jpeg").write_bytes(b"not the generated picture")
    (copy / "image" / "5.jpeg").unlink()
    (copy / "image" / "999.jpeg").write_bytes(b"extra")
    assert sample.main(["--check", "--out", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "3 difference(s)" in err
    assert "image/3.jpeg (not a readable image)" in err and "image/5.jpeg (missing)" in err
    assert "image/999.jpeg (unexpected)" in err and "python -m workshop_utils sample" in err


def test_sample_module_does_not_import_tensorflow():
    code = "import sys, workshop_utils.tooling.sample; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
