"""Notebook 10 and its script: your own photos (a folder of class folders) to a model `predict` and `serve` accept.

The photos are the bundled sample's, laid out as one folder per class in tmp_path; everything runs in the quick
profile (small images, few epochs). The script runs as a learner runs it (a subprocess), then `predict` scores a
photo with what it wrote. Notebook 10 runs unchanged on a folder of 3 classes x 12 photos named by
WORKSHOP_PHOTOS_DIR, and its checkpoints stop with a message that says what to fix on folders that break them.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from workshop_utils.config import REPO_ROOT, sample_dir

SCRIPT = REPO_ROOT / "notebooks" / "your_own_photos.py"
NOTEBOOK = REPO_ROOT / "notebooks" / "10_your_own_photos.ipynb"
THREE = ("glass_shatter", "head_lamp", "tail_lamp")  # 20 sample photos each


def lay_out(folder: Path, per_class: dict[str, int] | None = None) -> Path:
    """The sample's photos copied into folder/<class>/ (all of them, or the first n of the classes named)."""
    index = pd.read_csv(sample_dir() / "index.csv")
    for label, rows in index.groupby("class", sort=True):
        if per_class is not None and label not in per_class:
            continue
        target = folder / label
        target.mkdir(parents=True)
        for image in rows["image"].iloc[: None if per_class is None else per_class[label]]:
            shutil.copy(sample_dir() / image, target)
    return folder


