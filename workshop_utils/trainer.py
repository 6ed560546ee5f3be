"""The training phase, as ML.NET's trainer: SGD on a softmax head with Keras ``fit`` over cached bottlenecks.

Improvements over ML.NET, each an option on by default: the best epoch's weights are restored, the training
set is reshuffled every epoch, caches are fingerprinted, and the validation set is never silently dropped."""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from sklearn.utils.class_weight import compute_class_weight

from workshop_utils.bottleneck import Bottlenecks, compute_bottlenecks
from workshop_utils.core.errors import ConfigError, DatasetError
from workshop_utils.core.labels import LabelMap
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.data import carve_validation
from workshop_utils.head import Options, TrainedClassifier, build_head, features_dataset, history_frame
from workshop_utils.schedules import EarlyStopping, Schedule
from workshop_utils.training_metrics import TRAIN, VALIDATION, ImageClassificationMetrics, TrainMetrics

import_tensorflow()  # quiet TensorFlow's start-up before Keras loads it
import keras  # noqa: E402
from tqdm.keras import TqdmCallback  # noqa: E402  (it imports Keras)


class MLNetMetricsLogger(keras.callbacks.Callback):
    """Adds ``learning_rate`` (of the epoch's last step) to the logs; ``metrics_callback`` (e.g. ``print``) gets
    ML.NET's Train (unless ``show_train`` is False) and Validation lines, from Keras' own epoch means and steps."""

    def __init__(self, metrics_callback: Callable[[ImageClassificationMetrics], Any] | None = print,
                 show_train: bool = True, validation_batches: int = 1) -> None:
        super().__init__()
        self.metrics_callback, self.show_train = metrics_callback, show_train
        self.validation_batches = int(validation_batches)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer  # the rate of the last step: Keras' learning_rate is the next step's
        schedule = optimizer._learning_rate  # noqa: SLF001  (Keras keeps the schedule object here)
        rate = float(schedule(max(int(optimizer.iterations.numpy()) - 1, 0)) if isinstance(schedule, Schedule)
                     else optimizer.learning_rate.numpy())
        logs["learning_rate"] = rate
        if self.metrics_callback is None:
            return
        steps = int(self.params.get("steps") or 0)
        if self.show_train:
            self.metrics_callback(ImageClassificationMetrics(train=TrainMetrics(
                TRAIN, steps, epoch, float(logs.get("accuracy", math.nan)), float(logs.get("loss", math.nan)), rate)))
        if "val_accuracy" in logs:
            self.metrics_callback(ImageClassificationMetrics(train=TrainMetrics(
                VALIDATION, self.validation_batches, epoch, float(logs["val_accuracy"]), float(logs["val_loss"]))))


def class_weights(rule: str | dict[str, float] | None, y: np.ndarray, label_map: LabelMap) -> dict[int, float] | None:
    """Keras' ``class_weight`` (class index → weight) from a rule: "balanced" (scikit-learn's n / (classes ·
    n_class), over the classes present), a name → weight mapping (classes not named weigh 1), or None."""
    if rule is None:
        return None
    if rule == "balanced":
        present = np.unique(y)
        return {int(c): float(w) for c, w in zip(present, compute_class_weight("balanced", classes=present, y=y))}
    unknown = sorted(set(rule) - set(label_map.names))
    if unknown:
        raise ConfigError(f"Options.class_weight names unknown class(es) {', '.join(unknown)}; the classes are "
                           f"{', '.join(label_map.names)}.")
    return {i: float(rule.get(name, 1.0)) for i, name in enumerate(label_map.names)}


