"""The scorers' common base: a Prediction per image, and ImageScorer's predict/score_files/score_frame on top of one batch method."""
from __future__ import annotations

import html
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workshop_utils.core.errors import (
    InvalidImageError,
    LabelsFileError,
    UnscoredImagesWarning,
)
from workshop_utils.core.formats import (
    DEFAULT_MAX_PIXELS,
    read_image_file,
)
from workshop_utils.core.runtime import import_tensorflow

tf = import_tensorflow()
tf = import_tensorflow()


@dataclass(frozen=True)
class Prediction:
    """One image's result: the top label, its probability and every class's score (same order as the model)."""

    label: str
    probability: float
    scores: Mapping[str, float] = field(repr=False)
    source: str | None = None  # the file name, when scored from a file

    @classmethod
    def from_scores(cls, scores: Iterable[float], labels: list[str], source: str | Path | None = None) -> "Prediction":
        """Build from one row of probabilities; ties go to the lower class index (like ``argmax``)."""
        values = [float(s) for s in scores]
        if len(values) != len(labels):
            raise LabelsFileError(
                f"The model returned {len(values)} scores but there are {len(labels)} labels; "
                "use the labels file exported with this model."
            )
        best = max(range(len(values)), key=lambda i: (values[i], -i))
        return cls(labels[best], values[best], dict(zip(labels, values)), None if source is None else str(source))

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The k most likely classes with their probabilities, best first."""
        return sorted(self.scores.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (for ``--json`` output and web responses)."""
        return {
            "source": self.source, "label": self.label, "probability": self.probability, "scores": dict(self.scores)
        }

    def __str__(self) -> str:
        head = f"{self.source}: " if self.source else ""
        others = ", ".join(f"{name} {p:.1%}" for name, p in self.top(3)[1:] if not math.isnan(p))
        return f"{head}{self.label} ({self.probability:.1%})" + (f"   next: {others}" if others else "")

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td style='text-align:right'>{p:.1%}</td></tr>"
            for name, p in self.top(len(self.scores))
        )
        title = html.escape(f"{self.source}: ") if self.source else ""
        return f"<b>{title}{html.escape(self.label)}</b> ({self.probability:.1%})<table>{rows}</table>"


def score_frame(
    df: "pandas.DataFrame",  # noqa: F821
    predict_proba: Any,
    labels: list[str],
    *,
    path_column: str = "image_path",
    batch_size: int = 32,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> "pandas.DataFrame":  # noqa: F821
    """Score each row's image file in batches; bad images are reported per row, never dropped silently.

    Returns a copy of ``df`` (same index and columns) plus ``predicted`` (label or None), ``probability``,
    one ``score_<class>`` column per class, and ``error`` (None, or why the row could not be scored: missing
    file, not a JPEG/PNG/GIF/BMP/WebP image, too large, truncated). A warning counts the failed rows.
    ``predict_proba(list_of_bytes, names)`` returns an (N, C) array and raises InvalidImageError on bad images.
    """
    import pandas as pd

    if path_column not in df.columns:
        raise KeyError(f"The frame has no {path_column!r} column (columns: {list(df.columns)}); pass path_column=...")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    paths = [str(p) for p in df[path_column].tolist()]
    n, width = len(paths), len(labels)
    scores = np.full((n, width), np.nan)
    errors: list[str | None] = [None] * n
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="Scoring", unit="batch")
    for start in starts:
        rows, blobs = [], []
        for i in range(start, min(n, start + batch_size)):
            try:
                blobs.append(read_image_file(paths[i], max_pixels=max_pixels))
                rows.append(i)
            except (OSError, InvalidImageError) as exc:
                errors[i] = str(exc)
        if not rows:
            continue
        try:
            scores[rows] = predict_proba(blobs, [paths[i] for i in rows])
        except InvalidImageError:  # one bad image fails its whole batch: find it by scoring one by one
            for i, data in zip(rows, blobs):
                try:
                    scores[i] = predict_proba([data], [paths[i]])[0]
                except InvalidImageError as exc:
                    errors[i] = str(exc)
    ok = np.array([e is None for e in errors], dtype=bool)
    best = np.argmax(np.nan_to_num(scores, nan=-np.inf), axis=1) if width else np.zeros(n, dtype=int)
    out = df.copy()
    predicted = [labels[b] if good else None for b, good in zip(best, ok)]
    out["predicted"] = pd.Series(predicted, index=df.index, dtype=object)
    out["probability"] = np.where(ok, scores[np.arange(n), best] if n else np.array([]), np.nan)
    for j, name in enumerate(labels):
        out[f"score_{name}"] = scores[:, j]
    out["error"] = pd.Series(errors, index=df.index, dtype=object)
    failed = int((~ok).sum())
    if failed:
        first = next(e for e in errors if e is not None)
        warnings.warn(
            f"{failed} of {n} images could not be scored (first: {first}); see the 'error' column.",
            UnscoredImagesWarning,
            stacklevel=3,  # the caller of predict_frame
        )
    return out


class ImageScorer:
    """What every scorer offers on top of its own ``predict_proba``: one image's bytes, a file, a frame.

    Subclasses set ``labels`` (class names, or None when unknown) and ``max_pixels``.
    """

    labels: list[str] | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def predict_proba(self, images: Any, names: Any = None) -> Any:  # (N, C) probabilities
        raise NotImplementedError

    def _labels_for(self, width: int) -> list[str]:
        return self.labels if self.labels is not None else [f"class_{i}" for i in range(width)]

    def predict_bytes(self, data: bytes, name: str | Path | None = None) -> Prediction:
        """Score one encoded image (e.g. an upload); ``name`` only labels messages and the result."""
        scores = self.predict_proba([data], [name])[0]
        return Prediction.from_scores(scores, self._labels_for(len(scores)), source=name)

    def predict_file(self, path: str | Path) -> Prediction:
        """Score one image file."""
        return self.predict_bytes(read_image_file(path, max_pixels=self.max_pixels), name=path)

    def predict_frame(
        self,
        df: Any,  # pandas.DataFrame
        path_column: str = "image_path",
        batch_size: int = 32,
        progress: bool = False,
    ) -> Any:  # pandas.DataFrame
        """Score every row's image file in batches.

        Returns a copy of ``df`` plus ``predicted``, ``probability``, ``score_<class>`` columns and ``error``:
        bad images stay in the frame with predicted=None, probability NaN and the reason in ``error``
        (an UnscoredImagesWarning counts them), so row order and index always match the input.
        """
        if self.labels is None:
            raise LabelsFileError("predict_frame needs labels; pass labels=[...] or a labels.txt path.")
        return score_frame(df, self.predict_proba, self.labels, path_column=path_column, batch_size=batch_size,
                           max_pixels=self.max_pixels, progress=progress)
