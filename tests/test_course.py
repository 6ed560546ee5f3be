"""The course hand-over helpers: profile-driven options, and each notebook's inputs recomputed when missing."""
import math

import pytest

from workshop_utils import course
from workshop_utils import data
from workshop_utils.config import setup
from workshop_utils.core.errors import DatasetError
from workshop_utils.schedules import ExponentialLRDecay


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
    assert (plan.protocol, plan.options.protocol) == ("honest", "honest")
    assert len(plan.frame) == len(plan.train) + len(plan.validation) + len(plan.test)
    assert [set(part["subset"]) for part in (plan.train, plan.validation, plan.test)] == [
        {"train"}, {"validation"}, {"test"}]
    assert plan.options.workspace_path == str(settings.workspace)
    assert (settings.workspace / "duplicates.csv").is_file()  # the data check ran and wrote its list
    frame, train, validation, test = course.course_data(settings)
    assert list(train["image_path"]) == list(plan.train["image_path"])
    assert list(test["image_path"]) == list(plan.test["image_path"])


def test_honest_protocol_carves_validation_from_train_and_reports_the_index_validation_set(settings):
    """T/V only (the lab's index.csv and the sample): a stratified 15 % of T chooses, V is the test set."""
    plan = course.plan_run(settings.profile, "sample", workspace=settings.workspace)
    index_train, index_validation = data.by_subset(plan.frame)
    assert set(plan.test["image_path"]) == set(index_validation["image_path"])
    assert set(plan.train["image_path"]) | set(plan.validation["image_path"]) == set(index_train["image_path"])
    assert not set(plan.train["image_path"]) & set(plan.validation["image_path"])
    assert len(plan.validation) == math.ceil(0.15 * len(index_train))
    # stratified: every class of T is in the carved part, in about its share
    share = plan.validation["label"].value_counts() / index_train["label"].value_counts()
    assert share.notna().all() and share.between(0.05, 0.3).all(), share
    assert plan.reported[0] == "test" and plan.reported[1] is plan.test


def test_mlnet_protocol_keeps_the_labs_split_and_reports_validation(settings):
    plan = course.plan_run(settings.profile, "sample", workspace=settings.workspace, protocol="mlnet")
    index_train, index_validation = data.by_subset(plan.frame)
    assert list(plan.train["image_path"]) == list(index_train["image_path"])
    assert list(plan.validation["image_path"]) == list(index_validation["image_path"])
    assert plan.test.empty and plan.reported[0] == "validation" and plan.options.protocol == "mlnet"


def test_folders_split_70_15_15_under_honest_and_as_the_mlnet_tutorial_otherwise(settings, tmp_path):
    frame = data.load_dataset("data/sample").assign(subset="")
    train, validation, test = course.split_dataset(frame, protocol="honest")
    assert (len(train), len(validation), len(test)) == (168, 36, 36)
    train, validation, test = course.split_dataset(frame, protocol="mlnet")
    assert (len(train), len(validation), len(test)) == (168, 64, 8)


def test_a_dataset_with_its_own_test_subset_uses_it(settings):
    frame = data.load_dataset("data/sample")
    frame.loc[frame.index[::10], "subset"] = "test"
    train, validation, test = course.split_dataset(frame, protocol="honest")
    assert list(test["image_path"]) == list(frame.loc[frame["subset"] == "test", "image_path"])
    assert set(validation["subset"]) == {"validation"} and len(train) == (frame["subset"] == "train").sum()


def test_unknown_protocol_is_named(settings):
    with pytest.raises(DatasetError, match=r"Unknown protocol 'fair'; use one of honest, mlnet"):
        course.plan_run(settings.profile, "sample", workspace=settings.workspace, protocol="fair")


def test_data_then_trained_then_exported_are_recomputed_when_missing(settings, monkeypatch, capsys):
    from dataclasses import replace

    small = replace(settings, profile=replace(settings.profile, weights=None, image_size=(64, 64), epochs=2))
    frame, train, validation, test = course.course_data(small)
    assert len(frame) == len(train) + len(validation) + len(test) and set(train["subset"]) == {"train"}
    trained = course.load_trained(small)
    assert "No trained model in" in capsys.readouterr().out
    assert (course.trained_dir(small) / "classifier.json").is_file()
    assert trained.validation_bottlenecks is not None and len(trained.validation_bottlenecks) == len(validation)
    assert trained.test_bottlenecks is not None and len(trained.test_bottlenecks) == len(test)
    assert course.reported_bottlenecks(small, trained) == ("test", trained.test_bottlenecks)
    again = course.load_trained(small)
    assert "No trained model" not in capsys.readouterr().out and again.best_epoch == trained.best_epoch
