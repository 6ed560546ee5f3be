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
