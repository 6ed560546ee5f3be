"""ML.NET's multiclass evaluation metrics, computed exactly as ``MulticlassClassification.Evaluate`` does.

``evaluate(y_true, probabilities, label_map)`` returns a :class:`MulticlassMetrics` with micro/macro
accuracy, log-loss, log-loss reduction, per-class log-loss, top-k accuracy, the confusion matrix and
per-class precision/recall. The formulas follow ML.NET's ``MulticlassClassificationEvaluator``:

- predicted class = first argmax of the row (ties go to the lower class index, like ML.NET's stable sort);
- ``micro_accuracy`` = correct rows / N;
- ``macro_accuracy`` = mean over classes *present in the evaluated set* of ``CM[i, i] / n_i``;
- ``log_loss`` = mean of ``-ln(clamp(p_true, 1e-15, 1))``;
- ``log_loss_reduction`` = ``(H - log_loss) / H`` with ``H = -(1/N) sum_i n_i ln(n_i / N)`` (the prior is
  the class frequencies of the evaluated set). With a single class present H = 0 and ML.NET returns
  -inf or NaN; here it is NaN and the metrics carry a note saying why;
- ``per_class_log_loss[i]`` = mean log-loss over the rows of class i (0 when the class is absent);
- ``top_k_accuracy`` = share of rows whose true class ranks within the top k (same tie rule).

No TensorFlow here: the inputs are plain arrays, so the module also evaluates any other model.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workshop_utils.core.errors import ConfigError
from workshop_utils.data import SET_ROLES

EPSILON = 1e-15
"""ML.NET's clamp for the true-class probability before taking the logarithm."""


_PROBABILITY_TOLERANCE = 1e-6  # float32 softmax outputs may exceed 1 by a rounding error


# --------------------------------------------------------------------------------------------------
# Input normalisation
# --------------------------------------------------------------------------------------------------
def class_names(label_map: Any) -> list[str]:
    """The class names of a ``LabelMap`` (its ``.names``) or of a plain list of names, in column order."""
    if isinstance(label_map, str):
        raise ConfigError(
            f"label_map must be a LabelMap or a list of class names, not the string {label_map!r}; "
            "pass e.g. LabelMap.load('labels.txt') or ['bumper_dent', 'bumper_scratch', ...]."
        )
    names = getattr(label_map, "names", label_map)
    if names is None:
        raise ConfigError("label_map is None; pass the LabelMap the model was trained with.")
    try:
        names = [str(name) for name in names]
    except TypeError:
        raise ConfigError(
            f"label_map must be a LabelMap or a list of class names, got {type(label_map).__name__}."
        ) from None
    if not names:
        raise ConfigError("label_map has no classes; pass the LabelMap the model was trained with.")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(
            f"label_map lists the class(es) {duplicates} more than once; each class needs one column."
        )
    return names


def _encode_labels(y_true: Any, names: list[str]) -> np.ndarray:
    """Class indices (int64) from indices or names; errors name the offending row and value."""
    if isinstance(y_true, (str, bytes)) or np.ndim(y_true) == 0 and not hasattr(y_true, "__iter__"):
        raise ConfigError(
            f"y_true must be a sequence with one label per row, got {type(y_true).__name__} {y_true!r}."
        )
    if not hasattr(y_true, "__len__") and not hasattr(y_true, "__array__"):
        y_true = list(y_true)  # a generator or other one-shot iterable
    raw = np.asarray(y_true)
    n_classes = len(names)
    if raw.ndim == 1 and raw.dtype.kind in "iu":  # the common case, vectorised
        indices = raw.astype(np.int64)
        bad = np.flatnonzero((indices < 0) | (indices >= n_classes))
        if bad.size:
            raise ConfigError(
                f"y_true[{bad[0]}] = {indices[bad[0]]} is not a class index ({bad.size} row(s) out of "
                f"range); the label map has {n_classes} classes, indices 0..{n_classes - 1}: "
                f"{', '.join(names)}."
            )
        return indices
    values = np.asarray(y_true, dtype=object)
    if values.ndim != 1:
        raise ConfigError(
            f"y_true must be one label per row (1-D), got an array of shape {values.shape}; "
            "pass class indices or class names, not one-hot rows (use argmax first)."
        )
    is_name = np.array([isinstance(v, (str, np.str_)) for v in values], dtype=bool)
    if is_name.all():
        lookup = {name: i for i, name in enumerate(names)}
        unknown_rows = [i for i, v in enumerate(values) if str(v) not in lookup]
        if unknown_rows:
            unknown = sorted({str(values[i]) for i in unknown_rows})
            raise ConfigError(
                f"y_true has label(s) {unknown} that are not classes of the label map (first at row "
                f"{unknown_rows[0]}); valid classes: {', '.join(names)}. Evaluate with the LabelMap the "
                "model was trained with, or drop rows of classes the model does not know."
            )
        return np.array([lookup[str(v)] for v in values], dtype=np.int64)
    if is_name.any():
        row = int(np.flatnonzero(~is_name)[0]) if is_name[0] else int(np.flatnonzero(is_name)[0])
        raise ConfigError(
            f"y_true mixes class names and numbers (row {row} is {values[row]!r}); "
            "use all class names or all class indices."
        )
    indices = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ConfigError(
                f"y_true[{i}] = {v!r} is neither a class index nor a class name; "
                f"valid classes: {', '.join(names)}."
            )
        if not (math.isfinite(float(v)) and float(v) == int(v)):
            raise ConfigError(
                f"y_true[{i}] = {v!r} is not a whole number; class indices are 0..{n_classes - 1}."
            )
        indices[i] = int(v)
    bad = np.flatnonzero((indices < 0) | (indices >= n_classes))
    if bad.size:
        raise ConfigError(
            f"y_true[{bad[0]}] = {indices[bad[0]]} is not a class index ({bad.size} row(s) out of range); "
            f"the label map has {n_classes} classes, indices 0..{n_classes - 1}: {', '.join(names)}."
        )
    return indices