def predict_json(model_dir: Path, image: Path) -> dict:
    """`python -m workshop_utils predict MODEL IMAGE --json`, as a user runs it; its one JSON answer."""
    result = subprocess.run([sys.executable, "-m", "workshop_utils", "predict", str(model_dir), str(image), "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"predict failed: {result.stderr}"
    return json.loads(result.stdout.splitlines()[0])


def test_the_script_writes_a_model_that_predict_accepts(tmp_path):
    photos, out = lay_out(tmp_path / "photos"), tmp_path / "model"
    env = {**os.environ, "WORKSHOP_PROFILE": "quick"}
    result = subprocess.run([sys.executable, str(SCRIPT), str(photos), str(out)], capture_output=True, text=True,
                            timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Test macro accuracy (balanced accuracy):" in result.stdout
    assert f"python -m workshop_utils serve {out}" in result.stdout

    classes = sorted(p.name for p in photos.iterdir())
    assert (out / "labels.txt").read_text(encoding="utf-8").split() == classes
    card = json.loads((out / "model_card.json").read_text(encoding="utf-8"))
    assert card["classes"] == classes and card["image_size"] == [96, 96]
    image = next((photos / "head_lamp").iterdir())
    answer = predict_json(out, image)
    assert answer["image"] == str(image) and answer["label"] in classes
    assert sorted(answer["scores"]) == classes and abs(sum(answer["scores"].values()) - 1) < 1e-4
    assert answer["probability"] == max(answer["scores"].values())


@pytest.fixture(scope="module")
def script():
    """The script as a module, to call its main() on folders that must be refused (before any training)."""
    spec = importlib.util.spec_from_file_location("your_own_photos", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    writes, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ left in notebooks/
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes
    return module


def _one_class(folder: Path) -> Path:
    return lay_out(folder, {"head_lamp": 12})


def _too_few(folder: Path) -> Path:
    return lay_out(folder, {"glass_shatter": 12, "head_lamp": 12, "tail_lamp": 4})


def _unreadable(folder: Path) -> Path:
    lay_out(folder, dict.fromkeys(THREE, 12))
    (folder / "head_lamp" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not the rest of a JPEG")
    return folder


def _loose(folder: Path) -> Path:
    lay_out(folder, dict.fromkeys(THREE, 12))
    shutil.copy(sample_dir() / "image" / "1.jpeg", folder / "loose.jpeg")  # a door_dent: no copy of the others
    return folder


@pytest.mark.parametrize(("make", "message"), [
    (_one_class, "need at least 2 class folders with 10+ photos each (photos inside them, not loose), found "
                 "{'head_lamp': 12}; add photos or remove the small folders."),
    (_too_few, "found {'glass_shatter': 12, 'head_lamp': 12, 'tail_lamp': 4}; add photos or remove the small folders"),
    (_unreadable, "1 unreadable photo(s), e.g. "),
    (_loose, "1 photo(s) directly in {photos}, e.g. loose.jpeg: move them into class folders."),
], ids=["one class", "too few", "unreadable", "loose photo"])
def test_the_script_refuses_a_folder_it_cannot_learn_from_and_says_what_to_do(script, tmp_path, capsys, make, message):
    photos = make(tmp_path / "photos")
    with pytest.raises(SystemExit) as stopped:
        script.main([str(photos), str(tmp_path / "model")])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert message.replace("{photos}", str(photos)) in error
    if make is _unreadable:
        assert "broken.jpg" in error and "delete or re-save them as JPEG" in error
    assert not (tmp_path / "model").exists(), "nothing is written for a refused folder"


def test_notebook_10_runs_unchanged_on_your_own_folder_of_3_classes_of_12_photos(tmp_path):
    photos = lay_out(tmp_path / "photos", dict.fromkeys(THREE, 12))
    temp, workspace = tmp_path / "tmp", tmp_path / "workspace"
    temp.mkdir()
    env = {**os.environ, "WORKSHOP_PHOTOS_DIR": str(photos), "WORKSHOP_WORKSPACE": str(workspace),
           "WORKSHOP_PROFILE": "quick", "TMPDIR": str(temp)}
    result = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--execute", "--to", "notebook",
                             "--output-dir", str(tmp_path), str(NOTEBOOK)], capture_output=True, text=True,
                            timeout=1200, env=env, cwd=NOTEBOOK.parent)
    assert result.returncode == 0, result.stderr[-5000:]

    executed = nbformat.read(tmp_path / NOTEBOOK.name, as_version=4)
    text = "\n".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert f"Photos: {photos}" in text, "the notebook did not use WORKSHOP_PHOTOS_DIR"
    assert "✅ Checkpoint: 36 readable photos in 3 class folders." in text
    assert "✅ Checkpoint: 3 classes, 12 to 12 photos each." in text
    assert "✅ Checkpoint: 24 train, 6 validation, 6 test photos" in text
    assert "✅ Checkpoint: `predict` loads your_own_photos_model/ and agrees with the notebook" in text

    model = workspace / "your_own_photos_model"
    assert (model / "labels.txt").read_text(encoding="utf-8").split() == list(THREE)
    assert sorted(p.name for p in photos.iterdir()) == list(THREE), "the learner's folder is left as it was"
    assert not list(temp.glob("your-own-photos-*")), "the notebook left its temporary folder behind"


def _notebook_client() -> tuple[NotebookClient, nbformat.NotebookNode, list[int]]:
    """A client for notebook 10 and the indices of its code cells up to the per-class checkpoint (before training)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    last = next(i for i in code if "too_few = counts[counts < MIN_PER_CLASS]" in nb.cells[i].source)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    return client, nb, [i for i in code if i <= last]


NOTEBOOK_REFUSALS = [
    (_one_class, "Only one class folder ('head_lamp') in {photos}: a classifier needs at least two. Add a second "
                 "folder, for example 'other' with photos of everything else, then run the notebook again."),
    (_too_few, "Too few photos in 'tail_lamp' (4): every class needs at least 10 different photos (30 or more is "
               "better). Add photos to those folders, or merge or remove them, then run the notebook again."),
    (_unreadable, "1 file(s) cannot be read as images, e.g. {photos}/head_lamp/broken.jpg: "),
    (_loose, "1 photo(s) lie directly in {photos} (e.g. loose.jpeg), not in a class folder: move every photo into a "
             "sub-folder named after its class, then run the notebook again."),
]


def test_notebook_10_checkpoints_stop_on_folders_it_cannot_learn_from_and_say_what_to_do(tmp_path, monkeypatch):
    """One kernel, the notebook's own cells up to its per-class checkpoint, once per broken folder."""
    monkeypatch.setenv("WORKSHOP_WORKSPACE", str(tmp_path / "workspace"))
    client, nb, cells = _notebook_client()
    with client.setup_kernel():
        client.execute_cell(nb.cells[cells[0]], cells[0])  # the setup cell, once
        for number, (make, message) in enumerate(NOTEBOOK_REFUSALS):
            photos = make(tmp_path / f"photos{number}")
            client.execute_cell(nbformat.v4.new_code_cell(f"os.environ['WORKSHOP_PHOTOS_DIR'] = {str(photos)!r}"), 0)
            with pytest.raises(CellExecutionError) as stopped:
                for index in cells[1:]:
                    client.execute_cell(nb.cells[index], index)
            assert stopped.value.ename == "AssertionError", stopped.value
            assert message.replace("{photos}", str(photos)) in stopped.value.evalue, make.__name__
            if make is _unreadable:
                assert "Delete them, or open and re-save them as JPEG" in stopped.value.evalue
