"""The command line: help, one-line errors with exit code 2, and run → predict end to end on the sample."""
import json

import pytest

from workshop_utils.apps.cli import main

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
    assert f"Skipped 2 images that could not be used (1 train, 1 test); the list with reasons: {listing}" in out
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


# --- Every failure path: one line `error: ...` on stderr (warning lines allowed), exit code 2, no traceback ---

def _one_error_line(err: str) -> str:
    """The single ``error:`` line of a failure's stderr, after checking there is nothing else but warnings."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


PARSE_ERRORS = [  # argparse rejects these before any work: (argv, words the line must hold)
    (["run", "--learning-rate", "inf"], ["argument --learning-rate: expected a finite number above 0, got inf"]),
    (["run", "--learning-rate", "nan"], ["argument --learning-rate: expected a finite number above 0, got nan"]),
    (["run", "--learning-rate=-inf"], ["argument --learning-rate: expected a finite number above 0, got -inf"]),
    (["run", "--learning-rate", "1e39"], ["--learning-rate: expected a number up to 3.4e+38 (float32), got 1e39"]),
    (["run", "--learning-rate", "0"], ["--learning-rate: expected a number above 0, got 0"]),
    (["run", "--epochs", "ten"], ["--epochs: expected a whole number, got 'ten'"]),
    (["run", "--batch-size", "-3"], ["--batch-size: expected a number above 0, got -3"]),
    (["run", "--image-size", "8"], ["--image-size: expected a size from 32 to 1024 pixels", "got 8"]),
    (["run", "--image-size", "99999999"], ["--image-size: expected a size from 32 to 1024 pixels", "got 99999999"]),
    (["run", "--seed", "-1"], ["--seed: expected a whole number from 0 to 4294967295 (NumPy's range), got -1"]),
    (["run", "--weights", "notes.txt"], ["--weights: expected 'imagenet', 'none' or a Keras weights file (.weights.h5",
                                         "got 'notes.txt'"]),
    (["run", "--unfreeze", "1.5"], ["--unfreeze: expected a whole number of layers >= 0 or a fraction between 0 and 1",
                                    "got 1.5"]),
    (["run", "--unfreeze", "many"], ["--unfreeze: expected a layer count or a fraction, got 'many'"]),
    (["run", "--fine-tune-epochs", "0"], ["--fine-tune-epochs: expected a number above 0, got 0"]),
    (["run", "--protocol", "fair"], ["--protocol: invalid choice: 'fair'"]),
    (["run", "--bogus"], ["unrecognized arguments: --bogus", "(see `python -m workshop_utils --help`)"]),
    (["train"], ["invalid choice: 'train'", "(see `python -m workshop_utils --help`)"]),
    (["predict"], ["the following arguments are required: model_dir, images",
                   "(see `python -m workshop_utils predict --help`)"]),
    (["publish"], ["one of the arguments --repo --normalize --check is required"]),
]


@pytest.mark.parametrize("argv, words", PARSE_ERRORS, ids=[" ".join(argv) for argv, _ in PARSE_ERRORS])
def test_bad_flags_are_one_line_from_the_parser(argv, words, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert all(word in line for word in words), line


@pytest.mark.parametrize("where", ["the file itself", "under the file"])
def test_a_workspace_that_cannot_be_a_folder_fails_before_any_work(where, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    workspace = blocker if where == "the file itself" else blocker / "ws"
    assert main(["run", "--dataset", "sample", "--workspace", str(workspace)]) == 2
    out, err = capsys.readouterr()
    assert _one_error_line(err) == (
        f"error: The workspace {workspace} cannot be written: {blocker} is a file, not a folder. Point --workspace at "
        "a folder you can write to (caches, trained heads and exported models go there).")
    assert "Dataset" not in out, "the dataset was loaded before the workspace was checked"


def test_a_workspace_from_the_environment_names_both_settings(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    monkeypatch.setenv("WORKSHOP_WORKSPACE", str(blocker))
    assert main(["run", "--dataset", "sample"]) == 2
    assert "Point --workspace or $WORKSHOP_WORKSPACE at a folder you can write to" in _one_error_line(
        capsys.readouterr().err)


def test_a_read_only_workspace_fails_before_any_work(tmp_path, monkeypatch, capsys):
    """chmod 0o555 makes the folder read-only, except for root (tests often run as root, where permissions do not
    stop writes): then the probe's write is refused the way a read-only folder refuses it, by patching os.open."""
    import errno
    import os

    workspace = tmp_path / "read-only"
    workspace.mkdir()
    workspace.chmod(0o555)
    try:
        try:
            (workspace / "probe").touch()
        except PermissionError:
            pass  # permissions apply: the real thing
        else:  # root: simulate
            (workspace / "probe").unlink()
            real_open = os.open

            def refuse(path, flags, *args, **kwargs):
                if os.path.dirname(os.fspath(path)) == str(workspace) and flags & os.O_CREAT:
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
                return real_open(path, flags, *args, **kwargs)

            monkeypatch.setattr(os, "open", refuse)
        assert main(["run", "--dataset", "sample", "--workspace", str(workspace)]) == 2
    finally:
        monkeypatch.undo()
        workspace.chmod(0o755)
    out, err = capsys.readouterr()
    assert _one_error_line(err) == (
        f"error: The workspace {workspace} cannot be written: Permission denied (PermissionError). Point --workspace "
        "at a folder you can write to (caches, trained heads and exported models go there).")
    assert "Dataset" not in out
    assert list(workspace.iterdir()) == [], "no probe file left behind"


