"""ML.NET's learning-rate schedules and early stopping, as the Keras objects that compute them.

ML.NET took its schedules from TensorFlow, so Keras already has them with the same formulas:

* ML.NET ``ExponentialLRDecay`` = ``keras.optimizers.schedules.ExponentialDecay(lr, decay_steps, 0.94, staircase=True)``
  with ``decay_steps = int(num_epochs_per_decay · batches per epoch)``;
* ML.NET ``PolynomialLRDecay`` = ``keras.optimizers.schedules.PolynomialDecay(lr, decay_steps, end, power, cycle)``;
* ML.NET early stopping (validation accuracy, ``min_delta`` 0.01, ``patience`` 20) = ``keras.callbacks.EarlyStopping``.

The classes here keep ML.NET's option names (so ``Options`` reads like the .NET lab) and only map them onto
those Keras classes: no schedule formula of our own. :class:`BestEpochEarlyStopping` is a small subclass of
Keras' callback that restores the best epoch with ties broken by the lower loss.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from workshop_utils.core.errors import ConfigError
from workshop_utils.core.runtime import import_tensorflow

import_tensorflow()  # quiet TensorFlow's start-up before Keras loads it
import keras  # noqa: E402


def decay_steps(num_epochs_per_decay: float, batches_per_epoch: int) -> int:
    """ML.NET's ``(int)(num_epochs_per_decay · B)``, at least 1 (ML.NET divides by zero for tiny sets)."""
    if int(batches_per_epoch) < 0:
        raise ConfigError(f"batches_per_epoch must be >= 0, got {batches_per_epoch}.")
    return max(1, int(np.float32(batches_per_epoch) * np.float32(num_epochs_per_decay)))


class LearningRateScheduler:
    """Base class: ML.NET's schedule options; :meth:`keras_schedule` gives the Keras schedule that trains.

    ``learning_rate=None`` (the default) starts the schedule at ``Options.learning_rate``; a number given
    here wins over it. The value is kept as ``initial_learning_rate``.
    """

    _params: tuple[str, ...] = ()

    def __init__(self, learning_rate: float | None = None) -> None:
        if learning_rate is not None and not float(learning_rate) > 0:
            raise ConfigError(f"The learning rate must be above 0, got {learning_rate}.")
        self.initial_learning_rate = None if learning_rate is None else float(learning_rate)

    def keras_schedule(self, batches_per_epoch: int,
                       learning_rate: float | None = None) -> keras.optimizers.schedules.LearningRateSchedule:
        """The Keras schedule for ``batches_per_epoch`` steps per epoch (``learning_rate``: the default start)."""
        raise NotImplementedError

    def _start(self, learning_rate: float | None) -> float:
        rate = self.initial_learning_rate if self.initial_learning_rate is not None else learning_rate
        if rate is None:
            raise ConfigError(f"{type(self).__name__} has no learning rate: pass learning_rate=... to it or to Options.")
        return float(rate)

    def to_dict(self) -> dict[str, Any]:
        """Type name and parameters, for saving a trained classifier's options as JSON."""
        return {"type": type(self).__name__, "learning_rate": self.initial_learning_rate,
                **{name: getattr(self, name) for name in self._params}}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "type")
        return f"{type(self).__name__}({params})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()  # type: ignore[union-attr]

    __hash__ = None  # type: ignore[assignment]  (mutable, like a dataclass)


class ExponentialLRDecay(LearningRateScheduler):
    """ML.NET's default: ``lr · decay_rate ^ (step / decay_steps)``, floored with ``staircase`` (Keras ``ExponentialDecay``)."""

    _params = ("num_epochs_per_decay", "decay_rate", "staircase")

    def __init__(self, learning_rate: float | None = None, num_epochs_per_decay: float = 2.0,
                 decay_rate: float = 0.94, staircase: bool = True) -> None:
        super().__init__(learning_rate)
        self.num_epochs_per_decay = float(num_epochs_per_decay)
        self.decay_rate = float(decay_rate)
        self.staircase = bool(staircase)
        if not self.num_epochs_per_decay > 0:
            raise ConfigError(f"num_epochs_per_decay must be above 0, got {num_epochs_per_decay}.")

    def keras_schedule(self, batches_per_epoch: int,
                       learning_rate: float | None = None) -> keras.optimizers.schedules.ExponentialDecay:
        """``keras.optimizers.schedules.ExponentialDecay`` with ML.NET's decay steps."""
        return keras.optimizers.schedules.ExponentialDecay(
            self._start(learning_rate), decay_steps(self.num_epochs_per_decay, batches_per_epoch),
            self.decay_rate, staircase=self.staircase)


class PolynomialLRDecay(LearningRateScheduler):
    """``(lr − end) · (1 − step/decay_steps) ^ power + end``, restarting with ``cycle`` (Keras ``PolynomialDecay``)."""

    _params = ("num_epochs_per_decay", "end_learning_rate", "power", "cycle")

    def __init__(self, learning_rate: float | None = None, num_epochs_per_decay: float = 2.0,
                 end_learning_rate: float = 1e-4, power: float = 1.0, cycle: bool = False) -> None:
        super().__init__(learning_rate)
        self.num_epochs_per_decay = float(num_epochs_per_decay)
        self.end_learning_rate = float(end_learning_rate)
        self.power = float(power)
        self.cycle = bool(cycle)
        if not self.num_epochs_per_decay > 0:
            raise ConfigError(f"num_epochs_per_decay must be above 0, got {num_epochs_per_decay}.")

    def keras_schedule(self, batches_per_epoch: int,
                       learning_rate: float | None = None) -> keras.optimizers.schedules.PolynomialDecay:
        """``keras.optimizers.schedules.PolynomialDecay`` with ML.NET's decay steps."""
        return keras.optimizers.schedules.PolynomialDecay(
            self._start(learning_rate), decay_steps(self.num_epochs_per_decay, batches_per_epoch),
            end_learning_rate=self.end_learning_rate, power=self.power, cycle=self.cycle)


class BestEpochEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' ``EarlyStopping`` (stop after ``patience`` epochs without a ``min_delta`` gain) that restores the best epoch.

    Keras alone restores the last epoch that beat the best by ``min_delta``; with ML.NET's coarse
    ``min_delta=0.01`` a later epoch with the same accuracy and a lower loss would be thrown away. Here the
    best epoch is the highest ``monitor`` value, ties broken by the lower ``tie_breaker`` (the loss), and a
    NaN epoch is never best. ``best_epoch`` (0-based) tells which epoch's weights the model holds.
    """

    def __init__(self, monitor: str = "val_accuracy", min_delta: float = 0.01, patience: int = 20,
                 mode: str = "auto", tie_breaker: str | None = "val_loss", restore_best_weights: bool = True,
                 **kwargs: Any) -> None:
        if mode == "auto":  # decided from the name, so it works before the model's metrics are built
            mode = "max" if "acc" in monitor else "min"
        super().__init__(monitor=monitor, min_delta=min_delta, patience=patience, mode=mode,
                         restore_best_weights=False, **kwargs)
        self.tie_breaker = tie_breaker
        self.restore_best = bool(restore_best_weights)
        self.best_key: tuple[float, float] | None = None
        self.best_epoch_weights: list[Any] | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        self.best_key, self.best_epoch_weights = None, None

    def _key(self, logs: dict[str, Any]) -> tuple[float, float] | None:
        value = logs.get(self.monitor)
        if value is None:
            return None
        increasing = self.mode == "max"
        tie = float(logs.get(self.tie_breaker, 0.0)) if self.tie_breaker else 0.0
        key = (float(value) if increasing else -float(value), -tie)
        return tuple(-np.inf if np.isnan(v) else v for v in key)  # type: ignore[return-value]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        key = self._key(logs or {})
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


class EarlyStopping:
    """ML.NET's early-stopping options: ``metric`` ("accuracy" or "loss"), ``min_delta``, ``patience``.

    :meth:`keras_callback` gives the Keras callback that does the stopping.
    """

    def __init__(self, min_delta: float = 0.01, patience: int = 20, metric: str = "accuracy") -> None:
        aliases = {"accuracy": "accuracy", "acc": "accuracy", "loss": "loss", "crossentropy": "loss",
                   "cross_entropy": "loss", "cross-entropy": "loss"}
        name = str(metric).strip().lower()
        if name not in aliases:
            raise ConfigError(
                f"EarlyStopping metric {metric!r} is not known; use 'accuracy' (watch an increase) "
                "or 'loss' (watch the cross-entropy decrease)."
            )
        if int(patience) < 1:
            raise ConfigError(f"EarlyStopping patience must be at least 1 epoch, got {patience}.")
        if float(min_delta) < 0:
            raise ConfigError(f"EarlyStopping min_delta must be >= 0, got {min_delta}.")
        self.min_delta, self.patience, self.metric = float(min_delta), int(patience), aliases[name]

    def keras_callback(self, validation: bool = True, restore_best_weights: bool = True) -> BestEpochEarlyStopping:
        """The callback watching the validation metric (or the training one when there is no validation set)."""
        prefix = "val_" if validation else ""
        monitor, other = ("accuracy", "loss") if self.metric == "accuracy" else ("loss", "accuracy")
        return BestEpochEarlyStopping(monitor=prefix + monitor, min_delta=self.min_delta, patience=self.patience,
                                      mode="max" if monitor == "accuracy" else "min",
                                      tie_breaker=prefix + other if monitor == "accuracy" else None,
                                      restore_best_weights=restore_best_weights)

    def to_dict(self) -> dict[str, Any]:
        """Parameters, for saving options as JSON."""
        return {"type": "EarlyStopping", "min_delta": self.min_delta, "patience": self.patience,
                "metric": self.metric}

    def __repr__(self) -> str:
        return f"EarlyStopping(min_delta={self.min_delta!r}, patience={self.patience!r}, metric={self.metric!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EarlyStopping) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def schedule_from_dict(data: dict[str, Any] | None) -> LearningRateScheduler | None:
    """Rebuild a schedule saved with ``to_dict`` (None stays None)."""
    if data is None:
        return None
    kinds = {"ExponentialLRDecay": ExponentialLRDecay, "PolynomialLRDecay": PolynomialLRDecay}
    params = dict(data)
    kind = params.pop("type", None)
    if kind not in kinds:
        raise ConfigError(f"Unknown learning-rate schedule type {kind!r}; expected one of {', '.join(kinds)}.")
    return kinds[kind](**params)


def early_stopping_from_dict(data: dict[str, Any] | None) -> EarlyStopping | None:
    """Rebuild an EarlyStopping saved with ``to_dict`` (None stays None)."""
    if data is None:
        return None
    return EarlyStopping(**{k: v for k, v in data.items() if k != "type"})
