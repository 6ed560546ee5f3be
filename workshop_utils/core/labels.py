"""TODO: describe this module."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from workshop_utils.core.errors import (
    DatasetError,
    DatasetNotFoundError,
    LabelsFileError,
)
from workshop_utils.data import _some


def load_labels(labels: str | Path | Iterable[str]) -> list[str]:
    """Class names from a list or a ``labels.txt`` path (one per line, UTF-8, blank lines ignored)."""
    if isinstance(labels, (str, Path)):
        path = Path(labels).expanduser()
        if not path.is_file():
            raise LabelsFileError(
                f"Labels file {str(path)!r} does not exist; pass the labels as a list or the path of a labels.txt."
            )
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        if not names:
            raise LabelsFileError(f"Labels file {str(path)!r} is empty; it needs one class name per line.")
        return names
    names = [str(n) for n in labels]
    if not names:
        raise LabelsFileError("The labels list is empty; pass one class name per model output.")
    return names


def write_labels(names: Iterable[str], path: str | Path) -> Path:
    """Write class names one per line (UTF-8), the format :func:`load_labels` and ML.NET samples read."""
    path = Path(path)
    names = [str(n) for n in names]
    bad = [n for n in names if not n or "\n" in n or "\r" in n or n != n.strip()]
    if bad:
        raise LabelsFileError(
            f"Class names {bad!r} cannot be written one per line; rename them (no line breaks or outer spaces)."
        )
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    return path


class LabelMap:
    """Class names <-> indices, names sorted by value (so index i is the i-th output of the model)."""

    def __init__(self, names: Iterable[str]):
        names = sorted({str(n) for n in names})
        bad = [n for n in names if not n.strip() or "\n" in n or "\r" in n]
        if bad:
            raise DatasetError(f"LabelMap: class names must be non-blank single lines, got {bad!r}.")
        self._names = names
        self._index = {n: i for i, n in enumerate(names)}

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> LabelMap:
        """The map of the distinct labels in a column or list."""
        return cls(labels)

    @property
    def names(self) -> list[str]:
        """Class names in index order."""
        return list(self._names)

    def index(self, name: str) -> int:
        """The index of a class name."""
        try:
            return self._index[name]
        except KeyError:
            raise DatasetError(
                f"Unknown class {name!r}; this label map knows {len(self)}: {', '.join(self._names)}."
            ) from None

    def name(self, index: int) -> str:
        """The class name at an index."""
        if not 0 <= int(index) < len(self):
            raise IndexError(f"Class index {index} is out of range: this label map has {len(self)} classes.")
        return self._names[int(index)]

    def encode(self, labels: Iterable[str]) -> np.ndarray:
        """Class names -> int64 indices; all unknown names are reported at once."""
        labels = list(labels)
        unknown = sorted({str(x) for x in labels} - set(self._index))
        if unknown:
            raise DatasetError(
                f"{_some([repr(u) for u in unknown], 'unknown classes')}; this label map knows "
                f"{', '.join(self._names)}. Was the model trained on another dataset?"
            )
        return np.array([self._index[x] for x in labels], dtype=np.int64)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``labels.txt`` (one name a line, UTF-8) atomically; ``path`` is the file or its folder."""
        path = Path(path)
        if path.is_dir():
            path = path / "labels.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write("".join(f"{n}\n" for n in self._names))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LabelMap:
        """Read a ``labels.txt`` written by save(); order must be as saved (sorted, unique)."""
        path = Path(path)
        if path.is_dir():
            path = path / "labels.txt"
        if not path.is_file():
            raise DatasetNotFoundError(f"Label file {path} does not exist; it is written next to a saved model.")
        lines = path.read_text(encoding="utf-8").splitlines()
        blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
        if not lines or blank:
            raise LabelsFileError(f"{path}: {'empty file' if not lines else _some(blank, 'blank lines')}; "
                                 "expected one class name a line.")
        if lines != sorted(set(lines)):
            raise LabelsFileError(
                f"{path}: class names are not sorted and unique, so the model's outputs could be matched to "
                "the wrong names. Re-save it with LabelMap.save() instead of editing it by hand."
            )
        return cls(lines)

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self):
        return iter(self._names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and self._names == other._names

    def __hash__(self) -> int:
        return hash(tuple(self._names))

    def __repr__(self) -> str:
        return f"LabelMap({self._names!r})"