def _check_probabilities(probabilities: Any, n_rows: int, names: list[str]) -> np.ndarray:
    """The N×C float64 probability matrix, after checking shape, finiteness and range."""
    try:
        probs = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"probabilities must be an N×C array of numbers: {exc}") from None
    n_classes = len(names)
    if probs.ndim != 2:
        raise ConfigError(
            f"probabilities must be a 2-D array (one row per image, one column per class), "
            f"got shape {probs.shape}."
        )
    if probs.shape[1] != n_classes:
        raise ConfigError(
            f"probabilities have {probs.shape[1]} columns but the label map has {n_classes} classes "
            f"({', '.join(names)}); use the LabelMap the model was trained with."
        )
    if probs.shape[0] != n_rows:
        raise ConfigError(
            f"y_true has {n_rows} rows but probabilities have {probs.shape[0]}; they must describe "
            "the same images in the same order."
        )
    if n_rows == 0:
        raise ConfigError("nothing to evaluate: y_true and probabilities have no rows (N = 0).")
    bad_rows = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if bad_rows.size:
        shown = ", ".join(str(r) for r in bad_rows[:5]) + (" ..." if bad_rows.size > 5 else "")
        raise ConfigError(
            f"probabilities contain NaN or infinite values in {bad_rows.size} row(s): {shown}; "
            "the model produced invalid scores for these images (check their features/inputs)."
        )
    low = probs.min()
    high = probs.max()
    if low < -_PROBABILITY_TOLERANCE or high > 1 + _PROBABILITY_TOLERANCE:
        row, col = np.unravel_index(
            np.argmin(probs) if low < -_PROBABILITY_TOLERANCE else np.argmax(probs), probs.shape
        )
        raise ConfigError(
            f"probabilities must lie in [0, 1], but row {row}, class {names[col]!r} has "
            f"{probs[row, col]:.6g}; these look like logits or raw scores, apply a softmax first."
        )
    return probs


