"""The command line: help, one-line errors with exit code 2, and run → predict end to end on the sample."""
import json

import pytest

from workshop_utils.cli import main

SMALL = ["--arch", "MobilenetV2", "--weights", "none", "--image-size", "64", "--epochs", "2", "--quiet"]


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--dataset", "--arch", "--epochs", "--batch-size", "--learning-rate", "--workspace",
                 "--reuse-cache", "--weights"):
        assert flag in text


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--dataset", "sample", "--arch", "ResNet9"], r"error: Unknown architecture 'ResNet9'; choose one of"),
        (["run", "--dataset", "no-such-set"], r"error: .*no-such-set.*sample"),
        (["run", "--dataset", "sample", "--weights", "/nowhere/w.h5", "--arch", "MobilenetV2"],
         r"error: Weights file /nowhere/w\.h5 for MobilenetV2 does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys, tmp_path):
    assert main(argv + ["--workspace", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert pytest.importorskip("re").search(message, err), err


@pytest.mark.parametrize("value", ["0", "-3", "ten"])
def test_bad_numbers_are_rejected_by_the_parser(value, capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", "--epochs", value])
    assert done.value.code == 2
    assert "--epochs" in capsys.readouterr().err


def test_run_then_predict_on_the_sample(tmp_path, capsys):
    from workshop_utils.config import sample_dir

    assert main(["run", "--dataset", "sample", "--workspace", str(tmp_path), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "features are untrained" in out  # --weights none says so
    assert "AccuracyMicro" in out and "Image: " in out and "| Actual: " in out
    model = tmp_path / "model"
    assert (model / "model.keras").is_file() and (model / "model.pb").is_file()

    images = sorted((sample_dir() / "image").glob("*.jpeg"))[:2]
    bad = tmp_path / "notes.jpeg"
    bad.write_text("not a picture")
    assert main(["predict", str(model), str(images[0]), str(bad), str(images[1])]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"Image: {images[0].name} | Predicted: ") and "Probability" in lines[0]
    assert lines[1].startswith(f"Image: {images[1].name} | Predicted: ")
    assert "First prediction took" in lines[2]
    assert len(captured.err.strip().splitlines()) == 1 and "notes.jpeg" in captured.err

    assert main(["predict", str(model), str(images[0]), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["image"] == str(images[0]) and abs(sum(record["scores"].values()) - 1) < 1e-4


def test_predict_with_a_missing_model_folder_is_one_line(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nothing"), "x.jpeg"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Model folder") and "does not exist" in err


def test_workspace_help_names_the_real_default_and_image_dir_is_documented(capsys):
    from workshop_utils.config import REPO_ROOT

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    assert "./workspace" not in text
    assert f"default: $WORKSHOP_WORKSPACE, else the repository's workspace folder, {REPO_ROOT / 'workspace'})" in text
    assert "--image-dir IMAGE_DIR folder holding the images of an index.csv dataset" in text


def test_run_with_image_dir_reports_skipped_images_in_skipped_csv(tmp_path, capfd):
    """--image-dir resolves the CSV's file names; skipped images are counted, listed in skipped.csv, warned
    about in one line each (no Python file/line), and libjpeg prints nothing of its own."""
    import shutil

    import pandas as pd

    from workshop_utils.config import sample_dir

    photos, meta, workspace = tmp_path / "photos", tmp_path / "meta", tmp_path / "ws"
    shutil.copytree(sample_dir() / "image", photos)
    (photos / "notes.jpeg").write_text("not a picture")
    (photos / "cut.jpeg").write_bytes((photos / "1.jpeg").read_bytes()[:300])  # a cut header: libjpeg complains
    index = (sample_dir() / "index.csv").read_text().rstrip("\n").splitlines()
    index += ["elsewhere/notes.jpeg,door_dent,T", "cut.jpeg,door_dent,V"]  # only the file name counts with --image-dir
    meta.mkdir()
    (meta / "index.csv").write_text("\n".join(index) + "\n")

    assert main(["run", "--dataset", str(meta / "index.csv"), "--workspace", str(workspace), *SMALL]) == 2
    assert "image files not found" in capfd.readouterr().err  # without --image-dir: looked next to the CSV

    argv = ["run", "--dataset", str(meta), "--image-dir", str(photos), "--workspace", str(workspace),
            "--no-export", *SMALL]
    assert main(argv) == 0
    out, err = capfd.readouterr()
    listing = workspace / "skipped.csv"
    assert f"Skipped 2 images that could not be used (1 train, 1 validation); the list with reasons: {listing}" in out
    skipped = pd.read_csv(listing)
    assert skipped.columns.tolist() == ["subset", "path", "reason"]
    assert skipped["path"].tolist() == [str(photos / "notes.jpeg"), str(photos / "cut.jpeg")]
    assert skipped["reason"][0].startswith("the bytes (13 bytes, starting b'not a pi') are not a decodable")
    warning_lines = [line for line in err.splitlines() if "Skipped 1 of" in line]
    assert len(warning_lines) == 2 and all(line.startswith("warning: Skipped 1 of ") for line in warning_lines), err
    assert "SkippedImagesWarning" not in err and ".py:" not in err and "warnings.warn" not in err, err
    assert "JPEG library" not in err, err

    (photos / "notes.jpeg").unlink()
    (photos / "cut.jpeg").write_bytes((photos / "1.jpeg").read_bytes())
    (meta / "index.csv").write_text("\n".join(index[:-2]) + "\n")
    assert main(argv) == 0
    assert not listing.exists()  # nothing skipped: no list from an earlier run left to mislead
