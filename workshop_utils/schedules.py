"""ML.NET's learning-rate schedules and early-stopping rule, with the same formulas.

``step = epoch · B + batch_index`` where ``B = floor(N_train / batch_size)`` and ``batch_index`` is
0-based and counts a final partial batch too (so the last step of an epoch can equal ``(epoch + 1) · B``).
No TensorFlow here: the trainer precomputes each epoch's per-step rates with these methods, so the rate
used in the compiled loop is exactly what ``learning_rate(step, batches_per_epoch)`` returns (in double
precision; training and the ML.NET metric lines use it as a float32, as ML.NET does). Early stopping
compares in float32 like ML.NET's ``float`` fields, so borderline epochs count the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_f32 = np.float32


class ScheduleError(ValueError):
    """A schedule or early-stopping setting has a value the formulas cannot use."""


def _decay_steps(num_epochs_per_decay: float, batches_per_epoch: int) -> int:
    """ML.NET's ``(int)(B · batch_size · num_epochs_per_decay / batch_size)``, at least 1.

    ML.NET divides by zero when fewer than one decay step fits (tiny training sets); we use 1 step instead.
    """
    if batches_per_epoch < 0:
        raise ScheduleError(f"batches_per_epoch must be >= 0, got {batches_per_epoch}.")
    return max(1, int(_f32(batches_per_epoch) * _f32(num_epochs_per_decay)))


class LearningRateScheduler:
    """Base class: a rule giving the learning rate of each training step.

    Built with the initial rate (``learning_rate=``, kept as ``initial_learning_rate``); the public
    method ``learning_rate(step, batches_per_epoch)`` gives the rate of any step.
    """

    _params: tuple[str, ...] = ()

    def __init__(self, learning_rate: float = 0.01) -> None:
        rate = float(learning_rate)
        if not rate > 0:
            raise ScheduleError(f"The learning rate must be above 0, got {learning_rate}.")
        self.initial_learning_rate = rate

    def learning_rate(self, step: int, batches_per_epoch: int) -> float:
        """The rate for global ``step`` (``epoch · batches_per_epoch + batch_index``)."""
        return self.rate_at(step, batches_per_epoch)

    def rate_at(self, step: int, batches_per_epoch: int) -> float:
        """The schedule's formula (each subclass has its own)."""
        raise NotImplementedError

    def rates(self, first_step: int, count: int, batches_per_epoch: int) -> np.ndarray:
        """float32 rates for ``count`` consecutive steps from ``first_step`` (one epoch's worth)."""
        return np.array([self.rate_at(first_step + i, batches_per_epoch) for i in range(count)], dtype=np.float32)

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
    """``lr = learning_rate · decay_rate ^ (step / decay_steps)`` (the power floored when ``staircase``).

    ``decay_steps = int(num_epochs_per_decay · B)``. ML.NET's default schedule.
    """

    _params = ("num_epochs_per_decay", "decay_rate", "staircase")

    def __init__(self, learning_rate: float = 0.01, num_epochs_per_decay: float = 2.0, decay_rate: float = 0.94,
                 staircase: bool = True) -> None:
        super().__init__(learning_rate)
        self.num_epochs_per_decay = float(num_epochs_per_decay)
        self.decay_rate = float(decay_rate)
        self.staircase = bool(staircase)
        if not self.num_epochs_per_decay > 0:
            raise ScheduleError(f"num_epochs_per_decay must be above 0, got {num_epochs_per_decay}.")

    def rate_at(self, step: int, batches_per_epoch: int) -> float:
        """The decayed rate for ``step`` with ``batches_per_epoch`` full batches per epoch."""
        decay_steps = _decay_steps(self.num_epochs_per_decay, batches_per_epoch)
        power = step / decay_steps
        if self.staircase:
            power = math.floor(power)
        return self.initial_learning_rate * self.decay_rate**power