# --------------------------------------------------------------------------------------------------
# The metrics
# --------------------------------------------------------------------------------------------------
def _fmt(value: float) -> str:
    return "NaN" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _json_float(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


@dataclass
class MulticlassMetrics:
    """ML.NET's multiclass metrics for one evaluated set; ``print(metrics)`` shows ML.NET's console block.

    Array fields are indexed by class (the label map's order); ``confusion_matrix`` rows are the true
    class and columns the predicted class.
    """

    micro_accuracy: float
    macro_accuracy: float
    log_loss: float
    log_loss_reduction: float  # NaN when only one class is present (H = 0), see ``notes``
    per_class_log_loss: np.ndarray
    top_k_accuracy: float | None  # None when evaluate(..., top_k=0)
    top_k: int
    confusion_matrix: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    class_names: list[str]
    support: np.ndarray  # rows per true class in the evaluated set
    n_samples: int
    name: str = ""
    notes: list[str] = field(default_factory=list)
    subset: str = ""  # the evaluated set: "train", "validation" or "test"
    role: str = ""  # what that set did, e.g. "never used for choosing" (data.SET_ROLES)

    @property
    def heading(self) -> str:
        """'Metrics on the test set (never used for choosing)': which set, and what it was used for."""
        if not self.subset:
            return "Metrics"
        return f"Metrics on the {self.subset} set" + (f" ({self.role})" if self.role else "")

    @property
    def per_class_accuracy(self) -> np.ndarray:
        """Per-class accuracy as ML.NET's macro average uses it (= recall; 0 for absent classes)."""
        return self.recall

    @property
    def present(self) -> np.ndarray:
        """Boolean mask of the classes that have at least one row in the evaluated set."""
        return self.support > 0

    def __str__(self) -> str:
        rule = "*" * 60
        title = f"Metrics for {self.name} multi-class classification model" if self.name else (
            "Metrics for multi-class classification model"
        )
        lines = [
            rule,
            *([f"*    {self.heading}"] if self.subset else []),
            f"*    {title}",
            "*" + "-" * 59,
            f"    AccuracyMacro = {_fmt(self.macro_accuracy)}, a value between 0 and 1, the closer to 1, the better",
            f"    AccuracyMicro = {_fmt(self.micro_accuracy)}, a value between 0 and 1, the closer to 1, the better",
            f"    LogLoss = {_fmt(self.log_loss)}, the closer to 0, the better",
            f"    LogLossReduction = {_fmt(self.log_loss_reduction)}, the closer to 1, the better"
            + (" (undefined: only one class present)" if math.isnan(self.log_loss_reduction) else ""),
        ]
        if self.top_k_accuracy is not None:
            lines.append(
                f"    TopKAccuracy (k={self.top_k}) = {_fmt(self.top_k_accuracy)}, "
                "a value between 0 and 1, the closer to 1, the better"
            )
        for i, (class_name, loss) in enumerate(zip(self.class_names, self.per_class_log_loss)):
            suffix = "the closer to 0, the better" if self.support[i] else "no rows of this class evaluated"
            lines.append(f"    LogLoss for class {i + 1} ({class_name}) = {_fmt(float(loss))}, {suffix}")
        lines.append(f"    Evaluated rows = {self.n_samples}")
        for note in self.notes:
            lines.append(f"    Note: {note}")
        lines.append(rule)
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        """The overall metrics as a tidy table (columns metric, value) for notebooks and reports."""
        rows = [
            ("MicroAccuracy", self.micro_accuracy),
            ("MacroAccuracy", self.macro_accuracy),
            ("LogLoss", self.log_loss),
            ("LogLossReduction", self.log_loss_reduction),
        ]
        if self.top_k_accuracy is not None:
            rows.append((f"TopKAccuracy (k={self.top_k})", self.top_k_accuracy))
        rows.append(("Rows", float(self.n_samples)))
        return pd.DataFrame(rows, columns=["metric", "value"])

    def per_class_frame(self) -> pd.DataFrame:
        """One row per class: support, recall (= per-class accuracy), precision and log-loss."""
        return pd.DataFrame(
            {
                "class": self.class_names,
                "support": self.support.astype(int),
                "predicted": self.confusion_matrix.sum(axis=0).astype(int),
                "recall": self.recall,
                "precision": self.precision,
                "log_loss": self.per_class_log_loss,
            }
        )

    def confusion_frame(self) -> pd.DataFrame:
        """The confusion matrix as a labelled table (index = actual class, columns = predicted class)."""
        frame = pd.DataFrame(self.confusion_matrix, index=self.class_names, columns=self.class_names)
        frame.index.name = "actual"
        frame.columns.name = "predicted"
        return frame

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes None) for model cards and logs."""
        return {
            "micro_accuracy": _json_float(self.micro_accuracy),
            "macro_accuracy": _json_float(self.macro_accuracy),
            "log_loss": _json_float(self.log_loss),
            "log_loss_reduction": _json_float(self.log_loss_reduction),
            "top_k": self.top_k,
            "top_k_accuracy": _json_float(self.top_k_accuracy),
            "per_class_log_loss": dict(zip(self.class_names, map(float, self.per_class_log_loss))),
            "precision": dict(zip(self.class_names, map(float, self.precision))),
            "recall": dict(zip(self.class_names, map(float, self.recall))),
            "support": dict(zip(self.class_names, map(int, self.support))),
            "confusion_matrix": self.confusion_matrix.astype(int).tolist(),
            "class_names": list(self.class_names),
            "n_samples": self.n_samples,
            "notes": list(self.notes),
            "subset": self.subset,
            "role": self.role,
        }


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def true_class_rank(probabilities: np.ndarray, y: np.ndarray) -> np.ndarray:
    """0-based rank of each row's true class in ML.NET's order (descending score, ties to lower index)."""
    p_true = probabilities[np.arange(len(y)), y][:, None]
    columns = np.arange(probabilities.shape[1])[None, :]
    ahead = (probabilities > p_true) | ((probabilities == p_true) & (columns < y[:, None]))
    return ahead.sum(axis=1)


def evaluate(
    y_true: Iterable[int] | Iterable[str],
    probabilities: Any,
    label_map: Any,
    top_k: int = 0,
    *,
    name: str = "",
    subset: str = "",
    role: str | None = None,
) -> MulticlassMetrics:
    """Evaluate class probabilities against the true labels with ML.NET's multiclass definitions.

    ``y_true``: class indices or class names; ``probabilities``: N×C, columns in ``label_map`` order
    (a ``LabelMap`` or a plain list of names taken as given); ``name`` goes into the printed header, and so do
    ``subset`` (which set: train, validation, test) and ``role`` (what it was used for; default
    ``data.SET_ROLES[subset]``), so that a printed number always says where it comes from.
    """
    names = class_names(label_map)
    y = _encode_labels(y_true, names)
    probs = _check_probabilities(probabilities, len(y), names)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ConfigError(f"top_k must be a whole number >= 0 (0 = not computed), got {top_k!r}.")
    if top_k > len(names):
        raise ConfigError(f"top_k={top_k} exceeds the number of classes ({len(names)}); use 1..{len(names)}.")

    n, n_classes = probs.shape
    predicted = np.argmax(probs, axis=1)  # first maximum: ties go to the lower class index, as in ML.NET
    confusion = np.bincount(y * n_classes + predicted, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )
    support = confusion.sum(axis=1)
    present = support > 0
    correct = np.diag(confusion)

    recall = _safe_divide(correct.astype(np.float64), support.astype(np.float64))
    precision = _safe_divide(correct.astype(np.float64), confusion.sum(axis=0).astype(np.float64))
    micro = float(correct.sum() / n)
    macro = float(recall[present].mean())

    p_true = np.clip(probs[np.arange(n), y], EPSILON, 1.0)
    row_loss = -np.log(p_true)
    log_loss = float(row_loss.mean())
    per_class_loss = _safe_divide(np.bincount(y, weights=row_loss, minlength=n_classes), support)

    notes: list[str] = []
    frequencies = support[present] / n
    entropy = float(-(frequencies * np.log(frequencies)).sum())
    if present.sum() == 1:
        reduction = float("nan")
        only = names[int(np.flatnonzero(present)[0])]
        notes.append(
            f"only one class ({only}) is present, so the prior log-loss H is 0 and LogLossReduction "
            "(H - LogLoss) / H is undefined (ML.NET reports -Infinity or NaN); reported as NaN."
        )
    else:
        reduction = (entropy - log_loss) / entropy

    absent = [names[i] for i in np.flatnonzero(~present)]
    if absent:
        notes.append(
            f"class(es) with no rows in the evaluated set: {', '.join(absent)}; they are left out of "
            "AccuracyMacro and their per-class log-loss and recall are reported as 0."
        )

    top_k_accuracy = None
    if top_k > 0:
        top_k_accuracy = float((true_class_rank(probs, y) < top_k).mean())

    return MulticlassMetrics(
        micro_accuracy=micro,
        macro_accuracy=macro,
        log_loss=log_loss,
        log_loss_reduction=reduction,
        per_class_log_loss=per_class_loss,
        top_k_accuracy=top_k_accuracy,
        top_k=int(top_k),
        confusion_matrix=confusion,
        precision=precision,
        recall=recall,
        class_names=names,
        support=support,
        n_samples=int(n),
        name=name,
        notes=notes,
        subset=subset,
        role=SET_ROLES.get(subset, "") if role is None else role,
    )


def predictions_frame(
    image_paths: Sequence[str | Path] | None,
    y_true: Iterable[int] | Iterable[str],
    probabilities: Any,
    label_map: Any,
) -> pd.DataFrame:
    """The lab's actual-vs-predicted listing: image (file name), actual, predicted, probability, correct.

    ``probability`` is the score of the predicted class; ``image_path`` keeps the full path (for
    galleries). ``image_paths=None`` numbers the rows instead.
    """
    names = class_names(label_map)
    y = _encode_labels(y_true, names)
    probs = _check_probabilities(probabilities, len(y), names)
    if image_paths is None:
        paths = [f"#{i}" for i in range(len(y))]
    else:
        paths = [str(p) for p in image_paths]
        if len(paths) != len(y):
            raise ConfigError(
                f"image_paths has {len(paths)} entries but y_true has {len(y)} rows; they must describe "
                "the same images in the same order."
            )
    predicted = np.argmax(probs, axis=1)
    return pd.DataFrame(
        {
            "image": [Path(p).name for p in paths],
            "actual": [names[i] for i in y],
            "predicted": [names[i] for i in predicted],
            "probability": probs[np.arange(len(y)), predicted],
            "correct": y == predicted,
            "image_path": paths,
        }
    )
