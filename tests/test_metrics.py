"""ML.NET multiclass metrics: cross-checked against scikit-learn, hand-computed examples, bad inputs."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_score,
    recall_score,
    top_k_accuracy_score,
)

from workshop_utils.core.errors import ConfigError
from workshop_utils.core.labels import LabelMap
from workshop_utils.metrics import EPSILON, evaluate, predictions_frame

NAMES = ["bumper_dent", "bumper_scratch", "door_dent", "door_scratch", "glass_shatter"]


class StubLabelMap:
    """What evaluate needs from workshop_utils.core.labels.LabelMap: the ordered ``names``."""

    def __init__(self, names):
        self.names = list(names)


def random_case(seed: int, n: int = 60, absent: int = 3, n_ties: int = 12):
    """Random rows summing to 1, with class ``absent`` missing from y and some exact-tie rows."""
    rng = np.random.default_rng(seed)
    c = len(NAMES)
    y = rng.choice([k for k in range(c) if k != absent], size=n)
    probs = rng.dirichlet(np.ones(c), size=n)
    tie_rows = rng.choice(n, size=n_ties, replace=False)
    for row in tie_rows[: n_ties // 2]:  # two classes tied for the top: 0.375 each, the rest share 0.25
        a, b = sorted(rng.choice(c, size=2, replace=False))
        probs[row] = 0.25 / (c - 2)
        probs[row, [a, b]] = 0.375
    probs[tie_rows[n_ties // 2 :]] = 1.0 / c  # all classes tied
    probs /= probs.sum(axis=1, keepdims=True)
    return y, probs, tie_rows


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_matches_sklearn_with_absent_class_and_ties(seed):
    y, probs, tie_rows = random_case(seed)
    m = evaluate(y, probs, StubLabelMap(NAMES))
    predicted = np.argmax(probs, axis=1)
    # Ties really occur and go to the lower class index.
    for row in tie_rows:
        assert predicted[row] == int(np.flatnonzero(probs[row] == probs[row].max())[0])
    present = sorted(set(y.tolist()))
    assert 3 not in present

    assert m.micro_accuracy == pytest.approx(accuracy_score(y, predicted), abs=1e-12)
    per_class = recall_score(y, predicted, labels=present, average=None, zero_division=0)
    assert m.macro_accuracy == pytest.approx(per_class.mean(), abs=1e-12)
    assert m.log_loss == pytest.approx(log_loss(y, probs, labels=range(len(NAMES))), rel=1e-10)
    np.testing.assert_array_equal(m.confusion_matrix, confusion_matrix(y, predicted, labels=range(len(NAMES))))
    np.testing.assert_allclose(
        m.precision, precision_score(y, predicted, labels=range(len(NAMES)), average=None, zero_division=0)
    )
    np.testing.assert_allclose(
        m.recall, recall_score(y, predicted, labels=range(len(NAMES)), average=None, zero_division=0)
    )
    for k in present:
        rows = y == k
        assert m.per_class_log_loss[k] == pytest.approx(
            log_loss(y[rows], probs[rows], labels=range(len(NAMES))), rel=1e-10
        )
    assert m.per_class_log_loss[3] == 0.0
    assert m.support[3] == 0 and m.recall[3] == 0.0
    assert m.support.sum() == m.n_samples == len(y)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_matches_sklearn_without_ties(seed, k):
    # sklearn breaks ties towards the *higher* index, ML.NET towards the lower: compare on tie-free rows.
    y, probs, _ = random_case(seed, n_ties=0)
    m = evaluate(y, probs, NAMES, top_k=k)
    assert m.top_k_accuracy == pytest.approx(top_k_accuracy_score(y, probs, k=k, labels=range(len(NAMES))))
    if k == 1:
        assert m.top_k_accuracy == m.micro_accuracy


def test_top_k_ties_rank_the_lower_index_first():
    probs = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [0.2, 0.4, 0.4]])
    y = np.array([0, 1, 2])
    top1 = evaluate(y, probs, ["a", "b", "c"], top_k=1)
    top2 = evaluate(y, probs, ["a", "b", "c"], top_k=2)
    assert top1.top_k_accuracy == pytest.approx(1 / 3)  # only row 0: class 0 wins its tie
    assert top2.top_k_accuracy == 1.0
    np.testing.assert_array_equal(top1.confusion_matrix, [[1, 0, 0], [1, 0, 0], [0, 1, 0]])


def test_hand_computed_example():
    names = ["cat", "dog", "fox"]
    y = [0, 0, 1, 2]
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # cat -> cat
            [0.3, 0.6, 0.1],  # cat -> dog
            [0.1, 0.8, 0.1],  # dog -> dog
            [0.5, 0.0, 0.5],  # fox -> cat (tie with fox, lower index wins)
        ]
    )
    m = evaluate(y, probs, names)
    assert m.micro_accuracy == pytest.approx(2 / 4)
    assert m.macro_accuracy == pytest.approx((1 / 2 + 1 + 0) / 3)
    losses = -np.log([0.7, 0.3, 0.8, 0.5])
    assert m.log_loss == pytest.approx(losses.mean())
    np.testing.assert_allclose(m.per_class_log_loss, [losses[:2].mean(), losses[2], losses[3]])
    h = -(2 * math.log(2 / 4) + 1 * math.log(1 / 4) + 1 * math.log(1 / 4)) / 4
    assert m.log_loss_reduction == pytest.approx((h - losses.mean()) / h)
    np.testing.assert_array_equal(m.confusion_matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(m.precision, [1 / 2, 1 / 2, 0.0])  # fox never predicted: 0, not NaN
    np.testing.assert_allclose(m.recall, [1 / 2, 1.0, 0.0])
    np.testing.assert_array_equal(m.support, [2, 1, 1])


@pytest.mark.parametrize("seed", [0, 1])
def test_log_loss_reduction_formula(seed):
    y, probs, _ = random_case(seed)
    m = evaluate(y, probs, NAMES)
    counts = np.bincount(y, minlength=len(NAMES))
    n = len(y)
    h = -sum(c * math.log(c / n) for c in counts if c > 0) / n
    assert m.log_loss_reduction == pytest.approx((h - m.log_loss) / h, rel=1e-12)


def test_perfect_and_uniform_predictions():
    y = np.array([0, 1, 2, 2])
    perfect = evaluate(y, np.eye(3)[y], ["a", "b", "c"])
    # sklearn clips p = 1 to 1 - eps (float64): a loss of 2.2e-16 instead of ML.NET's exact 0.
    assert perfect.log_loss == pytest.approx(0.0, abs=1e-15)
    assert perfect.log_loss_reduction == pytest.approx(1.0, rel=1e-15)
    assert perfect.micro_accuracy == perfect.macro_accuracy == 1.0
    prior = np.bincount(y) / len(y)
    at_prior = evaluate(y, np.tile(prior, (4, 1)), ["a", "b", "c"])  # predicting the prior: reduction 0
    assert at_prior.log_loss_reduction == pytest.approx(0.0, abs=1e-12)


def test_log_loss_clamps_at_1e_15():
    m = evaluate([0, 1], [[0.0, 1.0], [0.0, 1.0]], ["a", "b"])
    assert m.log_loss == pytest.approx((-math.log(EPSILON) + 0.0) / 2)
    assert m.per_class_log_loss[0] == pytest.approx(34.538776394910684)


def test_single_class_gives_nan_reduction_with_a_note():
    m = evaluate(["a", "a", "a"], [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], ["a", "b"])
    assert math.isnan(m.log_loss_reduction)
    assert any("only one class (a)" in note for note in m.notes)
    assert "LogLossReduction = NaN" in str(m)
    assert "undefined" in str(m)
    assert m.to_dict()["log_loss_reduction"] is None
    json.dumps(m.to_dict(), allow_nan=False)
    assert m.macro_accuracy == pytest.approx(2 / 3)  # only class a counts


def test_names_indices_and_label_map_agree():
    y, probs, _ = random_case(7)
    by_index = evaluate(y, probs, NAMES)
    by_name = evaluate([NAMES[i] for i in y], probs, StubLabelMap(NAMES))
    by_series = evaluate(pd.Series([NAMES[i] for i in y]), probs, tuple(NAMES))
    by_float = evaluate(y.astype(float), probs, NAMES)
    for other in (by_name, by_series, by_float):
        assert other.to_dict() == by_index.to_dict()


def test_real_label_map():
    label_map = LabelMap(["b", "a"])  # LabelMap sorts: columns are a, b
    m = evaluate(["a", "b"], [[0.9, 0.1], [0.2, 0.8]], label_map)
    assert m.class_names == ["a", "b"] and m.micro_accuracy == 1.0


def test_str_is_the_mlnet_console_block():
    y, probs, _ = random_case(0)
    text = str(evaluate(y, probs, NAMES, top_k=2, name="ResnetV250"))
    lines = text.splitlines()
    assert lines[0] == lines[-1] == "*" * 60
    assert lines[1] == "*    Metrics for ResnetV250 multi-class classification model"
    assert lines[3].startswith("    AccuracyMacro = 0.") and "the closer to 1, the better" in lines[3]
    assert lines[4].startswith("    AccuracyMicro = ")
    assert "    LogLoss = " in text and "    LogLossReduction = " in text and "TopKAccuracy (k=2)" in text
    for i, name in enumerate(NAMES):
        assert f"LogLoss for class {i + 1} ({name}) = " in text
    assert "door_scratch) = 0.0000, no rows of this class evaluated" in text
    assert "no rows in the evaluated set: door_scratch" in text


def test_frames():
    y, probs, _ = random_case(1)
    m = evaluate(y, probs, NAMES, top_k=2)
    overall = m.to_frame()
    assert list(overall.columns) == ["metric", "value"]
    values = dict(zip(overall.metric, overall.value))
    assert values["MicroAccuracy"] == m.micro_accuracy and values["LogLossReduction"] == m.log_loss_reduction
    assert values["TopKAccuracy (k=2)"] == m.top_k_accuracy
    per_class = m.per_class_frame()
    assert list(per_class["class"]) == NAMES
    assert {"support", "recall", "precision", "log_loss"} <= set(per_class.columns)
    assert per_class.support.sum() == len(y)
    np.testing.assert_allclose(per_class.recall, m.recall)
    assert m.confusion_frame().loc["bumper_dent"].sum() == m.support[0]
    assert "TopKAccuracy (k=0)" not in set(evaluate(y, probs, NAMES).to_frame().metric)


def test_predictions_frame():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])
    frame = predictions_frame(["/data/img/1366.jpeg", "/data/img/7.jpeg", "x/9.png"], ["a", "a", "b"], probs, ["a", "b"])
    assert list(frame.columns[:5]) == ["image", "actual", "predicted", "probability", "correct"]
    assert list(frame.image) == ["1366.jpeg", "7.jpeg", "9.png"]
    assert list(frame.predicted) == ["a", "b", "a"]
    np.testing.assert_allclose(frame.probability, [0.8, 0.7, 0.5])
    assert list(frame.correct) == [True, False, False]
    assert frame.image_path[0] == "/data/img/1366.jpeg"
    assert list(predictions_frame(None, [0, 1, 1], probs, ["a", "b"]).image) == ["#0", "#1", "#2"]
    with pytest.raises(ConfigError, match="image_paths has 2 entries but y_true has 3 rows"):
        predictions_frame(["a.jpg", "b.jpg"], [0, 1, 1], probs, ["a", "b"])


# ---------------------------------------------------------------------------------------------- bad input
GOOD = np.array([[0.6, 0.4], [0.3, 0.7]])


@pytest.mark.parametrize(
    "y_true, probabilities, label_map, kwargs, message",
    [
        (["a", "wolf"], GOOD, ["a", "b"], {}, r"\['wolf'\] that are not classes .*row 1.*valid classes: a, b"),
        ([0, 2], GOOD, ["a", "b"], {}, r"y_true\[1\] = 2 is not a class index.*indices 0\.\.1: a, b"),
        ([0, -1], GOOD, ["a", "b"], {}, r"y_true\[1\] = -1 is not a class index"),
        ([0, 1.5], GOOD, ["a", "b"], {}, r"y_true\[1\] = 1.5 is not a whole number"),
        (["a", 1], GOOD, ["a", "b"], {}, r"mixes class names and numbers \(row 1 is 1\)"),
        ([[1, 0], [0, 1]], GOOD, ["a", "b"], {}, r"one label per row \(1-D\).*one-hot"),
        ([0, 1], GOOD, ["a", "b", "c"], {}, r"probabilities have 2 columns but the label map has 3 classes \(a, b, c\)"),
        ([0, 1, 1], GOOD, ["a", "b"], {}, r"y_true has 3 rows but probabilities have 2"),
        ([], np.zeros((0, 2)), ["a", "b"], {}, r"nothing to evaluate.*N = 0"),
        ([0, 1], [0.6, 0.4], ["a", "b"], {}, r"2-D array .*got shape \(2,\)"),
        ([0, 1], [[0.6, 0.4], [np.nan, 0.5]], ["a", "b"], {}, r"NaN or infinite values in 1 row\(s\): 1"),
        ([0, 1], [[2.5, -1.0], [0.3, 0.7]], ["a", "b"], {}, r"row 0, class 'b' has -1.*logits.*softmax"),
        ([0, 1], GOOD, ["a", "a"], {}, r"lists the class\(es\) \['a'\] more than once"),
        ([0, 1], GOOD, [], {}, r"label_map has no classes"),
        ([0, 1], GOOD, "ab", {}, r"not the string 'ab'"),
        ([0, 1], GOOD, ["a", "b"], {"top_k": 3}, r"top_k=3 exceeds the number of classes \(2\)"),
        ([0, 1], GOOD, ["a", "b"], {"top_k": -1}, r"top_k must be a whole number >= 0"),
    ],
)
def test_bad_inputs_have_clear_messages(y_true, probabilities, label_map, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        evaluate(y_true, probabilities, label_map, **kwargs)


def test_metrics_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_no_tensorflow_import():
    import subprocess
    import sys

    code = "import sys, workshop_utils.metrics, workshop_utils.plots; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
