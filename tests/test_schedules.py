"""ML.NET's learning-rate schedules and early stopping, as Keras objects, against hand-computed values."""
import keras
import numpy as np
import pytest

from workshop_utils.schedules import (
    EarlyStopping,
    ExponentialLRDecay,
    PolynomialLRDecay,
    decay_steps,
    early_stopping_from_dict,
    schedule_from_dict,
)
from workshop_utils.core.errors import ConfigError


def rate(schedule, step):
    return float(schedule(step))


def test_exponential_is_keras_exponential_decay_with_mlnets_numbers():
    # ML.NET's lab: 114 batches per epoch, epoch 31's last step 31·114 + 114 → 0.01 · 0.94^16.
    schedule = ExponentialLRDecay().keras_schedule(114, learning_rate=0.01)
    assert isinstance(schedule, keras.optimizers.schedules.ExponentialDecay)
    assert rate(schedule, 31 * 114 + 114) == pytest.approx(0.0037157428, rel=1e-6)
    assert rate(schedule, 31 * 114 + 113) == pytest.approx(0.01 * 0.94**15, rel=1e-6)


def test_exponential_staircase_and_smooth():
    schedule = ExponentialLRDecay(learning_rate=0.1, decay_rate=0.5).keras_schedule(5)
    assert [rate(schedule, s) for s in (0, 9, 10, 25)] == pytest.approx([0.1, 0.1, 0.05, 0.025])  # decay_steps 10
    smooth = ExponentialLRDecay(learning_rate=0.1, decay_rate=0.5, staircase=False).keras_schedule(5)
    assert rate(smooth, 5) == pytest.approx(0.1 * 0.5**0.5)


def test_decay_steps_truncate_like_mlnet_and_never_reach_zero():
    assert decay_steps(1.5, 3) == 4  # (int)(1.5 · 3)
    assert decay_steps(2.0, 0) == 1  # ML.NET would divide by zero on a tiny training set
    with pytest.raises(ConfigError, match="batches_per_epoch must be >= 0, got -1"):
        decay_steps(2.0, -1)


def test_polynomial_without_and_with_cycle():
    schedule = PolynomialLRDecay(learning_rate=0.01, num_epochs_per_decay=2.0).keras_schedule(10)  # 20 steps
    assert isinstance(schedule, keras.optimizers.schedules.PolynomialDecay)
    assert [rate(schedule, s) for s in (0, 10, 20, 35)] == pytest.approx(
        [0.01, (0.01 - 1e-4) * 0.5 + 1e-4, 1e-4, 1e-4], rel=1e-5)
    squared = PolynomialLRDecay(learning_rate=0.01, power=2.0).keras_schedule(10)
    assert rate(squared, 10) == pytest.approx((0.01 - 1e-4) * 0.25 + 1e-4, rel=1e-5)
    cycling = PolynomialLRDecay(learning_rate=0.01, cycle=True).keras_schedule(10)
    assert rate(cycling, 0) == pytest.approx(0.01)
    assert rate(cycling, 21) == pytest.approx(0.0099 * (19 / 40) + 1e-4, rel=1e-5)


def test_the_options_rate_starts_the_schedule_unless_the_schedule_has_its_own():
    assert ExponentialLRDecay().initial_learning_rate is None
    assert rate(ExponentialLRDecay().keras_schedule(10, learning_rate=0.1), 0) == pytest.approx(0.1)
    assert rate(ExponentialLRDecay(learning_rate=0.02).keras_schedule(10, learning_rate=0.1), 0) == pytest.approx(0.02)
    with pytest.raises(ConfigError, match="ExponentialLRDecay has no learning rate: pass learning_rate"):
        ExponentialLRDecay().keras_schedule(10)
    with pytest.raises(ConfigError, match="The learning rate must be above 0, got 0"):
        ExponentialLRDecay(learning_rate=0)
    with pytest.raises(ConfigError, match="num_epochs_per_decay must be above 0"):
        ExponentialLRDecay(num_epochs_per_decay=0)


def test_schedules_round_trip_through_dicts():
    for schedule in (ExponentialLRDecay(0.05, 3.0, 0.9, False), PolynomialLRDecay(0.02, 1.0, 1e-3, 2.0, True),
                     ExponentialLRDecay()):
        assert schedule_from_dict(schedule.to_dict()) == schedule
    assert schedule_from_dict(None) is None
    with pytest.raises(ConfigError, match="Unknown learning-rate schedule type 'Cosine'"):
        schedule_from_dict({"type": "Cosine"})


