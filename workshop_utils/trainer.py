"""The training phase: a softmax layer trained on cached bottleneck features, as ML.NET's ImageClassificationTrainer.

ML.NET's semantics are kept where a learner compares with the .NET lab: ``W ~ truncated_normal(0.001)``,
``b = 0``, plain SGD on the batch-mean sparse softmax cross-entropy, the learning-rate schedules, the
epoch metrics (means of per-batch means) and the metric lines. Improvements, each an option that is on
by default: the best epoch's weights are restored, the training set is reshuffled every epoch, caches are
fingerprinted, and the validation set is never silently dropped. Each epoch runs as one compiled
``tf.function`` (a ``tf.while_loop`` over the batches, XLA when available), not a Python step per batch.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .bottleneck import Bottlenecks, atomic_folder, compute_bottlenecks
from .config import import_tensorflow
from .data import LabelMap
from .schedules import (  # noqa: F401  (re-exported: the trainer is where learners look for them)
    EarlyStopping,
    ExponentialLRDecay,
    LearningRateScheduler,
    PolynomialLRDecay,
    ScheduleError,
    early_stopping_from_dict,
    schedule_from_dict,
)
from .training_metrics import (  # noqa: F401  (re-exported)
    TRAIN,
    VALIDATION,
    BottleneckMetrics,
    ImageClassificationMetrics,
    TrainMetrics,
    format_dotnet_float,
)

tf = import_tensorflow()

CLASSIFIER_FORMAT = 1
CLASSIFIER_FILE = "classifier.json"
HISTORY_COLUMNS = ["epoch", "dataset", "accuracy", "cross_entropy", "learning_rate"]


class TrainerError(ValueError):
    """Base class for training-phase errors the user can fix."""


class OptionsError(TrainerError):
    """A combination of trainer options that cannot work (e.g. early stopping with nothing to watch)."""


class TrainingDataError(TrainerError):
    """The training or validation data cannot be used (missing columns, one class, mismatched features)."""


class ClassifierFileError(TrainerError):
    """A saved classifier folder is missing files or was written by an incompatible version."""


@dataclass
class Options:
    """ML.NET's ``ImageClassificationTrainer.Options`` (same defaults) plus the workshop's improvements.

    ``learning_rate`` is used only when ``learning_rate_scheduler`` is None (a schedule carries its own
    initial rate). ``validation_set_fraction`` splits a validation set off the training images when none
    is given (0 or None: no validation). Improvements over ML.NET: ``restore_best_weights`` (keep the
    epoch with the best validation metric, not the last), ``shuffle_each_epoch`` (False = ML.NET: one
    seeded shuffle, then the same order every epoch).
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

    def check(self) -> None:
        """Raise :class:`OptionsError` naming the first option with an unusable value."""
        if int(self.epoch) < 1:
            raise OptionsError(f"Options.epoch must be at least 1, got {self.epoch}.")
        if int(self.batch_size) < 1:
            raise OptionsError(f"Options.batch_size must be at least 1, got {self.batch_size}.")
        if int(self.bottleneck_batch_size) < 1:
            raise OptionsError(f"Options.bottleneck_batch_size must be at least 1, got {self.bottleneck_batch_size}.")
        if self.learning_rate_scheduler is None and not float(self.learning_rate) > 0:
            raise OptionsError(f"Options.learning_rate must be above 0, got {self.learning_rate}.")
        fraction = self.validation_set_fraction
        if fraction is not None and not 0.0 <= float(fraction) < 1.0:
            raise OptionsError(
                f"Options.validation_set_fraction must be in [0, 1) (e.g. 0.1 for 10 %), got {fraction}."
            )
        if self.metrics_callback is not None and not callable(self.metrics_callback):
            raise OptionsError("Options.metrics_callback must be callable (e.g. print), got "
                               f"{type(self.metrics_callback).__name__}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (the callback is left out) for saving with a trained classifier."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "metrics_callback":
                continue
            if f.name in ("learning_rate_scheduler", "early_stopping"):
                value = None if value is None else value.to_dict()
            elif f.name == "image_size" and value is not None:
                value = [int(v) for v in value]
            elif f.name == "weights" and value is not None:
                value = str(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Options:
        """Options saved by :meth:`to_dict` (unknown keys are ignored, missing ones take the defaults)."""
        known = {f.name for f in fields(cls)}
        params = {k: v for k, v in data.items() if k in known}
        if "learning_rate_scheduler" in params:
            params["learning_rate_scheduler"] = schedule_from_dict(params["learning_rate_scheduler"])
        if "early_stopping" in params:
            params["early_stopping"] = early_stopping_from_dict(params["early_stopping"])
        if params.get("image_size") is not None:
            params["image_size"] = tuple(int(v) for v in params["image_size"])
        return cls(**params)


# ---------------------------------------------------------------------------------------------------
# The compiled head: one call trains one epoch.

_SIGNATURE = [
    tf.TensorSpec((None, None), tf.float32),  # kernel (d, C)
    tf.TensorSpec((None,), tf.float32),  # bias (C,)
    tf.TensorSpec((None, None), tf.float32),  # features (N, d)
    tf.TensorSpec((None,), tf.int32),  # labels (N,)
    tf.TensorSpec((None, None), tf.int32),  # row order, (steps, batch_size), padded
    tf.TensorSpec((None, None), tf.float32),  # 1 for real rows, 0 for padding, (steps, batch_size)
    tf.TensorSpec((None,), tf.float32),  # learning rate of each step
]


def _train_epoch(kernel, bias, x, y, order, mask, rates):  # noqa: ANN001, ANN202  (graph function)
    """SGD over all batches of one epoch; returns (kernel, bias, correct count per batch, loss sum per batch).

    A final partial batch is padded to full size with mask 0, so the loop has static shapes (XLA) while
    its loss and gradient are the partial batch's own mean. The per-batch means are taken outside (in
    float32, as ML.NET does) because XLA may divide by multiplying with a reciprocal.
    """
    steps = tf.shape(rates)[0]

    def body(step, k, b, hits_out, loss_out):
        rows, weight = order[step], mask[step]
        xb, yb = tf.gather(x, rows), tf.gather(y, rows)
        with tf.GradientTape() as tape:
            tape.watch([k, b])
            logits = tf.matmul(xb, k) + b
            loss_sum = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits) * weight)
            loss = loss_sum / tf.reduce_sum(weight)
        grad_k, grad_b = tape.gradient(loss, [k, b])
        hits = tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), yb), tf.float32)
        rate = rates[step]
        return (step + 1, k - rate * grad_k, b - rate * grad_b,
                hits_out.write(step, tf.reduce_sum(hits * weight)), loss_out.write(step, loss_sum))

    _, kernel, bias, hits, losses = tf.while_loop(
        lambda step, *_: step < steps,
        body,
        (tf.constant(0), kernel, bias, tf.TensorArray(tf.float32, size=steps), tf.TensorArray(tf.float32, size=steps)),
    )
    return kernel, bias, hits.stack(), losses.stack()


