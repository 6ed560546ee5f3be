"""ML.NET's learning-rate schedules and early stopping, with ML.NET's option names, built as Keras objects.

ML.NET took its schedules from TensorFlow: ``ExponentialLRDecay`` is Keras' ``ExponentialDecay`` (0.94, staircase,
``decay_steps = int(num_epochs_per_decay · batches per epoch)``), ``PolynomialLRDecay`` is ``PolynomialDecay``."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from workshop_utils.core.errors import ConfigError
from workshop_utils.core.runtime import import_tensorflow

import_tensorflow()  # quiet TensorFlow's start-up before Keras loads it
import keras  # noqa: E402

Schedule = keras.optimizers.schedules.LearningRateSchedule


def decay_steps(num_epochs_per_decay: float, batches_per_epoch: int) -> int:
    """ML.NET's ``(int)(num_epochs_per_decay · B)``, at least 1 (ML.NET divides by zero for tiny sets)."""
    if int(batches_per_epoch) < 0:
        raise ConfigError(f"batches_per_epoch must be >= 0, got {batches_per_epoch}.")
    return max(1, int(np.float32(batches_per_epoch) * np.float32(num_epochs_per_decay)))


@dataclass
class LearningRateScheduler:
    """ML.NET's schedule options. ``learning_rate=None`` starts at ``Options.learning_rate``; a number here wins."""

    learning_rate: float | None = None
    num_epochs_per_decay: float = 2.0

    def __post_init__(self) -> None:
        if self.learning_rate is not None and not float(self.learning_rate) > 0:
            raise ConfigError(f"The learning rate must be above 0, got {self.learning_rate}.")
        if not float(self.num_epochs_per_decay) > 0:
            raise ConfigError(f"num_epochs_per_decay must be above 0, got {self.num_epochs_per_decay}.")
        for f in fields(self):  # JSON may bring ints: store each option as its default's type (floats, bools)
            if getattr(self, f.name) is not None:
                setattr(self, f.name, (float if f.default is None else type(f.default))(getattr(self, f.name)))

    @property
    def initial_learning_rate(self) -> float | None:
        """The schedule's own starting rate, as Keras names it (None: ``Options.learning_rate``)."""
        return self.learning_rate

    def keras_schedule(self, batches_per_epoch: int, learning_rate: float | None = None) -> Schedule:
        """The Keras schedule for ``batches_per_epoch`` steps per epoch (``learning_rate``: the default start)."""
        raise NotImplementedError

    def _start(self, learning_rate: float | None) -> float:
        rate = self.learning_rate if self.learning_rate is not None else learning_rate
        if rate is None:
            raise ConfigError(f"{type(self).__name__} has no learning rate: pass learning_rate=... to it or to "
                              "Options.")
        return float(rate)

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass
class ExponentialLRDecay(LearningRateScheduler):
    """ML.NET's default: ``lr · decay_rate ^ (step / decay_steps)``, floored with ``staircase`` (ExponentialDecay)."""

    decay_rate: float = 0.94
    staircase: bool = True

    def keras_schedule(self, batches_per_epoch: int, learning_rate: float | None = None) -> Schedule:
        return keras.optimizers.schedules.ExponentialDecay(
            self._start(learning_rate), decay_steps(self.num_epochs_per_decay, batches_per_epoch),
            self.decay_rate, staircase=self.staircase)


@dataclass
class PolynomialLRDecay(LearningRateScheduler):
    """``(lr − end) · (1 − step/decay_steps) ^ power + end``, restarting with ``cycle`` (``PolynomialDecay``)."""

    end_learning_rate: float = 1e-4
    power: float = 1.0
    cycle: bool = False

    def keras_schedule(self, batches_per_epoch: int, learning_rate: float | None = None) -> Schedule:
        return keras.optimizers.schedules.PolynomialDecay(
            self._start(learning_rate), decay_steps(self.num_epochs_per_decay, batches_per_epoch),
            end_learning_rate=self.end_learning_rate, power=self.power, cycle=self.cycle)