# ---------------------------------------------------------------------------------------------------
# Early stopping: Keras' callback, with the best epoch (ties → lower loss) restored


class _Model:
    """What a callback touches on a model: weights and stop_training."""

    def __init__(self):
        self.weights, self.stop_training = [np.zeros(1)], False

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [w.copy() for w in weights]


def _epochs(callback, rows):
    """Run (accuracy, loss) rows through the callback; the model's weight is the epoch number."""
    model = _Model()
    callback.set_model(model)
    callback.on_train_begin()
    stopped_at = None
    for epoch, (accuracy, loss) in enumerate(rows):
        model.weights = [np.array([float(epoch)])]
        callback.on_epoch_end(epoch, {"val_accuracy": accuracy, "val_loss": loss})
        if model.stop_training:
            stopped_at = epoch
            break
    callback.on_train_end()
    return stopped_at, int(model.weights[0][0])


def test_keras_early_stopping_with_mlnets_rule():
    callback = EarlyStopping(min_delta=0.01, patience=3).keras_callback()
    assert isinstance(callback, keras.callbacks.EarlyStopping)
    assert (callback.monitor, callback.min_delta, callback.patience) == ("val_accuracy", 0.01, 3)
    # 0.5 and 0.6 improve; 0.605 does not; 0.7 improves and resets; three epochs without a gain stop it.
    rows = [(0.5, 1.0), (0.6, 0.9), (0.605, 0.8), (0.7, 0.7), (0.7, 0.6), (0.7, 0.65), (0.695, 0.66)]
    stopped_at, weights = _epochs(callback, rows)
    assert stopped_at == 6
    assert weights == 4 and callback.best_epoch == 4  # same accuracy as epoch 3, lower loss: the tie rule


def test_plain_keras_would_restore_the_first_of_the_tied_epochs():
    # What the subclass is for: Keras keeps the epoch that last beat the best by min_delta (epoch 3).
    plain = keras.callbacks.EarlyStopping(monitor="val_accuracy", min_delta=0.01, patience=3, mode="max",
                                          restore_best_weights=True)
    rows = [(0.5, 1.0), (0.6, 0.9), (0.605, 0.8), (0.7, 0.7), (0.7, 0.6), (0.7, 0.65), (0.695, 0.66)]
    assert _epochs(plain, rows) == (6, 3)


def test_a_nan_epoch_is_never_best_and_restoring_can_be_off():
    stopped_at, weights = _epochs(EarlyStopping(patience=5), [(0.5, 1.0), (float("nan"), float("nan"))])
    assert stopped_at is None and weights == 0
    stopped_at, weights = _epochs(EarlyStopping(patience=5, restore_best_weights=False),
                                  [(0.5, 1.0), (0.4, 2.0)])
    assert weights == 1  # the last epoch's weights stay


def test_early_stopping_on_loss_watches_a_decrease():
    callback = EarlyStopping(min_delta=0.01, patience=2, metric="loss").keras_callback(validation=False)
    assert (callback.monitor, callback.tie_breaker) == ("loss", None)
    model = _Model()
    callback.set_model(model)
    callback.on_train_begin()
    stops = []
    for epoch, loss in enumerate([1.0, 0.9, 0.895, 0.8, 0.85, 0.799]):
        callback.on_epoch_end(epoch, {"loss": loss, "accuracy": 0.5})
        stops.append(model.stop_training)
    assert stops == [False, False, False, False, False, True]


def test_early_stopping_bad_settings_and_round_trip():
    with pytest.raises(ConfigError, match="metric 'f1' is not known; use 'accuracy'"):
        EarlyStopping(metric="f1")
    with pytest.raises(ConfigError, match="patience must be at least 1"):
        EarlyStopping(patience=0)
    with pytest.raises(ConfigError, match="min_delta must be >= 0"):
        EarlyStopping(min_delta=-0.1)
    stopper = EarlyStopping(0.02, 5, "loss")
    again = early_stopping_from_dict(stopper.to_dict())
    assert again == stopper and (again.min_delta, again.patience, again.metric) == (0.02, 5, "loss")