def _evaluate(kernel, bias, x, y, order, mask):  # noqa: ANN001, ANN202  (graph function)
    """No updates: (correct count per batch, loss sum per batch), batches as in training."""
    rows_x, rows_y = tf.gather(x, order), tf.gather(y, order)  # (steps, bs, d), (steps, bs)
    logits = tf.einsum("sbd,dc->sbc", rows_x, kernel) + bias
    losses = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(rows_y, logits) * mask, axis=1)
    hits = tf.cast(tf.equal(tf.argmax(logits, axis=2, output_type=tf.int32), rows_y), tf.float32)
    return tf.reduce_sum(hits * mask, axis=1), losses


def batch_mean_metrics(hits: Any, loss_sums: Any, counts: np.ndarray) -> tuple[float, float]:
    """ML.NET's epoch metrics: per-batch means, summed one by one in float32, divided by the batch count."""
    counts = np.asarray(counts, dtype=np.float32)
    accuracy = np.asarray(hits, dtype=np.float32) / counts
    loss = np.asarray(loss_sums, dtype=np.float32) / counts
    n = np.float32(len(counts))
    return float(np.cumsum(accuracy, dtype=np.float32)[-1] / n), float(np.cumsum(loss, dtype=np.float32)[-1] / n)


_COMPILED: dict[bool, tuple[Callable[..., Any], Callable[..., Any]]] = {}
_xla_state = {"use": True, "reason": ""}


