"""The one labels I/O: ``labels.txt`` (class names one a line, UTF-8) and LabelMap, class names <-> indices."""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from sklearn.preprocessing import LabelEncoder

from workshop_utils.core.errors import DatasetError, DatasetNotFoundError, LabelsFileError, listed
from workshop_utils.core.fsutil import atomic_write

LABELS_FILE = "labels.txt"


def _labels_path(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    return path / LABELS_FILE if path.is_dir() else path


def load_labels(labels: str | os.PathLike | Iterable[str], *, sorted_unique: bool = False) -> list[str]:
    """Class names in model-output order from a list or a ``labels.txt`` path (a folder: its labels.txt). Kept order
    skips blank lines; ``sorted_unique`` (a LabelMap's file) refuses them and names not sorted and unique."""
    if not isinstance(labels, (str, os.PathLike)):
        names = [str(n) for n in labels]
        if not names:
            raise LabelsFileError("The labels list is empty; pass one class name per model output.")
        return names
    path = _labels_path(labels)
    if not path.is_file():
        fix = "." if sorted_unique else " (or pass the class names as a list)."
        raise (DatasetNotFoundError if sorted_unique else LabelsFileError)(
            f"Labels file {path} does not exist; it is written next to a saved model{fix}")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not sorted_unique:
        lines = [line.strip() for line in lines if line.strip()]
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if not lines or blank:
        raise LabelsFileError(f"{path}: {'empty file' if not lines else listed(blank, 'blank lines')}; "
                              "expected one class name a line.")
    if sorted_unique and lines != sorted(set(lines)):
        raise LabelsFileError(f"{path}: class names are not sorted and unique, so the model's outputs could be "
                              "matched to the wrong names. Re-save it with LabelMap.save() instead of editing it by "
                              "hand.")
    return lines


def write_labels(names: Iterable[str], path: str | os.PathLike) -> Path:
    """Write class names one a line (UTF-8) atomically, as :func:`load_labels` and ML.NET read them (file or folder)."""
    names = [str(n) for n in names]
    bad = [n for n in names if n.splitlines() != [n] or n != n.strip()]
    if bad:
        raise LabelsFileError(f"Class names {bad!r} cannot be written one per line; rename them (no line breaks "
                              "or outer spaces).")
    return atomic_write(_labels_path(path), "\n".join(names) + "\n")


class LabelMap:
    """Class names <-> indices, names sorted (index i is the model's i-th output); scikit-learn's LabelEncoder."""

    def __init__(self, names: Iterable[str]):
        self._encoder = LabelEncoder().fit([str(n) for n in names])
        self._names = [str(n) for n in self._encoder.classes_]
        bad = [n for n in self._names if not n.strip() or "\n" in n or "\r" in n]
        if bad:
            raise DatasetError(f"LabelMap: class names must be non-blank single lines, got {bad!r}.")
        self._index = {n: i for i, n in enumerate(self._names)}

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> LabelMap:  # the distinct labels of a column or list
        return cls(labels)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def index(self, name: str) -> int:
        if name not in self._index:
            raise DatasetError(f"Unknown class {name!r}; this label map knows {len(self)}: {', '.join(self._names)}.")
        return self._index[name]

    def name(self, index: int) -> str:
        if not 0 <= int(index) < len(self):
            raise IndexError(f"Class index {index} is out of range: this label map has {len(self)} classes.")
        return self._names[int(index)]

    def encode(self, labels: Iterable[str]) -> np.ndarray:
        """Class names -> int64 indices; all unknown names are reported at once."""
        labels = [str(x) for x in labels]
        unknown = sorted(set(labels) - set(self._index))
        if unknown:
            raise DatasetError(f"{listed([repr(u) for u in unknown], 'unknown classes')}; this label map knows "
                               f"{', '.join(self._names)}. Was the model trained on another dataset?")
        return self._encoder.transform(labels).astype(np.int64)

    def save(self, path: str | os.PathLike) -> Path:  # labels.txt, atomically; ``path``: the file or its folder
        return write_labels(self._names, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LabelMap:
        """Read a ``labels.txt`` written by save() (a folder: its labels.txt); it must be sorted and unique."""
        return cls(load_labels(path, sorted_unique=True))

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and self._names == other._names

    def __hash__(self) -> int:
        return hash(tuple(self._names))

    def __repr__(self) -> str:
        return f"LabelMap({self._names!r})"
