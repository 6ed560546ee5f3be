"""The course's shared steps: one path from a profile and a dataset to a run, and the hand-over between notebooks.

:func:`plan_run` turns a profile and a dataset into split frames and trainer options; the command line,
the notebooks and the widgets all use it.

Each step reads what an earlier notebook left in the workspace and, when it is missing, says so in one
line and recomputes it with the profile's settings: data (01), bottlenecks (02), the trained head (03),
the exported model (05).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Profile, Settings, get_profile, workspace_dir

TRAINED_DIR = "trained"
MODEL_DIR = "model"


@dataclass
class RunPlan:
    """What a run trains on and with: the dataset's images split into train/validation, and the trainer options."""

    profile: Profile
    dataset: str
    frame: pd.DataFrame  # every image of the dataset
    train: pd.DataFrame
    validation: pd.DataFrame
    options: Any  # trainer.Options


def split_dataset(frame: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation): the dataset's own T/V subsets when it has them, else ML.NET's 70/30 → 90/10 split."""
    from .data import by_subset, split

    if {"train", "validation"} <= set(frame["subset"]):
        return by_subset(frame)
    train, validation, _ = split(frame, seed=seed)
    return train, validation


def make_options(profile: Profile, workspace: str | Path, seed: int = 0, **overrides: Any):  # -> trainer.Options
    """The trainer options the profile asks for (ML.NET's defaults in ``full``), with overrides.

    ``learning_rate`` is where the rate lives: ML.NET's exponential schedule starts at it (pass
    ``learning_rate_scheduler=None`` for a constant rate). Bottleneck caches are reused when their
    fingerprint still matches.
    """
    from .trainer import EarlyStopping, ExponentialLRDecay, Options

    values: dict[str, Any] = dict(
        arch=profile.arch, epoch=profile.epochs, batch_size=profile.batch_size, learning_rate=profile.learning_rate,
        learning_rate_scheduler=ExponentialLRDecay(), early_stopping=EarlyStopping(patience=profile.patience),
        workspace_path=str(workspace), seed=seed, weights=profile.weights, image_size=profile.image_size,
        bottleneck_batch_size=profile.bottleneck_batch_size,
        reuse_train_set_bottleneck_cached_values=True, reuse_validation_set_bottleneck_cached_values=True,
    )
    values.update(overrides)
    return Options(**values)


def plan_run(profile: Profile | str | None = None, dataset: str | None = None, *, workspace: str | Path | None = None,
             data_dir: str | Path | None = None, image_dir: str | Path | None = None, seed: int = 0,
             **overrides: Any) -> RunPlan:
    """The one path from a profile and a dataset to split frames and trainer options.

    The command line, the notebooks' hand-over helpers and the widgets all come through here. The dataset
    is the profile's unless given ('sample', 'car-damage', 'flowers', 'concrete-cracks' or a folder/CSV);
    ``overrides`` are :class:`trainer.Options` fields.
    """
    from .data import load_dataset
    from .download import resolve_dataset

    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    name = dataset or profile.dataset
    frame = load_dataset(resolve_dataset(name, data_dir), image_dir=image_dir)
    train, validation = split_dataset(frame, seed)
    options = make_options(profile, workspace if workspace is not None else workspace_dir(), seed, **overrides)
    return RunPlan(profile, str(name), frame, train, validation, options)


def dataset_folder(settings: Settings) -> Path:
    """The profile's dataset folder (the bundled sample, or the real photos, downloaded on first use)."""
    from .download import resolve_dataset

    return resolve_dataset(settings.profile.dataset, settings.data_dir)


def course_data(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(all images, train, validation) of the profile's dataset (see :func:`plan_run`)."""
    plan = plan_run(settings.profile, workspace=settings.workspace, data_dir=settings.data_dir, seed=settings.seed)
    return plan.frame, plan.train, plan.validation


def course_options(settings: Settings, **overrides: Any):  # -> trainer.Options
    """The trainer options of the profile (see :func:`make_options`), with overrides."""
    return make_options(settings.profile, settings.workspace, settings.seed, **overrides)


def course_bottlenecks(settings: Settings, reuse: bool = True, metrics_callback: Any = None) -> tuple[Any, Any]:
    """(train, validation) bottlenecks from the workspace cache, computed when missing or stale."""
    from .bottleneck import compute_bottlenecks

    _, train, validation = course_data(settings)
    p = settings.profile
    common = dict(workspace=settings.workspace, reuse=reuse, batch_size=p.bottleneck_batch_size,
                  metrics_callback=metrics_callback, weights=p.weights, image_size=p.image_size)
    return (compute_bottlenecks(train, p.arch, cache_name="train", **common),
            compute_bottlenecks(validation, p.arch, cache_name="validation", **common))


def trained_dir(settings: Settings | None = None) -> Path:
    """Where 03_train saves the trained head."""
    return (settings.workspace if settings else workspace_dir()) / TRAINED_DIR


def model_dir(settings: Settings | None = None) -> Path:
    """Where 05_save_model exports the model."""
    return (settings.workspace if settings else workspace_dir()) / MODEL_DIR


def load_trained(settings: Settings):  # -> trainer.TrainedClassifier
    """The head 03_train saved, with its bottlenecks attached; trained now when it is missing."""
    from .trainer import ImageClassificationTrainer, TrainedClassifier

    folder = trained_dir(settings)
    train_b, validation_b = course_bottlenecks(settings)
    if (folder / "classifier.json").exists():
        trained = TrainedClassifier.load(folder)
    else:
        print(f"No trained model in {folder}: training one now with the profile's settings "
              "(03_train shows how).")
        trained = ImageClassificationTrainer(course_options(settings)).fit_features(train_b, validation_b)
        trained.save(folder)
    trained.train_bottlenecks, trained.validation_bottlenecks = train_b, validation_b
    return trained


def load_exported(settings: Settings):  # -> model_io.Classifier
    """The model 05_save_model exported; exported now when it is missing."""
    from .model_io import Classifier, export_model

    folder = model_dir(settings)
    if not (folder / "model.keras").exists():
        print(f"No exported model in {folder}: exporting one now (05_save_model shows how).")
        export_model(load_trained(settings), folder)
    return Classifier.load(folder)
