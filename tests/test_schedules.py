"""ML.NET's learning-rate schedules and early stopping, against hand-computed values."""
import numpy as np
import pytest

from workshop_utils.schedules import (
    EarlyStopping,
    ExponentialLRDecay,
    PolynomialLRDecay,
    ScheduleError,
    early_stopping_from_dict,
    schedule_from_dict,
)


def test_exponential_matches_mlnet_example():
    # Epoch 31, B = 114, the last (partial) batch: step 31·114 + 114 = 3648, decay_steps 228 → 0.94^16.
    schedule = ExponentialLRDecay()
    rate = schedule.learning_rate(31 * 114 + 114, 114)
    assert np.float32(rate) == np.float32(0.0037157428)
    assert rate == pytest.approx(0.01 * 0.94**16)
    # One step earlier the staircase is still on the 15th power.
    assert schedule.learning_rate(31 * 114 + 113, 114) == pytest.approx(0.01 * 0.94**15)


def test_exponential_staircase_and_smooth():
    schedule = ExponentialLRDecay(learning_rate=0.1, num_epochs_per_decay=2.0, decay_rate=0.5)
    assert schedule.learning_rate(0, 5) == 0.1
    assert schedule.learning_rate(9, 5) == 0.1  # decay_steps = int(2·5) = 10
    assert schedule.learning_rate(10, 5) == pytest.approx(0.05)
    assert schedule.learning_rate(25, 5) == pytest.approx(0.025)
    smooth = ExponentialLRDecay(learning_rate=0.1, decay_rate=0.5, staircase=False)
    assert smooth.learning_rate(5, 5) == pytest.approx(0.1 * 0.5**0.5)


def test_exponential_decay_steps_truncate():
    # num_epochs_per_decay 1.5 with B = 3 → int(4.5) = 4 decay steps.
    schedule = ExponentialLRDecay(learning_rate=1.0, num_epochs_per_decay=1.5, decay_rate=0.5)
    assert schedule.learning_rate(3, 3) == 1.0
    assert schedule.learning_rate(4, 3) == 0.5


def test_polynomial_without_cycle():
    schedule = PolynomialLRDecay()  # 0.01 → 1e-4 over int(2·B) steps, power 1
    assert schedule.learning_rate(0, 10) == pytest.approx(0.01)
    assert schedule.learning_rate(10, 10) == pytest.approx((0.01 - 1e-4) * 0.5 + 1e-4)
    assert schedule.learning_rate(20, 10) == pytest.approx(1e-4)
    assert schedule.learning_rate(35, 10) == pytest.approx(1e-4)  # clipped at the end rate
    squared = PolynomialLRDecay(power=2.0)
    assert squared.learning_rate(10, 10) == pytest.approx((0.01 - 1e-4) * 0.25 + 1e-4)


def test_polynomial_with_cycle():
    schedule = PolynomialLRDecay(cycle=True)  # ds = 20 steps at B = 10
    assert schedule.learning_rate(0, 10) == pytest.approx(0.01)  # step 0 is in the first cycle
    assert schedule.learning_rate(20, 10) == pytest.approx(1e-4)
    # step 21: ds · ceil(21/20) = 40 → (0.01 − 1e-4)·(1 − 21/40) + 1e-4
    assert schedule.learning_rate(21, 10) == pytest.approx(0.0099 * (19 / 40) + 1e-4)
    assert schedule.learning_rate(25, 10) == pytest.approx(0.0099 * (15 / 40) + 1e-4)


def test_initial_rate_and_the_per_step_method():
    schedule = ExponentialLRDecay(learning_rate=0.02)
    assert schedule.initial_learning_rate == 0.02
    assert schedule.learning_rate(0, 10) == 0.02
    with pytest.raises(ScheduleError, match="The learning rate must be above 0, got 0"):
        ExponentialLRDecay(learning_rate=0)


def test_rates_for_an_epoch():
    schedule = ExponentialLRDecay(learning_rate=1.0, num_epochs_per_decay=0.5, decay_rate=0.5)
    rates = schedule.rates(first_step=4, count=3, batches_per_epoch=4)  # decay_steps 2
    np.testing.assert_allclose(rates, [0.25, 0.25, 0.125])  # steps 4, 5, 6
    assert rates.dtype == np.float32


def test_schedules_round_trip_through_dicts():
    for schedule in (ExponentialLRDecay(0.05, 3.0, 0.9, False), PolynomialLRDecay(0.02, 1.0, 1e-3, 2.0, True)):
        assert schedule_from_dict(schedule.to_dict()) == schedule
    assert schedule_from_dict(None) is None
    with pytest.raises(ScheduleError, match="Unknown learning-rate schedule type 'Cosine'"):
        schedule_from_dict({"type": "Cosine"})


def test_bad_schedule_settings():
    with pytest.raises(ScheduleError, match="num_epochs_per_decay must be above 0"):
        ExponentialLRDecay(num_epochs_per_decay=0)


def _run(stopper, values):
    return [stopper.should_stop(v) for v in values]


def test_early_stopping_on_accuracy():
    stopper = EarlyStopping(min_delta=0.01, patience=3)
    # 0.5 and 0.6 improve; 0.605 does not (wait 1); 0.61 − 0.6 is 0.00999999 in float32, below 0.01 as in
    # ML.NET (wait 2); 0.7 improves and resets; then three epochs without improvement stop it.
    assert _run(stopper, [0.5, 0.6, 0.605, 0.61, 0.7, 0.7, 0.705, 0.7]) == [False] * 7 + [True]
    assert stopper.best == pytest.approx(0.7)


def test_early_stopping_on_loss():
    stopper = EarlyStopping(min_delta=0.01, patience=2, metric="loss")
    assert _run(stopper, [1.0, 0.9, 0.895, 0.8, 0.85, 0.799]) == [False, False, False, False, False, True]
    stopper.reset()
    assert stopper.wait == 0 and stopper.best > 1e38  # float.MaxValue, as ML.NET starts


def test_early_stopping_first_epoch_below_min_delta_counts():
    # ML.NET starts the best accuracy at 0: an epoch at 0.005 accuracy is not an improvement.
    stopper = EarlyStopping(patience=1)
    assert stopper.should_stop(0.005) is True


def test_early_stopping_bad_settings_and_round_trip():
    with pytest.raises(ScheduleError, match="metric 'f1' is not known; use 'accuracy'"):
        EarlyStopping(metric="f1")
    with pytest.raises(ScheduleError, match="patience must be at least 1"):
        EarlyStopping(patience=0)
    with pytest.raises(ScheduleError, match="min_delta must be >= 0"):
        EarlyStopping(min_delta=-0.1)
    stopper = EarlyStopping(0.02, 5, "loss")
    again = early_stopping_from_dict(stopper.to_dict())
    assert (again.min_delta, again.patience, again.metric) == (0.02, 5, "loss")