def _compiled(jit: bool) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The traced epoch and evaluation functions (traced once per process, shapes are free)."""
    if jit not in _COMPILED:
        _COMPILED[jit] = (
            tf.function(_train_epoch, input_signature=_SIGNATURE, jit_compile=jit, reduce_retracing=True),
            tf.function(_evaluate, input_signature=_SIGNATURE[:6], jit_compile=jit, reduce_retracing=True),
        )
    return _COMPILED[jit]


def _call(which: int, *args: Any) -> Any:
    """Run the XLA version; if XLA cannot compile here, say so once and use the plain graph from then on."""
    if _xla_state["use"]:
        try:
            return _compiled(True)[which](*args)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.NotFoundError,
                tf.errors.InternalError) as error:
            _xla_state.update(use=False, reason=str(error).splitlines()[0][:200])
            print(f"Note: XLA is not available here ({_xla_state['reason']}); training without it (slower).")
    return _compiled(False)[which](*args)


def _batches(order: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row order and mask as (steps, batch_size), the last batch padded with row 0 / weight 0."""
    n = len(order)
    steps = max(1, math.ceil(n / batch_size))
    padded = np.zeros(steps * batch_size, dtype=np.int32)
    padded[:n] = order
    mask = np.zeros(steps * batch_size, dtype=np.float32)
    mask[:n] = 1.0
    return padded.reshape(steps, batch_size), mask.reshape(steps, batch_size)


