"""Data quality before training: duplicate images, images under two classes, and leakage between the sets.
Exact copies by the SHA-1 of the bytes; re-encoded or resized ones (only reported) by a 16x16 grey thumbnail's
cosine: on the sample, a 64-bit average hash put distinct pictures within 4 bits while copies differed by up to
14; the cosine separates them (distinct <= 0.953, copies >= 0.996). JPEG draft mode keeps the cost a few percent."""
from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from workshop_utils.core.errors import DataQualityWarning, DatasetError
from workshop_utils.core.fsutil import atomic_write

DUPLICATES_CSV = "duplicates.csv"
FINDING_COLUMNS = ["group", "kind", "image_path", "label", "subset", "kept", "sha1", "similarity"]
SUBSET_PRIORITY = {"test": 3, "validation": 2, "train": 1, "": 0}  # the kept copy: in the set that matters most
THUMBNAIL = 16  # side of the grey thumbnail compared for near-duplicates
NEAR_SIMILARITY = 0.99  # cosine of two thumbnails at or above which they are near-duplicates (see the module doc)
NEAR_BLOCK = 1024  # signatures compared at once (memory: NEAR_BLOCK x N x 4 bytes)
SHOW = 3  # file names quoted in a warning
KIND_LINES = {  # kind: (what was found, what is done about it, advice)
    "duplicate": ("image(s) stored more than once in the same set", "each is kept once ({copies} copies left out)", ""),
    "leak": ("image(s) appear in more than one set, e.g. in train and validation", "{copies} copies dropped from the "
             "lower set (train before validation before test); the evaluation sets are left intact", ""),
    "conflict": ("image(s) are listed under two or more classes", "{copies} row(s) left out of training",
                 "; fix their class in the index"),
    "near": ("pair(s) of near-duplicate images, re-encoded or resized copies or very similar photos", "kept",
             "; look at them side by side"),
}