def test_check_workspace_creates_the_folder_and_leaves_nothing_behind(tmp_path, monkeypatch):
    from workshop_utils.config import check_workspace

    assert check_workspace(tmp_path / "a" / "ws") == tmp_path / "a" / "ws"
    assert list((tmp_path / "a" / "ws").iterdir()) == []
    monkeypatch.setenv("WORKSHOP_WORKSPACE", str(tmp_path / "from-env"))
    assert check_workspace() == tmp_path / "from-env" and (tmp_path / "from-env").is_dir()


def test_fine_tune_flags_without_fine_tune_are_refused(tmp_path, capsys):
    assert main(["run", "--unfreeze", "0.5", "--workspace", str(tmp_path)]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "error: --unfreeze and --fine-tune-epochs only apply with --fine-tune: add --fine-tune, or drop them.")


def test_an_unknown_profile_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKSHOP_PROFILE", "bogus")
    assert main(["run", "--dataset", "sample", "--workspace", str(tmp_path)]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "error: Unknown workshop profile 'bogus' (from WORKSHOP_PROFILE); use one of: full, quick.")


def _dataset(tmp_path, kind: str) -> str:
    """A broken dataset of the given kind; returns what --dataset gets."""
    from workshop_utils.config import sample_dir

    target = tmp_path / "data"
    target.mkdir()
    if kind in {"empty.csv", "header.csv", "columns.csv"}:
        text = {"empty.csv": "", "header.csv": "image,class,subset\n", "columns.csv": "a,b\n1,2\n"}[kind]
        (target / kind).write_text(text)
        return str(target / kind)
    if kind == "one class":
        (target / "door_dent").mkdir()
        for image in sorted((sample_dir() / "image").glob("*.jpeg"))[:6]:
            (target / "door_dent" / image.name).write_bytes(image.read_bytes())
    return str(target)  # "empty folder": nothing in it


BEFORE_THE_BOTTLENECK_PASS = [  # (--dataset kind or None for the sample, more flags, words of the message)
    ("missing", [], ["Unknown dataset", "no file or folder", "exists"]),
    ("empty.csv", [], ["empty.csv: the file is empty; expected the header image,class,subset"]),
    ("header.csv", [], ["header.csv: the index has a header but no data rows; add one line per image"]),
    ("columns.csv", [], ["columns.csv: missing column(s) image, class, subset", "Make the first line"]),
    ("empty folder", [], ["no images found", "one sub-folder per class"]),
    ("one class", [], ["Only one class found", "at least 2 classes"]),
    (None, ["--arch", "ResNet9"], ["Unknown architecture 'ResNet9'; choose one of"]),
    (None, ["--arch", "InceptionV3", "--image-size", "64"],
     ["--image-size: Input size 64x64 is too small for InceptionV3: use at least 75x75"]),
    (None, ["--weights", "/nowhere/w.weights.h5"],
     ["Weights file /nowhere/w.weights.h5 for MobilenetV2 does not exist"]),
    (None, ["--image-dir", "/nowhere"], ["image files not found (looked in /nowhere;"]),
]


@pytest.mark.parametrize("dataset, flags, words", BEFORE_THE_BOTTLENECK_PASS,
                         ids=[d or " ".join(f) for d, f, _ in BEFORE_THE_BOTTLENECK_PASS])
