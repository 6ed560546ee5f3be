"""ML.NET's multiclass metrics (``MulticlassClassificationEvaluator``), computed with scikit-learn.

Kept by hand, because sklearn differs from ML.NET there:
- predicted class = first argmax of the row (ties go to the lower class index, like ML.NET's stable sort;
  sklearn's top-k breaks ties towards the higher index);
- ``log_loss`` = mean of ``-ln(clamp(p_true, 1e-15, 1))``: ML.NET's clamp is applied first (sklearn clamps
  at float eps, and 1 to 1 - eps, which changes a loss by ~1e-16 only);
- ``log_loss_reduction`` = ``(H - log_loss) / H``, ``H = -(1/N) sum_i n_i ln(n_i / N)`` (prior = class
  frequencies of the evaluated set). With one class present H = 0 and ML.NET gives -inf or NaN: here NaN + a note.
``macro_accuracy`` = sklearn's balanced accuracy = mean recall over the classes *present in the evaluated set*;
``per_class_log_loss[i]`` = mean log-loss over the rows of class i (0 when absent). No TensorFlow here.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support
from sklearn.metrics import log_loss as sklearn_log_loss

from workshop_utils.core.errors import ConfigError
from workshop_utils.data import SET_ROLES

EPSILON = 1e-15  # ML.NET's clamp for the true-class probability before taking the logarithm
_PROBABILITY_TOLERANCE = 1e-6  # float32 softmax outputs may exceed 1 by a rounding error


def class_names(label_map: Any) -> list[str]:
    """The class names of a ``LabelMap`` (its ``.names``) or of a plain list of names, in column order."""
    if isinstance(label_map, str):
        raise ConfigError(f"label_map must be a LabelMap or a list of class names, not the string {label_map!r}; "
                          "pass e.g. LabelMap.load('labels.txt') or ['bumper_dent', 'bumper_scratch', ...].")
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
        raise ConfigError(f"label_map lists the class(es) {duplicates} more than once; each class needs one column.")
    return names


def _encode_labels(y_true: Any, names: list[str]) -> np.ndarray:
    """Class indices (int64) from indices or names; errors name the offending row and value."""
    if isinstance(y_true, (str, bytes)) or not hasattr(y_true, "__iter__"):
        raise ConfigError(f"y_true must be a sequence with one label per row, got {type(y_true).__name__} {y_true!r}.")
    values = np.asarray(y_true if hasattr(y_true, "__len__") else list(y_true), dtype=object)  # list(): generators
    if values.ndim != 1:
        raise ConfigError(f"y_true must be one label per row (1-D), got an array of shape {values.shape}; "
                          "pass class indices or class names, not one-hot rows (use argmax first).")
    is_name = np.array([isinstance(v, str) for v in values], dtype=bool)
    if is_name.all():  # pandas' indexer keeps the label map's column order (sklearn's LabelEncoder sorts)
        indices = pd.Index(names).get_indexer(values.astype(str))
        unknown_rows = np.flatnonzero(indices < 0)
        if unknown_rows.size:
            raise ConfigError(f"y_true has label(s) {sorted(set(values[unknown_rows]))} that are not classes of the "
                              f"label map (first at row {unknown_rows[0]}); valid classes: {', '.join(names)}. "
                              "Evaluate with the LabelMap the model was trained with, or drop rows of classes the "
                              "model does not know.")
        return indices.astype(np.int64)
    if is_name.any():
        row = int(np.flatnonzero(~is_name)[0]) if is_name[0] else int(np.flatnonzero(is_name)[0])
        raise ConfigError(f"y_true mixes class names and numbers (row {row} is {values[row]!r}); "
                          "use all class names or all class indices.")
    n_classes = len(names)
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ConfigError(f"y_true[{i}] = {v!r} is neither a class index nor a class name; "
                              f"valid classes: {', '.join(names)}.")
        if not (math.isfinite(float(v)) and float(v) == int(v)):
            raise ConfigError(f"y_true[{i}] = {v!r} is not a whole number; class indices are 0..{n_classes - 1}.")
    indices = values.astype(np.int64)
    bad = np.flatnonzero((indices < 0) | (indices >= n_classes))
    if bad.size:
        raise ConfigError(f"y_true[{bad[0]}] = {indices[bad[0]]} is not a class index ({bad.size} row(s) out of range"
                          f"); the label map has {n_classes} classes, indices 0..{n_classes - 1}: {', '.join(names)}.")
    return indices


def _check_probabilities(probabilities: Any, n_rows: int, names: list[str]) -> np.ndarray:
    """The N×C float64 probability matrix, after checking shape, finiteness and range."""
    try:
        probs = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"probabilities must be an N×C array of numbers: {exc}") from None
    if probs.ndim != 2:
        raise ConfigError(f"probabilities must be a 2-D array (one row per image, one column per class), "
                          f"got shape {probs.shape}.")
    if probs.shape[1] != len(names):
        raise ConfigError(f"probabilities have {probs.shape[1]} columns but the label map has {len(names)} classes "
                          f"({', '.join(names)}); use the LabelMap the model was trained with.")
    if probs.shape[0] != n_rows:
        raise ConfigError(f"y_true has {n_rows} rows but probabilities have {probs.shape[0]}; they must describe "
                          "the same images in the same order.")
    if n_rows == 0:
        raise ConfigError("nothing to evaluate: y_true and probabilities have no rows (N = 0).")
    bad_rows = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if bad_rows.size:
        shown = ", ".join(str(r) for r in bad_rows[:5]) + (" ..." if bad_rows.size > 5 else "")
        raise ConfigError(f"probabilities contain NaN or infinite values in {bad_rows.size} row(s): {shown}; "
                          "the model produced invalid scores for these images (check their features/inputs).")
    too_low = probs.min() < -_PROBABILITY_TOLERANCE
    if too_low or probs.max() > 1 + _PROBABILITY_TOLERANCE:
        row, col = np.unravel_index(np.argmin(probs) if too_low else np.argmax(probs), probs.shape)
        raise ConfigError(f"probabilities must lie in [0, 1], but row {row}, class {names[col]!r} has "
                          f"{probs[row, col]:.6g}; these look like logits or raw scores, apply a softmax first.")
    return probs


@dataclass
class MulticlassMetrics:
    """ML.NET's multiclass metrics for one evaluated set; ``print(metrics)`` shows ML.NET's console block. Arrays
    are indexed by class (label map order); ``confusion_matrix`` rows = true class, columns = predicted class."""

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
        role = f" ({self.role})" if self.role else ""
        return f"Metrics on the {self.subset} set{role}" if self.subset else "Metrics"

    def __str__(self) -> str:
        def fmt(value: float) -> str:
            return "NaN" if math.isnan(value) else f"{value:.4f}"

        rule = "*" * 60
        better = "a value between 0 and 1, the closer to 1, the better"
        lines = [
            rule,
            *([f"*    {self.heading}"] if self.subset else []),
            f"*    Metrics for {self.name + ' ' if self.name else ''}multi-class classification model",
            "*" + "-" * 59,
            f"    AccuracyMacro = {fmt(self.macro_accuracy)}, {better}",
            f"    AccuracyMicro = {fmt(self.micro_accuracy)}, {better}",
            f"    LogLoss = {fmt(self.log_loss)}, the closer to 0, the better",
            f"    LogLossReduction = {fmt(self.log_loss_reduction)}, the closer to 1, the better"
            + (" (undefined: only one class present)" if math.isnan(self.log_loss_reduction) else ""),
        ]
        if self.top_k_accuracy is not None:
            lines.append(f"    TopKAccuracy (k={self.top_k}) = {fmt(self.top_k_accuracy)}, {better}")
        for i, (class_name, loss) in enumerate(zip(self.class_names, self.per_class_log_loss)):
            suffix = "the closer to 0, the better" if self.support[i] else "no rows of this class evaluated"
            lines.append(f"    LogLoss for class {i + 1} ({class_name}) = {fmt(float(loss))}, {suffix}")
        lines.append(f"    Evaluated rows = {self.n_samples}")
        lines += [f"    Note: {note}" for note in self.notes]
        return "\n".join([*lines, rule])

    def to_frame(self) -> pd.DataFrame:
        """The overall metrics as a tidy table (columns metric, value) for notebooks and reports."""
        rows = [("MicroAccuracy", self.micro_accuracy), ("MacroAccuracy", self.macro_accuracy),
                ("LogLoss", self.log_loss), ("LogLossReduction", self.log_loss_reduction)]
        if self.top_k_accuracy is not None:
            rows.append((f"TopKAccuracy (k={self.top_k})", self.top_k_accuracy))
        return pd.DataFrame([*rows, ("Rows", float(self.n_samples))], columns=["metric", "value"])

    def per_class_frame(self) -> pd.DataFrame:
        """One row per class: support, recall (= per-class accuracy), precision and log-loss."""
        return pd.DataFrame({"class": self.class_names, "support": self.support.astype(int),
                             "predicted": self.confusion_matrix.sum(axis=0).astype(int), "recall": self.recall,
                             "precision": self.precision, "log_loss": self.per_class_log_loss})

    def confusion_frame(self) -> pd.DataFrame:
        """The confusion matrix as a labelled table (index = actual class, columns = predicted class)."""
        frame = pd.DataFrame(self.confusion_matrix, index=self.class_names, columns=self.class_names)
        frame.index.name, frame.columns.name = "actual", "predicted"
        return frame

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes None) for model cards and logs."""
        def per_class(values: np.ndarray, kind: type = float) -> dict[str, Any]:
            return dict(zip(self.class_names, map(kind, values)))

        def json_float(value: float | None) -> float | None:  # NaN is not JSON
            return None if value is None or math.isnan(value) else float(value)

        overall = ("micro_accuracy", "macro_accuracy", "log_loss", "log_loss_reduction")
        return {
            **{key: json_float(getattr(self, key)) for key in overall},
            "top_k": self.top_k, "top_k_accuracy": json_float(self.top_k_accuracy),
            "per_class_log_loss": per_class(self.per_class_log_loss), "precision": per_class(self.precision),
            "recall": per_class(self.recall), "support": per_class(self.support, int),
            "confusion_matrix": self.confusion_matrix.astype(int).tolist(), "class_names": list(self.class_names),
            "n_samples": self.n_samples, "notes": list(self.notes), "subset": self.subset, "role": self.role,
        }