def sha1_of_file(path: str | os.PathLike) -> str:
    """SHA-1 of a file's bytes: identity of content, not security (fast, hardware-assisted)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.sha1(usedforsecurity=False)).hexdigest()


@lru_cache(maxsize=None)
def _digest(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    return sha1_of_file(path)


def file_digest(path: str | os.PathLike) -> str:
    """:func:`sha1_of_file`, remembered while size, mtime, ctime and inode are unchanged (ctime cannot be set back)."""
    stat = os.stat(path)
    return _digest(os.fspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def thumbnail_signature(path: str | os.PathLike) -> np.ndarray:
    """The 16x16 grey thumbnail, mean-centred, unit length (the continuous form of an average hash)."""
    with Image.open(path) as image:
        image.draft("L", (4 * THUMBNAIL, 4 * THUMBNAIL))  # a JPEG decodes at reduced size
        pixels = np.asarray(image.convert("L").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR),
                            dtype=np.float32).ravel()
    pixels -= pixels.mean()
    return pixels / max(float(np.linalg.norm(pixels)), 1e-6)


def near_pairs(signatures: np.ndarray, min_similarity: float = NEAR_SIMILARITY) -> list[tuple[int, int, float]]:
    """(i, j, similarity) for every pair i < j of signatures whose cosine similarity is at least ``min_similarity``."""
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, len(signatures), NEAR_BLOCK):
        similarity = signatures[start:start + NEAR_BLOCK] @ signatures.T
        pairs += [(int(i + start), int(j), float(similarity[i, j]))
                  for i, j in zip(*np.nonzero(similarity >= min_similarity)) if i + start < j]
    return pairs


def first_names(names: Sequence[str], at_most: int = SHOW) -> str:
    """'a.txt, b.tif, … (5 in all)': the first few names of a list, for messages."""
    return ", ".join(names[:at_most]) + (f", … ({len(names)} in all)" if len(names) > at_most else "")


def _subsets(frame: pd.DataFrame) -> pd.Series:
    return frame["subset"].fillna("").astype(str) if "subset" in frame else pd.Series("", index=frame.index)


def exact_findings(frame: pd.DataFrame) -> pd.DataFrame:
    """Every image with an exact copy in the table, its kind and whether it is kept. ``duplicate`` (one set): the
    first is kept; ``leak`` (several sets): the copy in test > validation > train; ``conflict`` (two classes): out
    of training, validation/test rows kept as they are."""
    digests = pd.Series([file_digest(p) for p in frame["image_path"]], index=frame.index, dtype=object)
    copies = digests.duplicated(keep=False)
    found = pd.DataFrame({"image_path": frame["image_path"], "label": frame["label"], "subset": _subsets(frame),
                          "sha1": digests.str[:12]})[copies]
    found.insert(0, "group", digests[copies].groupby(digests[copies], sort=False).ngroup())
    by_group = found.groupby("group")
    conflict = by_group["label"].transform("nunique") > 1
    found.insert(1, "kind", np.where(conflict, "conflict",
                                     np.where(by_group["subset"].transform("nunique") > 1, "leak", "duplicate")))
    best = found["subset"].map(SUBSET_PRIORITY).groupby(found["group"]).transform("idxmax")  # first of the top set
    found["kept"] = np.where(conflict, found["subset"].isin(["validation", "test"]), found.index == best)
    found["similarity"] = 1.0
    return found[FINDING_COLUMNS].sort_values("group", kind="stable")


def near_findings(frame: pd.DataFrame, exact: pd.DataFrame | None = None, progress: bool | None = None,
                  min_similarity: float = NEAR_SIMILARITY) -> pd.DataFrame:
    """Pairs of different files that look alike (:func:`thumbnail_signature`): re-encoded or resized copies."""
    subsets = _subsets(frame)
    digests = pd.Series([file_digest(p) for p in frame["image_path"]], index=frame.index)
    index = list(digests.drop_duplicates().index)  # one row per content: exact copies are exact findings already
    signatures, usable = [], []
    for i in tqdm(index, desc="Comparing images", unit="img", leave=False,
                  disable=not (len(index) > 500 if progress is None else progress)):
        try:
            signatures.append(thumbnail_signature(frame.at[i, "image_path"]))
            usable.append(i)
        except Exception:  # noqa: BLE001, S112  (an undecodable file is validate_images'/the bottleneck's to report)
            continue
    first_group = 0 if exact is None or exact.empty else int(exact["group"].max()) + 1
    pairs = near_pairs(np.asarray(signatures, dtype=np.float32).reshape(len(signatures), -1), min_similarity)
    rows = [dict(group=first_group + number, kind="near", image_path=frame.at[i, "image_path"],
                 label=frame.at[i, "label"], subset=subsets.at[i], kept=True, sha1=digests.at[i][:12],
                 similarity=round(similarity, 4))
            for number, (a, b, similarity) in enumerate(pairs) for i in (usable[a], usable[b])]
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)


def _kind_lines(findings: pd.DataFrame, acted: bool) -> list[str]:
    """One sentence per kind of finding: counts, the first file names and what happens to them."""
    lines = []
    for kind, group in findings.groupby("kind", sort=False):
        images, copies = group["group"].nunique(), int((~group["kept"]).sum())
        found, action, after = KIND_LINES[kind]
        action = action.format(copies=copies) if acted or kind == "near" else "nothing dropped (mlnet protocol)"
        names = first_names([Path(p).name for p in group["image_path"]])
        lines.append(f"{images} {found} ({names}): {action}{after}")
    return lines


def warn_exact_duplicates(frame: pd.DataFrame, source: str) -> None:
    """Warn (one DataQualityWarning a kind) about exact copies in a freshly loaded table."""
    for line in _kind_lines(exact_findings(frame), acted=True):
        warnings.warn(f"{source}: {line.replace('each is kept once', 'check_dataset keeps each once')}. "
                      "Every copy is listed in duplicates.csv by quality.check_dataset().",
                      DataQualityWarning, stacklevel=3)


@dataclass
class DatasetCheck:
    """What :func:`check_dataset` found and did: the table to go on with and every finding."""

    frame: pd.DataFrame  # the images to use: copies left out (drop=True) or the table as it was (drop=False)
    findings: pd.DataFrame  # FINDING_COLUMNS, one row per image of every group found
    dropped: bool
    csv_path: Path | None = None

    @property
    def counts(self) -> dict[str, int]:  # per kind: groups (duplicate, leak, conflict) or pairs (near)
        return {str(k): int(g["group"].nunique()) for k, g in self.findings.groupby("kind", sort=False)}

    @property
    def left_out(self) -> int:  # rows of the original table that are not in ``frame``
        return int((~self.findings["kept"]).sum()) if self.dropped else 0

    def summary(self) -> str:
        lines = _kind_lines(self.findings, self.dropped)
        if not lines:
            return "Data check: no duplicate images, no image under two classes, no image shared between sets."
        where = f" Every group: {self.csv_path}" if self.csv_path else ""
        return "Data check:\n" + "\n".join(f"- {line}." for line in lines) + where

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``duplicates.csv`` (every finding, header only when none) into ``folder``."""
        self.csv_path = atomic_write(Path(folder) / DUPLICATES_CSV, self.findings.to_csv(index=False))
        return self.csv_path


def check_dataset(frame: pd.DataFrame, *, drop: bool = True, near: bool = True,
                  workspace: str | os.PathLike | None = None, progress: bool | None = None) -> DatasetCheck:
    """Find duplicates, two-class images and copies shared between sets; ``drop`` (honest) leaves copies out as
    :func:`exact_findings` says, ``drop=False`` (mlnet) and near-duplicates are only reported (``duplicates.csv``)."""
    missing = [c for c in ("image_path", "label") if c not in frame.columns]
    if missing:  # not data.require_columns: data imports this module
        raise DatasetError(f"check_dataset: the table lacks column(s) {', '.join(missing)}; load it with "
                           "data.load_dataset().")
    exact = findings = exact_findings(frame)
    if near:
        near_rows = near_findings(frame, exact, progress)
        if len(near_rows):
            findings = pd.concat([exact, near_rows], ignore_index=True)
            warnings.warn(f"{frame.attrs.get('source', 'the table')}: " + _kind_lines(near_rows, drop)[0]
                          + ". They are listed in duplicates.csv.", DataQualityWarning, stacklevel=2)
    kept = frame
    if drop and len(exact):
        kept = frame.drop(index=exact.index[~exact["kept"].to_numpy()]).reset_index(drop=True)
        kept.attrs = dict(frame.attrs)
    result = DatasetCheck(kept, findings.reset_index(drop=True), bool(drop))
    if workspace is not None:
        result.save(workspace)
    return result