def test_bad_data_and_settings_fail_before_the_bottleneck_pass(dataset, flags, words, tmp_path, capsys):
    where = "sample" if dataset is None else str(tmp_path / "nowhere") if dataset == "missing" else \
        _dataset(tmp_path, dataset)
    argv = ["run", "--dataset", where, "--workspace", str(tmp_path / "ws"), "--arch", "MobilenetV2",
            "--weights", "none", "--image-size", "64", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    line = _one_error_line(err)
    assert all(word in line for word in words), line
    assert "Bottlenecks" not in err


@pytest.mark.parametrize("folder", ["bottlenecks", "model"])
def test_a_file_where_the_run_writes_a_folder_fails_before_the_bottleneck_pass(folder, tmp_path, capsys):
    (tmp_path / folder).write_text("in the way")
    assert main(["run", "--dataset", "sample", "--workspace", str(tmp_path), *SMALL]) == 2
    err = capsys.readouterr().err
    line = _one_error_line(err)
    assert line.startswith(f"error: {tmp_path / folder} is a file, but the run writes a folder of that name: move the "
                           "file or choose another --workspace"), line
    assert line.endswith(", or pass --no-export.") == (folder == "model")
    assert "Bottlenecks" not in err


def test_predict_refuses_bad_paths_before_loading_the_model(tmp_path, capsys):
    from workshop_utils.config import sample_dir

    image = next((sample_dir() / "image").glob("*.jpeg"))
    model = tmp_path / "model"
    model.mkdir()  # not loaded: the image paths fail first
    assert main(["predict", str(model), str(tmp_path / "gone.jpg"), str(tmp_path), str(image)]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: 2 of the 3 image paths are not files: {tmp_path / 'gone.jpg'} (does not exist), {tmp_path} (a folder: "
        f"pass its images, e.g. {tmp_path / '*.jpg'}). Check the paths.")

    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    assert main(["predict", str(notes), str(image)]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: {notes} is a file, not a model folder: pass the folder `run` exported (workspace/model), then the "
        "images.")


def test_predict_with_a_model_folder_missing_files_is_one_line(tmp_path, capsys):
    from workshop_utils.config import sample_dir

    (tmp_path / "labels.txt").write_text("door_dent\nglass_shatter\n")
    assert main(["predict", str(tmp_path), str(next((sample_dir() / "image").glob("*.jpeg")))]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"Model folder '{tmp_path}' is missing model.keras" in line and "Re-export it" in line, line


def test_ctrl_c_is_one_line_and_exit_code_130(monkeypatch, capsys):
    """Ctrl+C is not bad input: the shell's 130 (128 + SIGINT), one line, and the SIGINT handler restored. Also
    when TensorFlow's C++ code turns the KeyboardInterrupt into another exception (seen: a bare TypeError)."""
    import signal

    from workshop_utils import config

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def interrupted_inside_tensorflow(*args, **kwargs):
        try:
            signal.raise_signal(signal.SIGINT)  # the user's Ctrl+C
        except KeyboardInterrupt:
            raise TypeError() from None  # what TF's C++ layer made of it

    for stand_in in (interrupted, interrupted_inside_tensorflow):
        monkeypatch.setattr(config, "get_profile", stand_in)
        assert main(["run", "--dataset", "sample"]) == 130, stand_in.__name__
        assert capsys.readouterr().err == "Interrupted.\n"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_unexpected_error_still_shows_its_traceback(monkeypatch):
    """Only user errors become one line: a bug is not hidden (the TypeError of the test above, without Ctrl+C)."""
    from workshop_utils import config

    def bug(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(config, "get_profile", bug)
    with pytest.raises(TypeError, match="a bug"):
        main(["run", "--dataset", "sample"])


@pytest.mark.parametrize("argv, words", [
    (["run", "--learning-rate", "inf"], ["--learning-rate: expected a finite number above 0, got inf"]),
    (["run", "--dataset", "sample", "--workspace", "{tmp}/notes.txt"], ["notes.txt is a file, not a folder"]),
    (["predict", "{tmp}", "{tmp}/gone.jpg"], ["1 of the 1 image paths is not a file", "gone.jpg (does not exist)"]),
    (["serve"], ["the following arguments are required: model_dir"]),
], ids=["inf", "workspace file", "missing image", "serve without model"])
def test_the_real_command_exits_2_with_one_line(argv, words, tmp_path):
    """``python -m workshop_utils`` as a user runs it: exit code 2 and one line, none of Python's traceback."""
    import subprocess
    import sys

    (tmp_path / "notes.txt").write_text("not a folder")
    done = subprocess.run([sys.executable, "-m", "workshop_utils", *(a.format(tmp=tmp_path) for a in argv)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert all(word in line for word in words), line
