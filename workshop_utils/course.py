"""The course's shared steps: :func:`plan_run` (profile + dataset -> sets and trainer options) and the hand-over
between notebooks: each reads what an earlier one left in the workspace, and recomputes it when missing."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from workshop_utils.bottleneck import compute_bottlenecks
from workshop_utils.config import Profile, Settings, get_profile, workspace_dir
from workshop_utils.core.errors import DatasetError
from workshop_utils.data import PROTOCOLS, SET_ROLES, by_subset, carve_validation, load_dataset, split
from workshop_utils.download import resolve_dataset
from workshop_utils.export.writer import export_model
from workshop_utils.head import Options, TrainedClassifier
from workshop_utils.quality import DatasetCheck, check_dataset
from workshop_utils.schedules import EarlyStopping, ExponentialLRDecay
from workshop_utils.scoring import Classifier
from workshop_utils.trainer import ImageClassificationTrainer

TRAINED_DIR = "trained"
MODEL_DIR = "model"
FINE_TUNED_DIR = "model_fine_tuned"  # where 07_fine_tune exports


@dataclass
class RunPlan:
    """A run's images in three roles (train fits, validation chooses, test is reported), the check and options."""

    profile: Profile
    dataset: str
    frame: pd.DataFrame  # every image of the dataset, as loaded
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame  # empty under mlnet when the dataset has only T/V
    options: Options
    check: DatasetCheck
    protocol: str = "honest"

    @property
    def reported(self) -> tuple[str, pd.DataFrame]:  # (set name, images) a run reports: test, or validation (mlnet)
        return ("test", self.test) if self.protocol == "honest" else ("validation", self.validation)


def split_dataset(frame: pd.DataFrame, seed: int = 0, protocol: str = "honest",
                  validation_fraction: float = 0.15) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, validation, test) by the protocol. honest: the dataset's own three subsets; with only T/V a stratified
    ``validation_fraction`` of T chooses and V is the test set; class folders 70/15/15. mlnet: T/V as they are (V
    chooses and is reported), class folders 70/30 -> 90/10 as ML.NET's tutorial does."""
    if protocol not in PROTOCOLS:
        raise DatasetError(f"Unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}.")
    subsets = set(frame["subset"])
    if protocol == "mlnet":
        if {"train", "validation"} <= subsets:
            train, validation = by_subset(frame)
            return train, validation, frame[frame["subset"] == "test"].reset_index(drop=True)
        return split(frame, seed=seed)
    if "train" in subsets and subsets & {"validation", "test"}:
        train, validation, test = (frame[frame["subset"] == name].reset_index(drop=True) for name in SET_ROLES)
        if test.empty:  # the dataset's validation images are reported, never chosen on
            test, validation = validation.assign(subset="test"), validation.iloc[:0]
        if validation.empty:
            train, validation = carve_validation(train, validation_fraction, seed)
        return train, validation, test
    return split(frame, test_fraction=0.3, validation_fraction=0.5, seed=seed)


def make_options(profile: Profile, workspace: str | Path, seed: int = 0, **overrides: Any) -> Options:
    """The profile's trainer options (ML.NET's in ``full``) with overrides; ML.NET's exponential schedule starts at
    ``learning_rate`` (``learning_rate_scheduler=None``: constant); caches are reused while still valid."""
    values: dict[str, Any] = dict(
        arch=profile.arch, epoch=profile.epochs, batch_size=profile.batch_size, learning_rate=profile.learning_rate,
        learning_rate_scheduler=ExponentialLRDecay(), early_stopping=EarlyStopping(patience=profile.patience),
        workspace_path=str(workspace), seed=seed, weights=profile.weights, image_size=profile.image_size,
        bottleneck_batch_size=profile.bottleneck_batch_size,
        reuse_train_set_bottleneck_cached_values=True, reuse_validation_set_bottleneck_cached_values=True)
    if overrides.get("protocol") == "mlnet":  # ML.NET's head: every image weighs the same
        values["class_weight"] = None
    values.update(overrides)
    return Options(**values)


def plan_run(profile: Profile | str | None = None, dataset: str | None = None, *, workspace: str | Path | None = None,
             data_dir: str | Path | None = None, image_dir: str | Path | None = None, seed: int = 0,
             protocol: str | None = None, **overrides: Any) -> RunPlan:
    """The one path from a profile and a dataset (both default to the profile's) to the data check (writes
    ``duplicates.csv``; honest leaves copies out, mlnet only reports), the three sets and :class:`Options`."""
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    protocol = protocol or profile.protocol
    if protocol not in PROTOCOLS:
        raise DatasetError(f"Unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}.")
    workspace = Path(workspace) if workspace is not None else workspace_dir()
    name = dataset or profile.dataset
    frame = load_dataset(resolve_dataset(name, data_dir), image_dir=image_dir)
    check = check_dataset(frame, drop=protocol == "honest", workspace=workspace)
    options = make_options(profile, workspace, seed, protocol=protocol, **overrides)
    train, validation, test = split_dataset(check.frame, seed, protocol, options.honest_validation_fraction)
    return RunPlan(profile, str(name), frame, train, validation, test, options, check, protocol)


