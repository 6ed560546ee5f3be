"""The course hand-over helpers: profile-driven options, and each notebook's inputs recomputed when missing."""
import pytest

from workshop_utils import course
from workshop_utils.config import setup
from workshop_utils.trainer import ExponentialLRDecay


@pytest.fixture
def settings(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKSHOP_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("WORKSHOP_ARCH", "MobilenetV2")
    return setup(seed=0, profile="quick")


def test_options_follow_the_profile_and_the_learning_rate_reaches_the_schedule(settings):
    options = course.course_options(settings)
    assert (options.arch, options.epoch, options.workspace_path) == ("MobilenetV2", settings.profile.epochs,
                                                                     str(settings.workspace))
    faster = course.course_options(settings, learning_rate=0.05)
    assert isinstance(faster.learning_rate_scheduler, ExponentialLRDecay)
    assert faster.learning_rate == 0.05 and faster.learning_rate_scheduler.initial_learning_rate is None
    assert float(faster.learning_rate_scheduler.keras_schedule(10, faster.learning_rate)(0)) == pytest.approx(0.05)
    constant = course.course_options(settings, learning_rate=0.2, learning_rate_scheduler=None)
    assert constant.learning_rate_scheduler is None and constant.learning_rate == 0.2


def test_one_plan_for_a_profile_and_a_dataset(settings):
    plan = course.plan_run(settings.profile, "sample", workspace=settings.workspace, epoch=3, learning_rate=0.2)
    assert (plan.dataset, plan.options.epoch, plan.options.learning_rate) == ("sample", 3, 0.2)
    assert len(plan.frame) == len(plan.train) + len(plan.validation)
    assert set(plan.train["subset"]) == {"train"} and set(plan.validation["subset"]) == {"validation"}
    assert plan.options.workspace_path == str(settings.workspace)
    frame, train, validation = course.course_data(settings)
    assert list(train["image_path"]) == list(plan.train["image_path"])


def test_data_then_trained_then_exported_are_recomputed_when_missing(settings, monkeypatch, capsys):
    from dataclasses import replace

    small = replace(settings, profile=replace(settings.profile, weights=None, image_size=(64, 64), epochs=2))
    frame, train, validation = course.course_data(small)
    assert len(frame) == len(train) + len(validation) and set(train["subset"]) == {"train"}
    trained = course.load_trained(small)
    assert "No trained model in" in capsys.readouterr().out
    assert (course.trained_dir(small) / "classifier.json").is_file()
    assert trained.validation_bottlenecks is not None and len(trained.validation_bottlenecks) == len(validation)
    again = course.load_trained(small)
    assert "No trained model" not in capsys.readouterr().out and again.best_epoch == trained.best_epoch
