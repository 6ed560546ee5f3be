"""The course's shared steps, so every notebook runs on its own once the earlier ones have run.

Each step reads what an earlier notebook left in the workspace and, when it is missing, says so in one
line and recomputes it with the profile's settings: data (01), bottlenecks (02), the trained head (03),
the exported model (05).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .config import Settings, workspace_dir

TRAINED_DIR = "trained"
MODEL_DIR = "model"


def dataset_folder(settings: Settings) -> Path:
    """The profile's dataset folder (the bundled sample, or the real photos, downloaded on first use)."""
    from .download import resolve_dataset

    return resolve_dataset(settings.profile.dataset, settings.data_dir)


def course_data(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(all images, train, validation) of the profile's dataset, using its T/V subsets when it has them."""
    from .data import by_subset, load_dataset, split

    frame = load_dataset(dataset_folder(settings))
    if {"train", "validation"} <= set(frame["subset"]):
        train, validation = by_subset(frame)
    else:
        train, validation, _ = split(frame, seed=settings.seed)
    return frame, train, validation


def course_options(settings: Settings, **overrides: Any):  # -> trainer.Options
    """The trainer options the profile asks for (ML.NET's defaults in ``full``), with overrides.

    ``learning_rate`` sets the initial rate of ML.NET's exponential schedule (pass
    ``learning_rate_scheduler=None`` too for a constant rate).
    """
    from .trainer import EarlyStopping, ExponentialLRDecay, Options

    p = settings.profile
    rate = float(overrides.pop("learning_rate", p.learning_rate))
    values: dict[str, Any] = dict(
        arch=p.arch, epoch=p.epochs, batch_size=p.batch_size, learning_rate=rate,
        learning_rate_scheduler=ExponentialLRDecay(learning_rate=rate),  # ML.NET's schedule from this rate
        early_stopping=EarlyStopping(patience=p.patience), workspace_path=str(settings.workspace),
        seed=settings.seed, weights=p.weights, image_size=p.image_size, bottleneck_batch_size=p.bottleneck_batch_size,
        reuse_train_set_bottleneck_cached_values=True, reuse_validation_set_bottleneck_cached_values=True,
    )
    values.update(overrides)
    return Options(**values)


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