def true_class_rank(probabilities: np.ndarray, y: np.ndarray) -> np.ndarray:
    """0-based rank of each row's true class in ML.NET's order (descending score, ties to lower index)."""
    p_true = probabilities[np.arange(len(y)), y][:, None]
    columns = np.arange(probabilities.shape[1])[None, :]
    ahead = (probabilities > p_true) | ((probabilities == p_true) & (columns < y[:, None]))
    return ahead.sum(axis=1)


def evaluate(y_true: Iterable[int] | Iterable[str], probabilities: Any, label_map: Any, top_k: int = 0, *,
             name: str = "", subset: str = "", role: str | None = None) -> MulticlassMetrics:
    """ML.NET's multiclass metrics of ``probabilities`` (N×C, columns in ``label_map`` order: a ``LabelMap`` or a
    list of names) against ``y_true`` (class indices or names). ``name``, ``subset`` and ``role`` (default
    ``data.SET_ROLES[subset]``) go into the printed header: a printed number always says where it comes from."""
    names = class_names(label_map)
    y = _encode_labels(y_true, names)
    probs = _check_probabilities(probabilities, len(y), names)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ConfigError(f"top_k must be a whole number >= 0 (0 = not computed), got {top_k!r}.")
    if top_k > len(names):
        raise ConfigError(f"top_k={top_k} exceeds the number of classes ({len(names)}); use 1..{len(names)}.")
    if len(names) < 2:
        raise ConfigError(f"the label map has only the class {names[0]!r}; a classifier needs at least two.")

    n, labels = len(y), range(len(names))
    predicted = np.argmax(probs, axis=1)  # first maximum: ties go to the lower class index, as in ML.NET
    confusion = confusion_matrix(y, predicted, labels=labels)
    precision, recall, _, support = precision_recall_fscore_support(y, predicted, labels=labels, zero_division=0)
    present = support > 0
    clamped = np.clip(probs, EPSILON, 1.0)  # ML.NET's clamp (also cuts float32 rounding above 1)
    with warnings.catch_warnings():
        # float32 softmax rows sum to 1 only within ~1e-7, and an absent class may be predicted: both warn.
        warnings.simplefilter("ignore", UserWarning)
        macro = balanced_accuracy_score(y, predicted)
        log_loss = sklearn_log_loss(y, clamped, labels=labels)
        per_class_loss = np.array([
            sklearn_log_loss(y, clamped, labels=labels, sample_weight=(y == k).astype(np.float64)) if present[k]
            else 0.0 for k in labels
        ])

    notes: list[str] = []
    frequencies = support[present] / n
    entropy = float(-(frequencies * np.log(frequencies)).sum())
    if present.sum() == 1:
        reduction = float("nan")
        notes.append(f"only one class ({names[int(np.flatnonzero(present)[0])]}) is present, so the prior log-loss "
                     "H is 0 and LogLossReduction (H - LogLoss) / H is undefined (ML.NET reports -Infinity or NaN); "
                     "reported as NaN.")
    else:
        reduction = (entropy - log_loss) / entropy
    absent = [names[i] for i in np.flatnonzero(~present)]
    if absent:
        notes.append(f"class(es) with no rows in the evaluated set: {', '.join(absent)}; they are left out of "
                     "AccuracyMacro and their per-class log-loss and recall are reported as 0.")

    return MulticlassMetrics(
        micro_accuracy=float(np.trace(confusion) / n), macro_accuracy=macro, log_loss=log_loss,
        log_loss_reduction=reduction, per_class_log_loss=per_class_loss,
        top_k_accuracy=float((true_class_rank(probs, y) < top_k).mean()) if top_k > 0 else None, top_k=int(top_k),
        confusion_matrix=confusion, precision=precision, recall=recall, class_names=names, support=support,
        n_samples=int(n), name=name, notes=notes, subset=subset,
        role=SET_ROLES.get(subset, "") if role is None else role,
    )


def predictions_frame(image_paths: Sequence[str | Path] | None, y_true: Iterable[int] | Iterable[str],
                      probabilities: Any, label_map: Any) -> pd.DataFrame:
    """The lab's listing: image (file name), actual, predicted, probability (of the predicted class), correct.

    ``image_path`` keeps the full path (for galleries); ``image_paths=None`` numbers the rows instead.
    """
    names = class_names(label_map)
    y = _encode_labels(y_true, names)
    probs = _check_probabilities(probabilities, len(y), names)
    paths = [f"#{i}" for i in range(len(y))] if image_paths is None else [str(p) for p in image_paths]
    if len(paths) != len(y):
        raise ConfigError(f"image_paths has {len(paths)} entries but y_true has {len(y)} rows; they must describe "
                          "the same images in the same order.")
    predicted = np.argmax(probs, axis=1)
    return pd.DataFrame({"image": [Path(p).name for p in paths], "actual": [names[i] for i in y],
                         "predicted": [names[i] for i in predicted], "probability": probs[np.arange(len(y)), predicted],
                         "correct": y == predicted, "image_path": paths})
