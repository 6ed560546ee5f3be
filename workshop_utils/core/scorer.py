"""What every scorer shares (no TensorFlow): the Prediction per image and ImageScorer's predict_* methods on top
of a subclass's one batch method, ``predict_proba``."""
from __future__ import annotations

import html
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from workshop_utils.core.errors import InvalidImageError, LabelsFileError, UnscoredImagesWarning
from workshop_utils.core.formats import DEFAULT_MAX_PIXELS, read_image_file


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
            raise LabelsFileError(f"The model returned {len(values)} scores but there are {len(labels)} labels; "
                                  "use the labels file exported with this model.")
        best = max(range(len(values)), key=lambda i: (values[i], -i))
        return cls(labels[best], values[best], dict(zip(labels, values)), None if source is None else str(source))

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The k most likely classes with their probabilities, best first."""
        return sorted(self.scores.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (for ``--json`` output and web responses)."""
        return {"source": self.source, "label": self.label, "probability": self.probability,
                "scores": dict(self.scores)}

    def __str__(self) -> str:
        head = f"{self.source}: " if self.source else ""
        others = ", ".join(f"{name} {p:.1%}" for name, p in self.top(3)[1:] if not math.isnan(p))
        return f"{head}{self.label} ({self.probability:.1%})" + (f"   next: {others}" if others else "")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(name)}</td><td style='text-align:right'>{p:.1%}</td></tr>"
                       for name, p in self.top(len(self.scores)))
        title = html.escape(f"{self.source}: ") if self.source else ""
        return f"<b>{title}{html.escape(self.label)}</b> ({self.probability:.1%})<table>{rows}</table>"


class ImageScorer:
    """predict_* (bytes, file, frame) over a subclass's ``predict_proba``; it sets ``labels`` and ``max_pixels``."""

    labels: list[str] | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def predict_proba(self, images: Any, names: Any = None) -> Any:  # (N, C) probabilities
        raise NotImplementedError

    def predict_bytes(self, data: bytes, name: str | Path | None = None) -> Prediction:
        """Score one encoded image (e.g. an upload); ``name`` only labels messages and the result."""
        scores = self.predict_proba([data], [name])[0]
        labels = self.labels if self.labels is not None else [f"class_{i}" for i in range(len(scores))]
        return Prediction.from_scores(scores, labels, source=name)

    def predict_file(self, path: str | Path) -> Prediction:
        return self.predict_bytes(read_image_file(path, max_pixels=self.max_pixels), name=path)

    def predict_frame(self, df: pd.DataFrame, path_column: str = "image_path", batch_size: int = 32,
                      progress: bool = False) -> pd.DataFrame:
        """Score every row's image file in batches: a copy of ``df`` plus ``predicted`` (label or None),
        ``probability``, ``score_<class>`` and ``error`` (None, or why); bad rows stay, counted by a warning."""
        if self.labels is None:
            raise LabelsFileError("predict_frame needs labels; pass labels=[...] or a labels.txt path.")
        if path_column not in df.columns:
            raise KeyError(f"The frame has no {path_column!r} column (columns: {list(df.columns)}); "
                           "pass path_column=...")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        paths, labels = [str(p) for p in df[path_column].tolist()], self.labels
        n, width = len(paths), len(labels)
        scores = np.full((n, width), np.nan)
        errors: list[str | None] = [None] * n
        for start in tqdm(range(0, n, batch_size), desc="Scoring", unit="batch", disable=not progress):
            rows, blobs = [], []
            for i in range(start, min(n, start + batch_size)):
                try:
                    blobs.append(read_image_file(paths[i], max_pixels=self.max_pixels))
                    rows.append(i)
                except (OSError, InvalidImageError) as exc:
                    errors[i] = str(exc)
            if not rows:
                continue
            try:
                scores[rows] = self.predict_proba(blobs, [paths[i] for i in rows])
            except InvalidImageError:  # one bad image fails its whole batch: find it by scoring one by one
                for i, data in zip(rows, blobs):
                    try:
                        scores[i] = self.predict_proba([data], [paths[i]])[0]
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
        if failed := int((~ok).sum()):
            first = next(e for e in errors if e is not None)
            warnings.warn(f"{failed} of {n} images could not be scored (first: {first}); see the 'error' column.",
                          UnscoredImagesWarning, stacklevel=2)
        return out