def _check_frame(df: Any, name: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise DatasetError(f"{name} must be a pandas DataFrame (from workshop_utils.data), got {type(df).__name__}.")
    missing = [c for c in ("image_path", "label") if c not in df.columns]
    if missing:
        raise DatasetError(f"{name} lacks column(s) {', '.join(missing)} (has {', '.join(map(str, df.columns))}); "
                           "load the images with workshop_utils.data.load_dataset().")
    return df


def _two_classes(labels: Any) -> None:
    classes = sorted(set(map(str, labels)))
    if len(classes) < 2:
        raise DatasetError(f"Only one class found in the training labels ({', '.join(classes)}); a classifier "
                           "needs at least 2 classes.")


def _shuffled(b: Bottlenecks, frame: pd.DataFrame, order: np.ndarray) -> Bottlenecks:
    """The bottleneck rows in the order ``order`` gives the frame's rows (skipped images drop out)."""
    position = {path: i for i, path in enumerate(b.image_paths)}
    paths = [os.path.abspath(str(p)) for p in frame["image_path"].iloc[order]]
    rows = np.asarray([position[p] for p in paths if p in position], dtype=np.int64)
    return replace(b, features=b.features[rows], labels=[b.labels[i] for i in rows],
                   image_paths=[b.image_paths[i] for i in rows])


class ImageClassificationTrainer:
    """ML.NET's two phases: :meth:`fit` computes (or reuses) bottlenecks, then trains the softmax head."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else Options()
        self.options.check()

    def _check_early_stopping(self, has_validation: bool) -> None:
        o = self.options
        if o.early_stopping is not None and not has_validation and not o.test_on_train_set:
            raise ConfigError("Early stopping is on but there is no validation set and test_on_train_set=False, so "
                              "no metric is measured to watch. Pass a validation set (or validation_set_fraction > "
                              "0), set test_on_train_set=True, or set early_stopping=None.")

    def split_validation(self, train_df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(train, validation) when ``fit`` gets no validation set. honest: a stratified, seeded carve; mlnet: a
        seeded shuffle whose first ``int(N · validation_set_fraction)`` rows validate, the rest trains in order."""
        o = self.options
        if o.protocol == "honest" and o.validation_set_fraction and len(train_df) > 1:
            return carve_validation(train_df, float(o.honest_validation_fraction), int(o.seed))
        order = np.random.default_rng([int(o.seed), 1]).permutation(len(train_df))
        shuffled = train_df.iloc[order]
        fraction = float(o.validation_set_fraction or 0.0)
        k = int(np.float32(len(train_df)) * np.float32(fraction))  # ML.NET: (int)(count * float fraction)
        return shuffled.iloc[k:], shuffled.iloc[:k]

    def fit(self, train_df: pd.DataFrame, validation_df: pd.DataFrame | None = None) -> TrainedClassifier:
        """Bottleneck phase (cached in the workspace), then the training phase; the trained head."""
        o = self.options
        train_df = _check_frame(train_df, "train_df")
        if len(train_df) == 0:
            raise DatasetError("train_df has no rows: there is nothing to train on.")
        if validation_df is not None:
            validation_df = _check_frame(validation_df, "validation_df")
        given = validation_df is not None and len(validation_df) > 0
        train_part, validation_part = (train_df, validation_df) if given else self.split_validation(train_df)
        # ML.NET's one seeded shuffle of the training rows (mlnet's split has made it), applied after the
        # bottleneck phase: the cache a notebook or an earlier run made in table order is reused.
        order = None if not given and o.protocol == "mlnet" else \
            np.random.default_rng([int(o.seed), 1]).permutation(len(train_part))
        if len(train_part) == 0:
            raise DatasetError(f"After taking validation_set_fraction={o.validation_set_fraction} of {len(train_df)} "
                               "images for validation no training image is left; add images or lower the fraction.")
        self._check_early_stopping(len(validation_part) > 0)
        _two_classes(train_part["label"])
        temporary = o.workspace_path is None
        folder = tempfile.TemporaryDirectory(prefix="workshop-trainer-", ignore_cleanup_errors=True) if temporary \
            else nullcontext(o.workspace_path)
        with folder as workspace:
            common = dict(workspace=workspace, batch_size=o.bottleneck_batch_size, metrics_callback=o.metrics_callback,
                          weights=o.weights, image_size=o.image_size, progress=o.progress,
                          mixed_precision=o.mixed_precision)
            train_b = compute_bottlenecks(train_part, o.arch, cache_name="train",
                                          reuse=o.reuse_train_set_bottleneck_cached_values, dataset_name=TRAIN,
                                          **common)
            # Validation is always computed (or reused when fingerprinted as current): ML.NET drops it silently
            # when only the train cache is reused.
            validation_b = compute_bottlenecks(
                validation_part, o.arch, cache_name="validation", reuse=o.reuse_validation_set_bottleneck_cached_values,
                dataset_name=VALIDATION, **common) if len(validation_part) else None
        for part in (train_b, validation_b):
            if temporary and part is not None:
                part.cache_dir = None  # the temporary folder is gone
        if order is not None:
            train_b = _shuffled(train_b, train_part, order)
        return self.fit_features(train_b, validation_b)

    def fit_features(self, train: Bottlenecks, validation: Bottlenecks | None = None) -> TrainedClassifier:
        """The training phase alone, on cached features in the given order (``fit`` shuffled them once, as ML.NET);
        no validation set is split off here. Fast: retrain with other options in seconds."""
        o = self.options
        o.check()
        has_validation = validation is not None and len(validation) > 0
        self._check_early_stopping(has_validation)
        label_map = LabelMap.from_labels(list(train.labels) + (list(validation.labels) if has_validation else []))
        _two_classes(train.labels)
        x = np.ascontiguousarray(train.features, dtype=np.float32)
        y = train.label_indices(label_map).astype(np.int32)
        d, classes = x.shape[1], len(label_map)
        if has_validation:
            xv = np.ascontiguousarray(validation.features, dtype=np.float32)
            yv = validation.label_indices(label_map).astype(np.int32)
            if xv.shape[1] != d:
                raise DatasetError(f"Validation features have width {xv.shape[1]} but training features {d}: they "
                                   "come from different architectures or settings; compute both with the same ones.")
        no_train_images = sorted(set(label_map.names) - set(train.labels))
        if no_train_images:
            print(f"Note: no training image for class(es) {', '.join(no_train_images)}; the head cannot learn them.")

        bs = int(o.batch_size)
        steps = max(1, math.ceil(len(x) / bs))  # the partial last batch is a step too
        if o.early_stopping is not None and not has_validation:
            print("Note: no validation set; early stopping watches the training metrics (as ML.NET does).")
        if o.restore_best_weights and not has_validation:
            print("Note: no validation set; keeping the last epoch's weights (restore_best_weights needs one).")

        keras.utils.set_random_seed(int(o.seed))
        head = build_head(d, classes, o.seed)
        schedule = o.learning_rate_scheduler
        rate = schedule.keras_schedule(steps, o.learning_rate) if schedule is not None else float(o.learning_rate)
        # One compiled call runs a whole epoch (steps_per_execution) and the validation set is one cached batch:
        # the per-step Python overhead of a plain fit() is what made it ~7x slower. XLA was slower on CPU here.
        head.compile(optimizer=keras.optimizers.SGD(rate), loss="sparse_categorical_crossentropy",
                     metrics=["accuracy"], steps_per_execution=steps, jit_compile=False)
        restore = bool(o.restore_best_weights and has_validation)
        # without early stopping, keeping the best epoch takes a stopper that never stops
        rule = o.early_stopping or (EarlyStopping(min_delta=0.0, patience=int(o.epoch) + 1) if restore else None)
        stopper = rule.keras_callback(has_validation, restore) if rule is not None else None
        callbacks = [MLNetMetricsLogger(o.metrics_callback, o.test_on_train_set), keras.callbacks.TerminateOnNaN()]
        callbacks += [stopper] if stopper is not None else []
        if o.progress and o.metrics_callback is None:  # one bar over the epochs, with their metrics
            callbacks.append(TqdmCallback(int(o.epoch), verbose=0, desc="Training"))
        validation_data = features_dataset(xv, yv, batch_size=max(len(xv), 1)) if has_validation else None
        keras_history = head.fit(features_dataset(x, y, bs, shuffle=o.shuffle_each_epoch, seed=o.seed),
                                 class_weight=class_weights(o.class_weight, y, label_map),
                                 validation_data=validation_data, epochs=int(o.epoch), callbacks=callbacks,
                                 verbose=0, shuffle=False)
        losses = np.asarray(keras_history.history.get("loss", []), dtype=np.float64)
        if not np.isfinite(losses).all():
            raise DatasetError(
                f"Training diverged: the loss became {losses[~np.isfinite(losses)][0]} at epoch "
                f"{int(np.flatnonzero(~np.isfinite(losses))[0])} with learning rate {o.learning_rate:g}. Lower the "
                "learning rate (--learning-rate, Options.learning_rate), e.g. to 0.01.")
        epochs_run = len(losses)
        kernel, bias = head.layers[-1].get_weights()
        return TrainedClassifier(
            arch=train.arch, backbone_weights=None if o.weights is None else str(o.weights),
            image_size=tuple(train.image_size), label_map=label_map, kernel=np.asarray(kernel, dtype=np.float32),
            bias=np.asarray(bias, dtype=np.float32), history=history_frame(keras_history, o.test_on_train_set),
            best_epoch=int(stopper.best_epoch if restore else epochs_run - 1),
            stopped_early=epochs_run < int(o.epoch), options=o, train_bottlenecks=train,
            validation_bottlenecks=validation if has_validation else None, weights_id=train.weights_id,
            epochs_trained=epochs_run)
