"""The softmax head: ML.NET's trainer ``Options``, the head, its data and history, and the saved classifier
(:mod:`workshop_utils.trainer` runs the training that fills these in)."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from workshop_utils.bottleneck import Bottlenecks
from workshop_utils.core.errors import ConfigError, DatasetError, ModelFolderError
from workshop_utils.core.fsutil import atomic_folder
from workshop_utils.core.labels import LabelMap
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.data import PROTOCOLS
from workshop_utils.schedules import (EarlyStopping, ExponentialLRDecay, LearningRateScheduler,
                                      early_stopping_from_dict, schedule_from_dict)
from workshop_utils.training_metrics import HISTORY_COLUMNS, TRAIN, VALIDATION, ImageClassificationMetrics

tf = import_tensorflow()
import keras  # noqa: E402

CLASSIFIER_FORMAT = 1
CLASSIFIER_FILE = "classifier.json"


@dataclass
class Options:
    """ML.NET's ``ImageClassificationTrainer.Options`` (same defaults) plus the workshop's improvements.

    The schedule starts at ``learning_rate`` unless given its own (in ML.NET the schedule's 0.01 wins). Without a
    validation set ``fit`` splits one off by ``protocol``; ``validation_set_fraction`` 0 or None: none.
    ``shuffle_each_epoch=False`` is ML.NET: one seeded shuffle, then the same order every epoch.
    """

    arch: str = "ResnetV250"
    epoch: int = 200
    batch_size: int = 10
    learning_rate: float = 0.01
    learning_rate_scheduler: LearningRateScheduler | None = field(default_factory=ExponentialLRDecay)
    early_stopping: EarlyStopping | None = field(default_factory=EarlyStopping)
    test_on_train_set: bool = True
    validation_set_fraction: float | None = 0.1
    reuse_train_set_bottleneck_cached_values: bool = False
    reuse_validation_set_bottleneck_cached_values: bool = False
    workspace_path: str | None = None  # None: a temporary folder, deleted after training (as ML.NET)
    metrics_callback: Callable[[ImageClassificationMetrics], Any] | None = None
    seed: int = 0
    restore_best_weights: bool = True
    shuffle_each_epoch: bool = True
    weights: str | None = "imagenet"  # the backbone's: "imagenet", None (random init) or a weights file
    image_size: tuple[int, int] | None = None  # None: the architecture's own input size
    bottleneck_batch_size: int = 32
    progress: bool = True  # tqdm bars (bottlenecks; epochs when there is no metrics callback)
    mixed_precision: bool = False  # bottleneck phase on a GPU only
    protocol: str = "honest"  # data.PROTOCOLS; "mlnet" splits validation off train as ML.NET does (below)
    class_weight: str | dict[str, float] | None = "balanced"
    """Loss weights: "balanced" (scikit-learn's n / (classes · n_class)), class → weight, or None (ML.NET). Macro
    accuracy weighs classes the same, so the loss should: on real photos "balanced" added 0.016 macro accuracy."""
    honest_validation_fraction: float = 0.15
    """honest protocol: the stratified, seeded share carved out to choose the epoch: 15 % of ~1,500 real photos is
    ~200 images, enough to rank epochs, and 85 % still trains."""

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the first option with an unusable value."""
        fraction = self.validation_set_fraction
        rules = [("epoch", int(self.epoch) >= 1, "at least 1"), ("batch_size", int(self.batch_size) >= 1, "at least 1"),
                 ("bottleneck_batch_size", int(self.bottleneck_batch_size) >= 1, "at least 1"),
                 ("learning_rate", float(self.learning_rate) > 0, "above 0"),
                 ("protocol", self.protocol in PROTOCOLS, f"one of {', '.join(PROTOCOLS)}"),
                 ("honest_validation_fraction", 0.0 < float(self.honest_validation_fraction) < 1.0,
                  "between 0 and 1 (e.g. 0.15 for 15 %)"),
                 ("validation_set_fraction", fraction is None or 0.0 <= float(fraction) < 1.0,
                  "in [0, 1) (e.g. 0.1 for 10 %)"),
                 ("metrics_callback", self.metrics_callback is None or callable(self.metrics_callback),
                  "callable (e.g. print)")]
        for name, valid, allowed in rules:
            if not valid:
                raise ConfigError(f"Options.{name} must be {allowed}, got {getattr(self, name)!r}.")
        check_class_weight(self.class_weight, "Options.class_weight")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, without the callback."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "metrics_callback"}
        for name in ("learning_rate_scheduler", "early_stopping"):
            out[name] = None if out[name] is None else out[name].to_dict()
        out["image_size"] = None if self.image_size is None else [int(v) for v in self.image_size]
        out["weights"] = None if self.weights is None else str(self.weights)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Options:
        """Options saved by :meth:`to_dict`; unknown keys are ignored, missing ones take the defaults."""
        known = {f.name for f in fields(cls)}
        params = {k: v for k, v in data.items() if k in known}
        if "learning_rate_scheduler" in params:
            params["learning_rate_scheduler"] = schedule_from_dict(params["learning_rate_scheduler"])
        if "early_stopping" in params:
            params["early_stopping"] = early_stopping_from_dict(params["early_stopping"])
        if params.get("image_size") is not None:
            params["image_size"] = tuple(int(v) for v in params["image_size"])
        return cls(**params)


def check_class_weight(rule: Any, name: str) -> None:
    """The class-weight rule of ``Options`` and ``FineTuneOptions``."""
    if not (rule is None or rule == "balanced" or isinstance(rule, dict)):
        raise ConfigError(f"{name}={rule!r} must be 'balanced', a mapping class -> weight or None (every image "
                          "weighs the same).")


def build_head(features: int, classes: int, seed: int = 0) -> keras.Sequential:
    """One ``Dense`` softmax layer started as ML.NET's: kernel ~ truncated normal (stddev 0.001, seeded), bias 0
    (Keras' default glorot start cost 0.01–0.02 macro accuracy on real car-damage photos)."""
    dense = keras.layers.Dense(int(classes), activation="softmax", name="softmax", bias_initializer="zeros",
                               kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.001, seed=int(seed)))
    return keras.Sequential([keras.Input((int(features),), name="bottleneck"), dense], name="head")


def features_dataset(features: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool = False,
                     seed: int = 0) -> tf.data.Dataset:
    """A ``tf.data`` pipeline over cached features: kept in memory, reshuffled each epoch if asked, batched."""
    dataset = tf.data.Dataset.from_tensor_slices((features, labels)).cache()
    if shuffle:
        dataset = dataset.shuffle(len(features), seed=int(seed), reshuffle_each_iteration=True)
    return dataset.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)