class EarlyStopping(keras.callbacks.EarlyStopping):
    """ML.NET's early stopping (``metric`` "accuracy" or "loss", ``min_delta``, ``patience``) as Keras' callback.

    Keras stops as ML.NET does but keeps the last epoch that beat the best by ``min_delta``: with ML.NET's 0.01 a
    later epoch with the same accuracy and a lower loss would be lost. Here the best ``monitor`` value wins, ties
    to the lower loss, never NaN. ``start_value`` lets the starting model compete as ``best_epoch`` -1.
    """

    def __init__(self, min_delta: float = 0.01, patience: int = 20, metric: str = "accuracy",
                 monitor: str | None = None, start_value: float | None = None, restore_best_weights: bool = True,
                 **kwargs: Any) -> None:
        aliases = {"accuracy": "accuracy", "acc": "accuracy", "loss": "loss", "crossentropy": "loss",
                   "cross_entropy": "loss", "cross-entropy": "loss"}
        if str(metric).strip().lower() not in aliases:
            raise ConfigError(f"EarlyStopping metric {metric!r} is not known; use 'accuracy' (watch an increase) "
                              "or 'loss' (watch the cross-entropy decrease).")
        if int(patience) < 1:
            raise ConfigError(f"EarlyStopping patience must be at least 1 epoch, got {patience}.")
        if float(min_delta) < 0:
            raise ConfigError(f"EarlyStopping min_delta must be >= 0, got {min_delta}.")
        monitor = monitor or "val_" + aliases[str(metric).strip().lower()]
        increasing = "acc" in monitor  # decided from the name, so it works before the model's metrics are built
        super().__init__(monitor=monitor, min_delta=float(min_delta), patience=int(patience),
                         mode="max" if increasing else "min", restore_best_weights=False, **kwargs)
        self.metric = "accuracy" if increasing else "loss"
        self.tie_breaker = monitor.replace("accuracy", "loss") if increasing else None
        self.start_value, self.restore_best = start_value, bool(restore_best_weights)

    def keras_callback(self, validation: bool = True, restore_best_weights: bool = True) -> EarlyStopping:
        """A fresh callback for one ``fit`` watching the validation metric (the training one without validation)."""
        return EarlyStopping(abs(self.min_delta), self.patience, self.metric,
                             ("val_" if validation else "") + self.metric, restore_best_weights=restore_best_weights)

    def _key(self, value: float | None, tie: float = 0.0) -> tuple[float, float] | None:
        if value is None:
            return None
        key = (float(value) if self.mode == "max" else -float(value), -float(tie))
        return tuple(-np.inf if np.isnan(v) else v for v in key)  # type: ignore[return-value]

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        self.best_key, self.best_epoch_weights = self._key(self.start_value), None
        if self.start_value is not None:
            self.best, self.best_epoch = float(self.start_value), -1  # Keras' patience counts from the start too
            if self.restore_best:
                self.best_epoch_weights = self.model.get_weights()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        key = self._key(logs.get(self.monitor), logs.get(self.tie_breaker, 0.0) if self.tie_breaker else 0.0)
        if key is not None and (self.best_key is None or key > self.best_key):
            self.best_key, self.best_epoch = key, epoch
            if self.restore_best:
                self.best_epoch_weights = self.model.get_weights()
        best_epoch = self.best_epoch
        super().on_epoch_end(epoch, logs)  # Keras' patience rule (it also tracks its own best_epoch)
        self.best_epoch = best_epoch

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_end(logs)
        if self.restore_best and self.best_epoch_weights is not None:
            self.model.set_weights(self.best_epoch_weights)

    def to_dict(self) -> dict[str, Any]:
        # Keras flips min_delta's sign for losses
        return {"type": "EarlyStopping", "min_delta": abs(self.min_delta), "patience": self.patience,
                "metric": self.metric}

    def __repr__(self) -> str:
        return f"EarlyStopping(min_delta={abs(self.min_delta)!r}, patience={self.patience!r}, metric={self.metric!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EarlyStopping) and self.to_dict() == other.to_dict()

    __hash__ = keras.callbacks.Callback.__hash__  # Keras may keep callbacks in sets: identity, as any callback


class EpochTimer(keras.callbacks.Callback):
    """The wall-clock seconds of every epoch, in ``seconds`` (the first includes tracing and decoding)."""

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def schedule_from_dict(data: dict[str, Any] | None) -> LearningRateScheduler | None:
    """Rebuild a schedule saved with ``to_dict`` (None stays None)."""
    if data is None:
        return None
    kinds = {"ExponentialLRDecay": ExponentialLRDecay, "PolynomialLRDecay": PolynomialLRDecay}
    if data.get("type") not in kinds:
        raise ConfigError(f"Unknown learning-rate schedule type {data.get('type')!r}; expected one of "
                          f"{', '.join(kinds)}.")
    return kinds[data["type"]](**{k: v for k, v in data.items() if k != "type"})


def early_stopping_from_dict(data: dict[str, Any] | None) -> EarlyStopping | None:
    """Rebuild an EarlyStopping saved with ``to_dict`` (None stays None)."""
    return None if data is None else EarlyStopping(**{k: v for k, v in data.items() if k != "type"})