class PolynomialLRDecay(LearningRateScheduler):
    """``lr = (learning_rate − end) · (1 − min(step, ds)/ds) ^ power + end`` with ``ds = int(num_epochs_per_decay · B)``.

    With ``cycle`` the decay restarts instead of flattening: ``ds · ceil(step / ds)`` replaces ``ds``.
    """

    _params = ("num_epochs_per_decay", "end_learning_rate", "power", "cycle")

    def __init__(self, learning_rate: float = 0.01, num_epochs_per_decay: float = 2.0,
                 end_learning_rate: float = 1e-4, power: float = 1.0, cycle: bool = False) -> None:
        super().__init__(learning_rate)
        self.num_epochs_per_decay = float(num_epochs_per_decay)
        self.end_learning_rate = float(end_learning_rate)
        self.power = float(power)
        self.cycle = bool(cycle)
        if not self.num_epochs_per_decay > 0:
            raise ScheduleError(f"num_epochs_per_decay must be above 0, got {num_epochs_per_decay}.")

    def rate_at(self, step: int, batches_per_epoch: int) -> float:
        """The decayed rate for ``step`` with ``batches_per_epoch`` full batches per epoch."""
        decay_steps = _decay_steps(self.num_epochs_per_decay, batches_per_epoch)
        if self.cycle:
            multiplier = 1 if step == 0 else math.ceil(step / decay_steps)  # TF's rule: step 0 is in cycle 1
            decay_steps = int(decay_steps * multiplier)
        else:
            step = min(step, decay_steps)
        end = self.end_learning_rate
        return (self.initial_learning_rate - end) * (1.0 - step / decay_steps) ** self.power + end


@dataclass
class EarlyStopping:
    """ML.NET's early stopping: stop after ``patience`` epochs in a row without an improvement of ``min_delta``.

    ``metric="accuracy"`` watches an increase (no improvement when ``current − best < min_delta``);
    ``metric="loss"`` watches the cross-entropy decrease (``best − current < min_delta``). An improvement
    resets the count and becomes the new best. Call :meth:`should_stop` once per epoch.
    """

    min_delta: float = 0.01
    patience: int = 20
    metric: str = "accuracy"
    best: float | None = field(default=None, init=False, repr=False)
    wait: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        metric = str(self.metric).strip().lower()
        aliases = {"accuracy": "accuracy", "acc": "accuracy", "loss": "loss", "crossentropy": "loss",
                   "cross_entropy": "loss", "cross-entropy": "loss"}
        if metric not in aliases:
            raise ScheduleError(
                f"EarlyStopping metric {self.metric!r} is not known; use 'accuracy' (watch an increase) "
                "or 'loss' (watch the cross-entropy decrease)."
            )
        self.metric = aliases[metric]
        if int(self.patience) < 1:
            raise ScheduleError(f"EarlyStopping patience must be at least 1 epoch, got {self.patience}.")
        if float(self.min_delta) < 0:
            raise ScheduleError(f"EarlyStopping min_delta must be >= 0, got {self.min_delta}.")
        self.reset()

    @property
    def increasing(self) -> bool:
        """True when a larger value is better (accuracy)."""
        return self.metric == "accuracy"

    def reset(self) -> None:
        """Forget the history (ML.NET's start values: best accuracy 0, best loss float.MaxValue)."""
        self.best = 0.0 if self.increasing else float(np.finfo(np.float32).max)
        self.wait = 0

    def should_stop(self, value: float) -> bool:
        """Record this epoch's metric value; True when training should stop now."""
        # float32 arithmetic, as ML.NET's floats: e.g. 0.51 − 0.50 is below 0.01 in float32 (not in float64).
        current = _f32(value)
        gain = current - _f32(self.best) if self.increasing else _f32(self.best) - current
        if not gain >= _f32(self.min_delta):  # NaN counts as no improvement
            self.wait += 1
            return self.wait >= int(self.patience)
        self.wait = 0
        self.best = float(current)
        return False

    def to_dict(self) -> dict[str, Any]:
        """Parameters only (not the running state), for saving options as JSON."""
        return {"type": "EarlyStopping", "min_delta": self.min_delta, "patience": self.patience,
                "metric": self.metric}


def schedule_from_dict(data: dict[str, Any] | None) -> LearningRateScheduler | None:
    """Rebuild a schedule saved with ``to_dict`` (None stays None)."""
    if data is None:
        return None
    kinds = {"ExponentialLRDecay": ExponentialLRDecay, "PolynomialLRDecay": PolynomialLRDecay}
    params = dict(data)
    kind = params.pop("type", None)
    if kind not in kinds:
        raise ScheduleError(f"Unknown learning-rate schedule type {kind!r}; expected one of {', '.join(kinds)}.")
    return kinds[kind](**params)


def early_stopping_from_dict(data: dict[str, Any] | None) -> EarlyStopping | None:
    """Rebuild an EarlyStopping saved with ``to_dict`` (None stays None)."""
    if data is None:
        return None
    params = {k: v for k, v in data.items() if k != "type"}
    return EarlyStopping(**params)