def dataset_folder(settings: Settings) -> Path:
    """The profile's dataset folder (the bundled sample, or the real photos, downloaded on first use)."""
    return resolve_dataset(settings.profile.dataset, settings.data_dir)


def course_data(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(all images, train, validation, test) of the profile's dataset."""
    plan = plan_run(settings.profile, workspace=settings.workspace, data_dir=settings.data_dir, seed=settings.seed)
    return plan.frame, plan.train, plan.validation, plan.test


def course_options(settings: Settings, **overrides: Any) -> Options:
    return make_options(settings.profile, settings.workspace, settings.seed, **overrides)


def course_bottlenecks(settings: Settings, reuse: bool = True, metrics_callback: Any = None) -> tuple[Any, Any, Any]:
    """(train, validation, test) bottlenecks, cached in the workspace; test is None without a test set (mlnet, T/V)."""
    _, train, validation, test = course_data(settings)
    p = settings.profile
    common = dict(workspace=settings.workspace, reuse=reuse, batch_size=p.bottleneck_batch_size,
                  metrics_callback=metrics_callback, weights=p.weights, image_size=p.image_size)
    return tuple(compute_bottlenecks(frame, p.arch, cache_name=name, dataset_name=name.capitalize(), **common)
                 if len(frame) else None
                 for name, frame in (("train", train), ("validation", validation), ("test", test)))


def attach_test_bottlenecks(plan: RunPlan, trained: Any, reuse: bool = True) -> Any:
    """The test set's bottlenecks with the head's settings, attached to ``trained``; None without test images."""
    if plan.test.empty:
        return None
    o = trained.options
    trained.test_bottlenecks = compute_bottlenecks(
        plan.test, trained.arch, workspace=o.workspace_path, cache_name="test", reuse=reuse, dataset_name="Test",
        batch_size=o.bottleneck_batch_size, metrics_callback=o.metrics_callback, weights=o.weights,
        image_size=trained.image_size, progress=o.progress, mixed_precision=o.mixed_precision)
    return trained.test_bottlenecks


def reported_bottlenecks(settings: Settings, trained: Any) -> tuple[str, Any]:
    """(set name, bottlenecks) whose metrics the course reports: test (honest) or validation (mlnet)."""
    mlnet = settings.profile.protocol == "mlnet"
    return ("validation", trained.validation_bottlenecks) if mlnet else ("test", trained.test_bottlenecks)


def trained_dir(settings: Settings | None = None) -> Path:  # where 03_train saves the trained head
    return (settings.workspace if settings else workspace_dir()) / TRAINED_DIR


def model_dir(settings: Settings | None = None) -> Path:  # where 05_save_model exports the model
    return (settings.workspace if settings else workspace_dir()) / MODEL_DIR


def load_trained(settings: Settings) -> TrainedClassifier:
    """The head 03_train saved, with its bottlenecks attached; trained now when it is missing."""
    folder = trained_dir(settings)
    train_b, validation_b, test_b = course_bottlenecks(settings)
    if (folder / "classifier.json").exists():
        trained = TrainedClassifier.load(folder)
    else:
        print(f"No trained model in {folder}: training one now with the profile's settings (03_train shows how).")
        trained = ImageClassificationTrainer(course_options(settings)).fit_features(train_b, validation_b)
        trained.save(folder)
    trained.train_bottlenecks, trained.validation_bottlenecks, trained.test_bottlenecks = train_b, validation_b, test_b
    return trained


def load_exported(settings: Settings, prefer_fine_tuned: bool = False) -> Classifier:
    """05_save_model's export (made now when missing) or, ``prefer_fine_tuned``, 07's when it exists; says which."""
    fine_tuned = settings.workspace / FINE_TUNED_DIR
    if prefer_fine_tuned:
        if (fine_tuned / "model.keras").exists():
            print(f"Using the fine-tuned model of 07_fine_tune: {fine_tuned}")
            return Classifier.load(fine_tuned)
        print(f"No fine-tuned model in {fine_tuned} (07_fine_tune makes one): using the head-only model of 05.")
    folder = model_dir(settings)
    if not (folder / "model.keras").exists():
        print(f"No exported model in {folder}: exporting one now (05_save_model shows how).")
        export_model(load_trained(settings), folder)
    return Classifier.load(folder)
