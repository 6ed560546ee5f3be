"""Data quality before training: duplicate images, images under two classes, and leakage between the sets.

Real photo collections hold the same photo twice, under two file names, sometimes once in train and once in
validation: then the validation score measures memory, not learning. Copies are found by content, not by name:
the SHA-1 of each file's bytes finds exact copies; a perceptual signature (a 16x16 grey thumbnail, mean-centred)
finds re-encoded or resized copies (near-duplicates), which are only reported, since similar is not the same.
Why not a 64-bit average/difference hash: on the bundled sample, distinct pictures came within 4 bits of each
other while re-encoded copies differed by up to 14; the thumbnails' cosine separates them (distinct <= 0.953,
copies >= 0.996). It is a few lines over Pillow (no new package for Colab), and JPEG's draft mode decodes the
thumbnail at 1/8 scale, so the check costs a few percent of the bottleneck pass (see the benchmark).

``load_index`` and the folder reader warn about exact findings at once; :func:`check_dataset` acts on them
(the honest protocol) or only reports them (``drop=False``, the mlnet protocol) and writes ``duplicates.csv``.
"""
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

from workshop_utils.core.errors import DataQualityWarning

DUPLICATES_CSV = "duplicates.csv"


FINDING_COLUMNS = ["group", "kind", "image_path", "label", "subset", "kept", "sha1", "similarity"]


# Which copy of an image survives: the one in the set that matters most for honest numbers.
SUBSET_PRIORITY = {"test": 3, "validation": 2, "train": 1, "": 0}


THUMBNAIL = 16  # side of the grey thumbnail compared for near-duplicates


NEAR_SIMILARITY = 0.99  # cosine of two thumbnails at or above which they are near-duplicates (see the module doc)


NEAR_BLOCK = 1024  # signatures compared at once (memory: NEAR_BLOCK x N x 4 bytes)


SHOW = 3  # file names quoted in a warning


def sha1_of_file(path: str | os.PathLike) -> str:
    """SHA-1 of a file's bytes: identity of content, not security (fast, hardware-assisted)."""
    digest = hashlib.sha1(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=None)
def _digest(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    return sha1_of_file(path)


def file_digest(path: str | os.PathLike) -> str:
    """:func:`sha1_of_file`, remembered while the file is unchanged: a rewritten or replaced file is hashed anew
    even with its old size and timestamp (its ctime or inode changes; a program cannot set those back)."""
    stat = os.stat(path)
    return _digest(os.fspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def thumbnail_signature(path: str | os.PathLike) -> np.ndarray:
    """A perceptual signature: the 16x16 grey thumbnail, mean-centred, unit length (the continuous form of an
    average hash). Pillow's draft mode makes a JPEG decode at reduced size, so this is cheap."""
    from PIL import Image

    with Image.open(path) as image:
        image.draft("L", (4 * THUMBNAIL, 4 * THUMBNAIL))
        pixels = np.asarray(image.convert("L").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR),
                            dtype=np.float32).ravel()
    pixels -= pixels.mean()
    return pixels / max(float(np.linalg.norm(pixels)), 1e-6)


def near_pairs(signatures: np.ndarray, min_similarity: float = NEAR_SIMILARITY) -> list[tuple[int, int, float]]:
    """(i, j, similarity) for every pair i < j of signatures whose cosine similarity is at least ``min_similarity``."""
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, len(signatures), NEAR_BLOCK):
        similarity = signatures[start:start + NEAR_BLOCK] @ signatures.T
        for i, j in zip(*np.nonzero(similarity >= min_similarity)):
            if i + start < j:
                pairs.append((int(i + start), int(j), float(similarity[i, j])))
    return pairs


def _names(paths: Sequence[str]) -> str:
    shown = ", ".join(Path(p).name for p in paths[:SHOW])
    return shown + (f", … ({len(paths)} in all)" if len(paths) > SHOW else "")


def _subsets(frame: pd.DataFrame) -> pd.Series:
    return frame["subset"].fillna("").astype(str) if "subset" in frame.columns else pd.Series("", index=frame.index)


def exact_findings(frame: pd.DataFrame) -> pd.DataFrame:
    """Every image that has an exact copy in the table (by SHA-1), with its kind and whether it is kept.

    Kinds: ``duplicate`` (copies with one class, all in one set: the first is kept), ``leak`` (copies with one
    class in more than one set: the copy in the most important set is kept, test > validation > train, so the
    evaluation sets stay intact), ``conflict`` (copies under two or more classes: left out of training; rows in
    validation/test are kept as they are).
    """
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
    from tqdm.auto import tqdm

    subsets = _subsets(frame)
    digests = pd.Series([file_digest(p) for p in frame["image_path"]], index=frame.index)
    index = list(digests.drop_duplicates().index)  # one row per content: exact copies are exact findings already
    signatures, usable = [], []
    for i in tqdm(index, desc="Comparing images", unit="img", leave=False,
                  disable=not (len(index) > 500 if progress is None else progress)):
        try:
            signatures.append(thumbnail_signature(frame.at[i, "image_path"]))
            usable.append(i)
        except Exception:  # noqa: BLE001  (an undecodable file is validate_images'/the bottleneck's to report)
            continue
    rows: list[dict] = []
    first_group = 0 if exact is None or exact.empty else int(exact["group"].max()) + 1
    pairs = near_pairs(np.asarray(signatures, dtype=np.float32).reshape(len(signatures), -1), min_similarity)
    for number, (a, b, similarity) in enumerate(pairs):
        for i in (usable[a], usable[b]):
            rows.append(dict(group=first_group + number, kind="near", image_path=frame.at[i, "image_path"],
                             label=frame.at[i, "label"], subset=subsets.at[i], kept=True,
                             sha1=digests.at[i][:12], similarity=round(similarity, 4)))
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)


