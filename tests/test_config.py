import pytest

from workshop_utils import config


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
    with pytest.raises(config.ConfigError, match=r"Unknown workshop profile 'fast'.*full, quick"):
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