def history_frame(history: Any, test_on_train_set: bool = True) -> pd.DataFrame:
    """A Keras ``History`` (or its ``.history`` dict) as rows of :data:`HISTORY_COLUMNS`, Train then Validation."""
    logs = getattr(history, "history", history)
    rows = []
    for epoch in range(len(logs.get("loss", []))):
        rate = float(logs["learning_rate"][epoch]) if "learning_rate" in logs else math.nan
        if test_on_train_set:
            rows.append((epoch, TRAIN, float(logs["accuracy"][epoch]), float(logs["loss"][epoch]), rate))
        if "val_loss" in logs:
            rows.append((epoch, VALIDATION, float(logs["val_accuracy"][epoch]), float(logs["val_loss"][epoch]), rate))
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


@dataclass
class TrainedClassifier:
    """A trained softmax head and what it needs to be used: backbone, input size, class names, history."""

    arch: str
    backbone_weights: str | None
    image_size: tuple[int, int]
    label_map: LabelMap
    kernel: np.ndarray  # (d, C) float32
    bias: np.ndarray  # (C,) float32
    history: pd.DataFrame  # epoch, dataset ("Train"/"Validation"), accuracy, cross_entropy, learning_rate
    best_epoch: int  # the epoch (0-based) whose weights these are
    stopped_early: bool
    options: Options
    train_bottlenecks: Bottlenecks | None = field(default=None, repr=False)
    validation_bottlenecks: Bottlenecks | None = field(default=None, repr=False)
    test_bottlenecks: Bottlenecks | None = field(default=None, repr=False)  # attached by the caller, never trained on
    weights_id: str = ""  # the backbone weights' identity (Architecture.weights_id)
    epochs_trained: int = 0

    @property
    def classes(self) -> list[str]:
        return self.label_map.names

    @property
    def head(self) -> keras.Sequential:
        """A new Keras model (``Input`` → ``Dense`` softmax) holding these weights."""
        head = build_head(self.kernel.shape[0], self.kernel.shape[1])
        head.set_weights([self.kernel, self.bias])
        return head

    @classmethod
    def from_head(cls, head: keras.Model, label_map: LabelMap, train: Bottlenecks,
                  validation: Bottlenecks | None = None, history: Any = None, options: Options | None = None,
                  best_epoch: int | None = None) -> TrainedClassifier:
        """Wrap a head trained in a notebook cell (last layer: the ``Dense`` softmax) for saving and export.
        ``history``: Keras' ``History`` or a :func:`history_frame`; ``best_epoch`` default: the last epoch."""
        dense = head.layers[-1]
        if not isinstance(dense, keras.layers.Dense) or len(dense.get_weights()) != 2:
            raise DatasetError(
                f"The head's last layer is {type(dense).__name__}, not a Dense layer with a bias; build the head "
                "as keras.Sequential([keras.Input((features,)), keras.layers.Dense(classes, activation='softmax')]).")
        kernel, bias = (np.asarray(w, dtype=np.float32) for w in dense.get_weights())
        if kernel.shape != (train.features.shape[1], len(label_map)):
            raise DatasetError(
                f"The head maps {kernel.shape[0]} features to {kernel.shape[1]} classes, but the bottlenecks have "
                f"{train.features.shape[1]} features and the label map {len(label_map)} classes.")
        frame = history if isinstance(history, pd.DataFrame) else (
            history_frame(history) if history is not None else pd.DataFrame(columns=HISTORY_COLUMNS))
        epochs = int(frame["epoch"].max()) + 1 if len(frame) else 0
        return cls(arch=train.arch, backbone_weights=None if options is None or options.weights is None
                   else str(options.weights), image_size=tuple(train.image_size), label_map=label_map,
                   kernel=kernel, bias=bias, history=frame,
                   best_epoch=int(best_epoch) if best_epoch is not None else max(epochs - 1, 0),
                   stopped_early=bool(options is not None and epochs < int(options.epoch)),
                   options=options if options is not None else Options(arch=train.arch), train_bottlenecks=train,
                   validation_bottlenecks=validation, weights_id=train.weights_id, epochs_trained=epochs)

    def _matrix(self, features: Any) -> np.ndarray:
        x = np.atleast_2d(np.asarray(features.features if isinstance(features, Bottlenecks) else features, np.float32))
        if x.ndim != 2 or x.shape[1] != self.kernel.shape[0]:
            raise DatasetError(
                f"Features of shape {x.shape} do not fit this head, which expects (N, {self.kernel.shape[0]}) "
                f"bottlenecks of {self.arch} at {self.image_size[0]}x{self.image_size[1]}; compute them with "
                "compute_bottlenecks() using the same architecture, weights and image size.")
        return x

    def predict_proba(self, features: np.ndarray | Bottlenecks) -> np.ndarray:
        """Softmax probabilities (N, C) for bottleneck features (or a :class:`Bottlenecks`)."""
        return softmax((self._matrix(features) @ self.kernel + self.bias).astype(np.float64), axis=1).astype(np.float32)

    def predict(self, features: np.ndarray | Bottlenecks) -> list[str]:
        """The most probable class name of each row."""
        return [self.label_map.name(i) for i in np.argmax(self.predict_proba(features), axis=1)]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write head.npz, labels.txt, history.csv and classifier.json into ``directory`` (atomically)."""
        directory = Path(directory).expanduser()
        meta = {"format": CLASSIFIER_FORMAT, "arch": self.arch,
                "backbone_weights": None if self.backbone_weights is None else str(self.backbone_weights),
                "weights_id": self.weights_id, "image_size": [int(v) for v in self.image_size],
                "best_epoch": int(self.best_epoch), "stopped_early": bool(self.stopped_early),
                "epochs_trained": int(self.epochs_trained), "classes": self.label_map.names,
                "options": self.options.to_dict()}
        with atomic_folder(directory) as tmp:
            np.savez(tmp / "head.npz", kernel=self.kernel.astype(np.float32), bias=self.bias.astype(np.float32))
            self.label_map.save(tmp / "labels.txt")
            self.history.to_csv(tmp / "history.csv", index=False)
            (tmp / CLASSIFIER_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TrainedClassifier:
        """Read a folder written by :meth:`save` (the bottlenecks are not saved, so they are None)."""
        directory = Path(directory).expanduser()
        needed = (CLASSIFIER_FILE, "head.npz", "labels.txt", "history.csv")
        missing = [name for name in needed if not (directory / name).is_file()]
        if missing:
            raise ModelFolderError(f"{directory} is not a saved classifier: missing {', '.join(missing)}. "
                                   "Save one with TrainedClassifier.save(folder).")
        try:
            meta = json.loads((directory / CLASSIFIER_FILE).read_text(encoding="utf-8"))
        except ValueError as error:
            raise ModelFolderError(f"{directory / CLASSIFIER_FILE} is not valid JSON ({error}); save it again.") \
                from None
        if meta.get("format") != CLASSIFIER_FORMAT:
            raise ModelFolderError(f"{directory / CLASSIFIER_FILE} has format {meta.get('format')!r}; this version "
                                   f"reads {CLASSIFIER_FORMAT}. Retrain and save with this version.")
        with np.load(directory / "head.npz", allow_pickle=False) as head:
            kernel, bias = head["kernel"].astype(np.float32), head["bias"].astype(np.float32)
        label_map = LabelMap.load(directory / "labels.txt")
        if kernel.shape[1] != len(label_map) or bias.shape != (len(label_map),):
            raise ModelFolderError(f"{directory}: head.npz has {kernel.shape[1]} outputs but labels.txt lists "
                                   f"{len(label_map)} classes; the files come from different models. Save the "
                                   "classifier again.")
        return cls(arch=meta["arch"], backbone_weights=meta.get("backbone_weights"),
                   image_size=tuple(int(v) for v in meta["image_size"]), label_map=label_map, kernel=kernel,
                   bias=bias, history=pd.read_csv(directory / "history.csv"), best_epoch=int(meta["best_epoch"]),
                   stopped_early=bool(meta["stopped_early"]), options=Options.from_dict(meta.get("options", {})),
                   weights_id=meta.get("weights_id", ""), epochs_trained=int(meta.get("epochs_trained", 0)))