def _kind_lines(findings: pd.DataFrame, acted: bool) -> list[str]:
    """One sentence per kind of finding: counts, the first file names and what happens to them."""
    lines = []
    for kind, group in findings.groupby("kind", sort=False):
        paths = list(group["image_path"])
        images, copies = group["group"].nunique(), int((~group["kept"]).sum())
        if kind == "duplicate":
            action = f"each is kept once ({copies} copies left out)" if acted else "nothing dropped (mlnet protocol)"
            lines.append(f"{images} image(s) stored more than once in the same set ({_names(paths)}): {action}")
        elif kind == "leak":
            action = (f"{copies} copies dropped from the lower set (train before validation before test); "
                      "the evaluation sets are left intact" if acted else "nothing dropped (mlnet protocol)")
            lines.append(f"{images} image(s) appear in more than one set, e.g. in train and validation "
                         f"({_names(paths)}): {action}")
        elif kind == "conflict":
            action = (f"{copies} row(s) left out of training" if acted else "nothing dropped (mlnet protocol)")
            lines.append(f"{images} image(s) are listed under two or more classes ({_names(paths)}): {action}; "
                         "fix their class in the index")
        else:
            lines.append(f"{images} pair(s) of near-duplicate images, re-encoded or resized copies or very similar "
                         f"photos ({_names(paths)}): kept; look at them side by side")
    return lines


def warn_exact_duplicates(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Warn (one DataQualityWarning a kind) about exact copies in a freshly loaded table; the findings."""
    findings = exact_findings(frame)
    for line in _kind_lines(findings, acted=True):
        warnings.warn(f"{source}: {line.replace('each is kept once', 'check_dataset keeps each once')}. "
                      "Every copy is listed in duplicates.csv by quality.check_dataset().",
                      DataQualityWarning, stacklevel=3)
    return findings


@dataclass
class DatasetCheck:
    """What :func:`check_dataset` found and did: the table to go on with and every finding."""

    frame: pd.DataFrame  # the images to use: copies left out (drop=True) or the table as it was (drop=False)
    findings: pd.DataFrame  # FINDING_COLUMNS, one row per image of every group found
    dropped: bool
    csv_path: Path | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Images per kind of finding (duplicate, leak, conflict: groups; near: pairs)."""
        return {str(k): int(g["group"].nunique()) for k, g in self.findings.groupby("kind", sort=False)}

    @property
    def left_out(self) -> int:
        """Rows of the original table that are not in :attr:`frame`."""
        return int((~self.findings["kept"]).sum()) if self.dropped else 0

    def summary(self) -> str:
        """Several lines: what was found, and what was done with it."""
        lines = _kind_lines(self.findings, self.dropped)
        if not lines:
            return "Data check: no duplicate images, no image under two classes, no image shared between sets."
        where = f" Every group: {self.csv_path}" if self.csv_path else ""
        return "Data check:\n" + "\n".join(f"- {line}." for line in lines) + where

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``duplicates.csv`` (every finding, header only when none) into ``folder``, atomically."""
        target = Path(folder) / DUPLICATES_CSV
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{DUPLICATES_CSV}.{os.getpid()}.tmp")
        self.findings.to_csv(tmp, index=False)
        os.replace(tmp, target)
        self.csv_path = target
        return target


def check_dataset(frame: pd.DataFrame, *, drop: bool = True, near: bool = True,
                  workspace: str | os.PathLike | None = None, progress: bool | None = None) -> DatasetCheck:
    """Find duplicate images, images under two classes and copies shared between sets; act before any training.

    With ``drop`` (the honest protocol) copies are left out as :func:`exact_findings` says: each image kept once,
    two-class images out of training, shared copies out of the lower set. ``drop=False`` (mlnet) only reports.
    Near-duplicates are reported, never dropped. ``workspace``: where ``duplicates.csv`` is written.
    """
    missing = [c for c in ("image_path", "label") if c not in frame.columns]
    if missing:
        raise ValueError(f"check_dataset: the table lacks column(s) {', '.join(missing)}; load it with "
                       "data.load_dataset().")
    exact = exact_findings(frame)
    findings = exact
    if near:
        near_rows = near_findings(frame, exact, progress)
        if len(near_rows):
            findings = pd.concat([exact, near_rows], ignore_index=True)
            warnings.warn(f"{frame.attrs.get('source', 'the table')}: " + _kind_lines(near_rows, drop)[0]
                          + ". They are listed in duplicates.csv.", DataQualityWarning, stacklevel=2)
    kept = frame
    if drop and len(exact):
        left_out = exact.index[~exact["kept"].to_numpy()]
        kept = frame.drop(index=left_out).reset_index(drop=True)
        kept.attrs = dict(frame.attrs)
    result = DatasetCheck(kept, findings.reset_index(drop=True), bool(drop))
    if workspace is not None:
        result.save(workspace)
    return result