def initial_weights(features: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ML.NET's start: kernel ~ truncated normal (stddev 0.001, cut at 2σ, seeded), bias 0."""
    kernel = tf.random.stateless_truncated_normal((features, classes), seed=[int(seed), 0], stddev=0.001)
    return kernel.numpy().astype(np.float32), np.zeros(classes, dtype=np.float32)


def epoch_order(n: int, epoch: int, seed: int, shuffle_each_epoch: bool) -> np.ndarray:
    """The row order of one epoch: a seeded permutation per epoch, or the given order (ML.NET)."""
    if not shuffle_each_epoch:
        return np.arange(n, dtype=np.int32)
    return np.random.default_rng([int(seed), 2, int(epoch)]).permutation(n).astype(np.int32)


# ---------------------------------------------------------------------------------------------------
# The trained classifier


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
    weights_id: str = ""  # the backbone weights' identity (Architecture.weights_id)
    epochs_trained: int = 0

    @property
    def classes(self) -> list[str]:
        """Class names in output order."""
        return self.label_map.names

    def _matrix(self, features: Any) -> np.ndarray:
        x = features.features if isinstance(features, Bottlenecks) else features
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.kernel.shape[0]:
            raise TrainingDataError(
                f"Features of shape {x.shape} do not fit this head, which expects (N, {self.kernel.shape[0]}) "
                f"bottlenecks of {self.arch} at {self.image_size[0]}x{self.image_size[1]}; compute them with "
                "compute_bottlenecks() using the same architecture, weights and image size."
            )
        return x

    def predict_proba(self, features: np.ndarray | Bottlenecks) -> np.ndarray:
        """Softmax probabilities (N, C) for bottleneck features (or a :class:`Bottlenecks`)."""
        logits = self._matrix(features) @ self.kernel + self.bias
        logits = logits.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict(self, features: np.ndarray | Bottlenecks) -> list[str]:
        """The most probable class name of each row."""
        return [self.label_map.name(i) for i in np.argmax(self.predict_proba(features), axis=1)]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write head.npz, labels.txt, history.csv and classifier.json into ``directory`` (atomically)."""
        directory = Path(directory).expanduser()
        meta = {
            "format": CLASSIFIER_FORMAT,
            "arch": self.arch,
            "backbone_weights": None if self.backbone_weights is None else str(self.backbone_weights),
            "weights_id": self.weights_id,
            "image_size": [int(v) for v in self.image_size],
            "best_epoch": int(self.best_epoch),
            "stopped_early": bool(self.stopped_early),
            "epochs_trained": int(self.epochs_trained),
            "classes": self.label_map.names,
            "options": self.options.to_dict(),
        }
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
        needed = [CLASSIFIER_FILE, "head.npz", "labels.txt", "history.csv"]
        missing = [name for name in needed if not (directory / name).is_file()]
        if missing:
            raise ClassifierFileError(
                f"{directory} is not a saved classifier: missing {', '.join(missing)}. "
                "Save one with TrainedClassifier.save(folder)."
            )
        try:
            meta = json.loads((directory / CLASSIFIER_FILE).read_text(encoding="utf-8"))
        except ValueError as error:
            raise ClassifierFileError(f"{directory / CLASSIFIER_FILE} is not valid JSON ({error}); save it again.") from None
        if meta.get("format") != CLASSIFIER_FORMAT:
            raise ClassifierFileError(
                f"{directory / CLASSIFIER_FILE} has format {meta.get('format')!r}; this version reads "
                f"{CLASSIFIER_FORMAT}. Retrain and save with this version."
            )
        with np.load(directory / "head.npz", allow_pickle=False) as head:
            kernel, bias = head["kernel"].astype(np.float32), head["bias"].astype(np.float32)
        label_map = LabelMap.load(directory / "labels.txt")
        if kernel.shape[1] != len(label_map) or bias.shape != (len(label_map),):
            raise ClassifierFileError(
                f"{directory}: head.npz has {kernel.shape[1]} outputs but labels.txt lists {len(label_map)} "
                "classes; the files come from different models. Save the classifier again."
            )
        history = pd.read_csv(directory / "history.csv")
        return cls(
            arch=meta["arch"],
            backbone_weights=meta.get("backbone_weights"),
            image_size=tuple(int(v) for v in meta["image_size"]),
            label_map=label_map,
            kernel=kernel,
            bias=bias,
            history=history,
            best_epoch=int(meta["best_epoch"]),
            stopped_early=bool(meta["stopped_early"]),
            options=Options.from_dict(meta.get("options", {})),
            weights_id=meta.get("weights_id", ""),
            epochs_trained=int(meta.get("epochs_trained", 0)),
        )


# ---------------------------------------------------------------------------------------------------
# The trainer


def _check_frame(df: Any, name: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TrainingDataError(f"{name} must be a pandas DataFrame (from workshop_utils.data), got {type(df).__name__}.")
    missing = [c for c in ("image_path", "label") if c not in df.columns]
    if missing:
        raise TrainingDataError(
            f"{name} lacks column(s) {', '.join(missing)} (has {', '.join(map(str, df.columns))}); "
            "load the images with workshop_utils.data.load_dataset()."
        )
    return df


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

    def _emit(self, metrics: TrainMetrics) -> None:
        if self.options.metrics_callback is not None:
            self.options.metrics_callback(ImageClassificationMetrics(train=metrics))

    def _check_early_stopping(self, has_validation: bool) -> None:
        o = self.options
        if o.early_stopping is not None and not has_validation and not o.test_on_train_set:
            raise OptionsError(
                "Early stopping is on but there is no validation set and test_on_train_set=False, so no metric "
                "is measured to watch. Pass a validation set (or validation_set_fraction > 0), set "
                "test_on_train_set=True, or set early_stopping=None."
            )

    def split_validation(self, train_df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """ML.NET's split: a seeded shuffle; the first ``int(N · validation_set_fraction)`` rows validate.

        The rest, in the shuffled order, is the training set (ML.NET trains in that order).
        """
        o = self.options
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
            raise TrainingDataError("train_df has no rows: there is nothing to train on.")
        if validation_df is not None:
            validation_df = _check_frame(validation_df, "validation_df")
        order = None  # ML.NET's one seeded shuffle of the training rows, applied after the bottleneck phase
        if validation_df is None or len(validation_df) == 0:
            train_part, validation_part = self.split_validation(train_df)
        else:
            # Bottlenecks are computed (and cached) in the caller's row order, so the cache a notebook or an
            # earlier run made for this table is reused; the rows are shuffled afterwards.
            order = np.random.default_rng([int(o.seed), 1]).permutation(len(train_df))
            train_part, validation_part = train_df, validation_df
        if len(train_part) == 0:
            raise TrainingDataError(
                f"After taking validation_set_fraction={o.validation_set_fraction} of {len(train_df)} images "
                "for validation no training image is left; add images or lower the fraction."
            )
        self._check_early_stopping(len(validation_part) > 0)
        classes = set(map(str, train_part["label"]))
        if len(classes) < 2:
            raise TrainingDataError(
                f"Only one class found in the training labels ({', '.join(sorted(classes))}); a classifier "
                "needs at least 2 classes."
            )

        workspace = o.workspace_path
        temporary = workspace is None
        if temporary:
            workspace = tempfile.mkdtemp(prefix="workshop-trainer-")
        try:
            common = dict(workspace=workspace, batch_size=o.bottleneck_batch_size, metrics_callback=o.metrics_callback,
                          weights=o.weights, image_size=o.image_size, progress=o.progress,
                          mixed_precision=o.mixed_precision)
            train_b = compute_bottlenecks(train_part, o.arch, cache_name="train",
                                          reuse=o.reuse_train_set_bottleneck_cached_values, dataset_name=TRAIN,
                                          **common)
            validation_b = None
            if len(validation_part):
                # Always computed (or reused when fingerprinted as current): ML.NET drops validation silently
                # when only the train cache is reused.
                validation_b = compute_bottlenecks(
                    validation_part, o.arch, cache_name="validation",
                    reuse=o.reuse_validation_set_bottleneck_cached_values, dataset_name=VALIDATION, **common)
        finally:
            if temporary:
                shutil.rmtree(workspace, ignore_errors=True)
        if temporary:
            train_b.cache_dir = None
            if validation_b is not None:
                validation_b.cache_dir = None
        if order is not None:
            train_b = _shuffled(train_b, train_part, order)
        return self.fit_features(train_b, validation_b)

    def fit_features(self, train: Bottlenecks, validation: Bottlenecks | None = None) -> TrainedClassifier:
        """The training phase alone, on cached features (fast: retrain with other options in seconds).

        Rows are used in the given order (``fit`` has already shuffled them once, as ML.NET); no validation
        set is split off here.
        """
        o = self.options
        o.check()
        has_validation = validation is not None and len(validation) > 0
        self._check_early_stopping(has_validation)
        label_map = LabelMap.from_labels(list(train.labels) + (list(validation.labels) if has_validation else []))
        if len(set(train.labels)) < 2:
            raise TrainingDataError(
                f"Only one class found in the training labels ({', '.join(sorted(set(train.labels)))}); a "
                "classifier needs at least 2 classes."
            )
        x = np.ascontiguousarray(train.features, dtype=np.float32)
        y = train.label_indices(label_map).astype(np.int32)
        d, classes = x.shape[1], len(label_map)
        if has_validation:
            xv = np.ascontiguousarray(validation.features, dtype=np.float32)
            yv = validation.label_indices(label_map).astype(np.int32)
            if xv.shape[1] != d:
                raise TrainingDataError(
                    f"Validation features have width {xv.shape[1]} but training features {d}: they come from "
                    "different architectures or settings; compute both with the same ones."
                )
        no_train_images = sorted(set(label_map.names) - set(train.labels))
        if no_train_images:
            print(f"Note: no training image for class(es) {', '.join(no_train_images)}; the head cannot learn them.")

        n, bs = len(x), int(o.batch_size)
        batches_per_epoch = n // bs  # ML.NET's B (full batches); a final partial batch is still trained on
        steps = max(1, math.ceil(n / bs))
        schedule = o.learning_rate_scheduler
        stopper = copy.deepcopy(o.early_stopping) if o.early_stopping is not None else None
        if stopper is not None:
            stopper.reset()
            if not has_validation:
                print("Note: no validation set; early stopping watches the training metrics (as ML.NET does).")
        watch = stopper.metric if stopper is not None else "accuracy"
        if o.restore_best_weights and not has_validation:
            print("Note: no validation set; keeping the last epoch's weights (restore_best_weights needs one).")

        kernel_np, bias_np = initial_weights(d, classes, o.seed)
        kernel, bias = tf.constant(kernel_np), tf.constant(bias_np)
        x_t, y_t = tf.constant(x), tf.constant(y)
        if has_validation:
            xv_t, yv_t = tf.constant(xv), tf.constant(yv)
            v_order, v_mask = _batches(np.arange(len(xv), dtype=np.int32), bs)
            v_order_t, v_mask_t = tf.constant(v_order), tf.constant(v_mask)
            v_counts = v_mask.sum(axis=1)

        rows: list[tuple[int, str, float, float, float]] = []
        best_key: tuple[float, float] | None = None
        best = (kernel, bias, 0)
        stopped_early = False
        epoch = 0
        bar = None
        if o.progress and o.metrics_callback is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(o.epoch), desc="Training", unit="epoch")
        try:
            for epoch in range(int(o.epoch)):
                order, mask = _batches(epoch_order(n, epoch, o.seed, o.shuffle_each_epoch), bs)
                if schedule is not None:
                    rates = schedule.rates(epoch * batches_per_epoch, steps, batches_per_epoch)
                else:
                    rates = np.full(steps, o.learning_rate, dtype=np.float32)
                kernel, bias, hits, losses = _call(0, kernel, bias, x_t, y_t, order, mask, rates)
                acc, ce = batch_mean_metrics(hits, losses, mask.sum(axis=1))
                last_step = epoch * batches_per_epoch + steps - 1
                rate = (schedule.learning_rate(last_step, batches_per_epoch) if schedule is not None
                        else float(o.learning_rate))  # the epoch's last step, as ML.NET shows it
                if o.test_on_train_set:
                    rows.append((epoch, TRAIN, acc, ce, rate))
                    self._emit(TrainMetrics(TRAIN, steps, epoch, acc, ce, rate))
                watched = (acc, ce)
                if has_validation:
                    v_hits, v_losses = _call(1, kernel, bias, xv_t, yv_t, v_order_t, v_mask_t)
                    watched = batch_mean_metrics(v_hits, v_losses, v_counts)
                    rows.append((epoch, VALIDATION, watched[0], watched[1], rate))
                    self._emit(TrainMetrics(VALIDATION, len(v_order), epoch, watched[0], watched[1]))
                    # Best epoch: the watched metric, ties broken by the other one.
                    key = (watched[0], -watched[1]) if watch == "accuracy" else (-watched[1], watched[0])
                    key = tuple(-math.inf if math.isnan(v) else v for v in key)  # a diverged epoch is never best
                    if best_key is None or key > best_key:
                        best_key, best = key, (kernel, bias, epoch)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(accuracy=f"{watched[0]:.3f}", loss=f"{watched[1]:.3f}")
                if stopper is not None:
                    value = watched[0] if watch == "accuracy" else watched[1]
                    if stopper.should_stop(value):
                        stopped_early = epoch + 1 < int(o.epoch)
                        break
        finally:
            if bar is not None:
                bar.close()

        if o.restore_best_weights and has_validation:
            kernel, bias, best_epoch = best
        else:
            best_epoch = epoch
        history = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
        return TrainedClassifier(
            arch=train.arch,
            backbone_weights=None if o.weights is None else str(o.weights),
            image_size=tuple(train.image_size),
            label_map=label_map,
            kernel=np.asarray(kernel, dtype=np.float32),
            bias=np.asarray(bias, dtype=np.float32),
            history=history,
            best_epoch=int(best_epoch),
            stopped_early=stopped_early,
            options=o,
            train_bottlenecks=train,
            validation_bottlenecks=validation if has_validation else None,
            weights_id=train.weights_id,
            epochs_trained=epoch + 1,
        )
