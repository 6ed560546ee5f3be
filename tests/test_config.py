import json

import pytest

from workshop_utils import config
from workshop_utils.core.errors import ConfigError
from workshop_utils.core.runtime import import_tensorflow


def test_profiles_default_to_full_and_read_the_environment(monkeypatch):
    monkeypatch.delenv("WORKSHOP_PROFILE", raising=False)
    monkeypatch.delenv("WORKSHOP_ARCH", raising=False)
    assert config.get_profile().name == "full"
    assert config.get_profile().arch == "ResnetV250"
    monkeypatch.setenv("WORKSHOP_PROFILE", "Quick")
    quick = config.get_profile()
    assert (quick.name, quick.dataset, quick.arch) == ("quick", "sample", "EfficientNetLite0")
    monkeypatch.setenv("WORKSHOP_ARCH", "MobilenetV2")
    assert config.get_profile().arch == "MobilenetV2"


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORKSHOP_PROFILE", "fast")
    with pytest.raises(ConfigError, match=r"Unknown workshop profile 'fast'.*full, quick"):
        config.get_profile()


def test_paths_follow_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKSHOP_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("WORKSHOP_WORKSPACE", str(tmp_path / "w"))
    assert config.data_dir() == tmp_path / "d"
    assert config.workspace_dir() == tmp_path / "w" and (tmp_path / "w").is_dir()
    assert config.sample_dir() == config.REPO_ROOT / "data" / "sample"


def test_environment_report_and_setup(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKSHOP_WORKSPACE", str(tmp_path))
    settings = config.setup(seed=3, profile="quick")
    env = settings.environment
    assert env["tensorflow"].startswith("2.") and env["keras"].startswith("3.")
    assert isinstance(env["gpus"], list) and env["colab"] is False
    text = str(settings)
    assert "Profile   : quick" in text and "TensorFlow" in text and "GPU" in text


def test_the_notebook_setting_wins_then_the_environment_then_full(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKSHOP_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("WORKSHOP_ARCH", raising=False)
    monkeypatch.setenv("WORKSHOP_PROFILE", "quick")
    from_cell = config.setup(profile="full")
    assert (from_cell.profile.name, from_cell.profile_source) == ("full", "PROFILE")
    assert "Profile   : full (dataset car-damage, arch ResnetV250, 200 epochs; from PROFILE)" in str(from_cell)
    from_env = config.setup(profile=None)
    assert (from_env.profile.name, from_env.profile_source) == ("quick", "$WORKSHOP_PROFILE")
    monkeypatch.delenv("WORKSHOP_PROFILE")
    default = config.setup()
    assert (default.profile.name, default.profile_source) == ("full", "default")


def test_a_bad_profile_in_the_cell_names_the_cell(monkeypatch):
    with pytest.raises(ConfigError, match=r"Unknown workshop profile 'fast' \(from PROFILE in the notebook's "
                       r"first cell\); use one of: full, quick\."):
        config.get_profile("fast")


def test_setup_records_the_profile_and_a_later_notebook_notes_another_one(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORKSHOP_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("WORKSHOP_ARCH", raising=False)
    config.setup(profile="quick")
    record = json.loads((tmp_path / "profile.json").read_text(encoding="utf-8"))
    assert record == {"name": "quick", "dataset": "sample", "arch": "EfficientNetLite0", "set_by": "PROFILE"}
    assert capsys.readouterr().out == "", "the first notebook has nothing to compare with"

    config.setup(profile="quick")
    assert capsys.readouterr().out == "", "the same profile again: nothing to say"

    config.setup(profile="full")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(
        "Note: the workspace was last used with the profile 'quick' (EfficientNetLite0 on sample), this notebook "
        "runs 'full' (ResnetV250 on car-damage): set the same PROFILE in every notebook's first cell"), out
    assert json.loads((tmp_path / "profile.json").read_text(encoding="utf-8"))["name"] == "full"

    monkeypatch.setenv("WORKSHOP_ARCH", "MobilenetV2")  # the same profile name with another backbone is noted too
    config.setup(profile="full")
    assert "'full' (ResnetV250 on car-damage), this notebook runs 'full' (MobilenetV2 on car-damage)" in \
        capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["profile.json"], "no temporary files left behind"


def test_an_unreadable_profile_record_is_reported_and_replaced(tmp_path):
    (tmp_path / "profile.json").write_text("{not json", encoding="utf-8")
    note = config.record_profile(tmp_path, config.get_profile("quick"), "PROFILE")
    assert note.startswith(f"Note: {tmp_path / 'profile.json'} was unreadable (")
    assert note.endswith("it now records the profile 'quick' (EfficientNetLite0 on sample).")
    assert json.loads((tmp_path / "profile.json").read_text(encoding="utf-8"))["name"] == "quick"


def test_setup_lets_gpu_memory_grow_before_any_op_runs(monkeypatch, tmp_path, capsys):
    """With GPUs (faked here: CI has none), setup turns memory growth on for each, so several notebook kernels
    share one GPU; growth already on is left alone, and a GPU initialised too early is reported, not hidden."""
    tf = import_tensorflow()
    monkeypatch.setenv("WORKSHOP_WORKSPACE", str(tmp_path))
    gpus = [tf.config.PhysicalDevice(name=f"/physical_device:GPU:{i}", device_type="GPU") for i in range(3)]
    growth = {"/physical_device:GPU:0": False, "/physical_device:GPU:1": True, "/physical_device:GPU:2": False}
    calls = []

    def set_memory_growth(device, enable):
        calls.append((device.name[-5:], enable))
        if device.name.endswith("GPU:2"):
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        growth[device.name] = enable

    real_list = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: gpus if kind == "GPU" else real_list(kind))
    monkeypatch.setattr(tf.config.experimental, "get_memory_growth", lambda device: growth[device.name])
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", set_memory_growth)
    monkeypatch.setattr(config, "environment_report", lambda: {"gpus": [d.name for d in gpus]})  # would query fakes
    config.setup(profile="quick")
    assert calls == [("GPU:0", True), ("GPU:2", True)] and growth["/physical_device:GPU:0"] is True
    out = capsys.readouterr().out
    assert ("Note: GPU memory growth could not be turned on for /physical_device:GPU:2 (Physical devices cannot be "
            "modified after being initialized); this kernel holds the whole GPU. Restart the kernel and run setup() "
            "first") in out


def test_setup_on_a_cpu_touches_no_device(monkeypatch, tmp_path):
    tf = import_tensorflow()
    monkeypatch.setenv("WORKSHOP_WORKSPACE", str(tmp_path))
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present: the test above covers it")
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth",
                        lambda *a: pytest.fail("set_memory_growth called without a GPU"))
    assert config.setup(profile="quick").environment["gpus"] == []
