"""The image index: which picture, which class, which subset — loaded, checked, split and encoded.

Two sources, one table (columns ``image_path`` absolute, ``label``, ``subset``): the car-damage
``index.csv`` (header ``image,class,subset``, subsets ``T``/``V``) or a folder tree of images (ML.NET's
``LoadImagesFromDirectory``). Problems are reported with the file and its line numbers (line 1 is the
header, so the first data row is line 2), never discovered later in the middle of training.
No TensorFlow here: this module only reads files (a WebP file makes it ask TensorFlow, once, whether it
decodes WebP). Which files are images is decided by one table, ``predictions.IMAGE_FORMATS``.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import pandas as pd

from workshop_utils.core.errors import (
    DatasetError,
    DatasetNotFoundError,
    InvalidImageError,
    LeftOutFilesWarning,
    MissingImagesError,
    StratifyFallbackWarning,
    UnseenClassWarning,
)
from workshop_utils.core.formats import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    SUPPORTED_FORMATS,
    check_image_file,
    decodable,
    format_for_file_name,
    not_decodable_reason,
)
from workshop_utils.quality import warn_exact_duplicates

COLUMNS = ["image_path", "label", "subset"]


INDEX_HEADER = ("image", "class", "subset")


COLUMN_ALIASES = {"label": "class"}  # accepted in index.csv headers


SUBSET_NAMES = {
    "t": "train", "train": "train", "training": "train",
    "v": "validation", "val": "validation", "valid": "validation", "validation": "validation",
    "test": "test", "testing": "test",
}


SHOW_AT_MOST = 10  # offending rows/values quoted in a message


PROTOCOLS = ("honest", "mlnet")
"""How the sets are used. honest: train fits, validation chooses (epochs, early stopping), test is reported and
never used for choosing. mlnet: ML.NET's lab, which chooses and reports on the same validation set."""


SET_ROLES = {
    "train": "fitted the weights",
    "validation": "chose the epoch",
    "test": "never used for choosing",
}


def _some(items: Sequence, what: str) -> str:
    """'lines 2, 5, 9 (3 in all)' — the first SHOW_AT_MOST items and the total count."""
    items = list(items)
    shown = ", ".join(str(i) for i in items[:SHOW_AT_MOST])
    more = f", … and {len(items) - SHOW_AT_MOST} more" if len(items) > SHOW_AT_MOST else ""
    return f"{what} {shown}{more} ({len(items)} in all)"


def _source(df: pd.DataFrame) -> str:
    """Where a table came from, for messages (load_index/load_images_from_directory set it)."""
    return str(df.attrs.get("source", "the table"))


def _require_columns(df: pd.DataFrame, needed: Sequence[str], fix: str) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{_source(df)}: missing column(s) {', '.join(missing)}; expected {', '.join(needed)}, "
            f"found {', '.join(map(str, df.columns)) or 'none'}. {fix}"
        )


def _warn_unseen(df: pd.DataFrame, line_of=None) -> list[str]:
    """Warn (UnseenClassWarning) about classes in validation/test rows but in no train row."""
    train = set(df.loc[df["subset"] == "train", "label"])
    others = df[df["subset"].isin(["validation", "test"]) & ~df["label"].isin(train)]
    unseen = sorted(set(others["label"]))
    for name in unseen:
        rows = others[others["label"] == name]
        if line_of:
            where = _some([line_of(i) for i in rows.index], "lines")
        else:
            where = f"{len(rows)} image{'s' * (len(rows) != 1)}"
        warnings.warn(
            f"{_source(df)}: class {name!r} is in {'/'.join(sorted(set(rows['subset'])))} ({where}) but "
            "never in train, so the model cannot learn it and those images will always be misclassified. "
            "Add training images of it, or drop those rows.",
            UnseenClassWarning,
            stacklevel=3,
        )
    return unseen


def load_index(csv_path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read a car-damage ``index.csv`` (``image,class,subset``) into image_path/label/subset, checking every row.

    Paths are relative to the CSV's folder, or — when ``image_dir`` is given — only the file name is kept
    and looked up in ``image_dir`` (as the original lab does). Row order is kept.
    """
    csv_path = Path(csv_path).expanduser().absolute()
    if not csv_path.is_file():
        raise DatasetNotFoundError(
            f"Index file {csv_path} does not exist. Check the path, or fetch the dataset first "
            "(workshop_utils.download.resolve_dataset)."
        )
    try:  # blank lines are kept as empty rows so that row i is line i + 2 of the file
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skip_blank_lines=False,
                          encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{csv_path}: the file is empty; expected the header image,class,subset "
                                "followed by one line per image.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DatasetError(f"{csv_path}: not a readable CSV file ({error}). Save it as UTF-8 CSV with "
                               "the header image,class,subset and three comma-separated values a line.") from None
    raw.attrs["source"] = str(csv_path)
    raw.columns = [COLUMN_ALIASES.get(c.strip().lower(), c.strip().lower()) for c in raw.columns]
    _require_columns(raw, INDEX_HEADER, "Make the first line of the file exactly: image,class,subset")
    raw = raw[list(INDEX_HEADER)].apply(lambda column: column.str.strip())
    raw = raw[(raw != "").any(axis=1)]  # blank lines

    def line_of(i: int) -> int:  # pandas row label -> line number in the file (header is line 1)
        return i + 2

    if raw.empty:
        raise DatasetError(f"{csv_path}: the index has a header but no data rows; add one line per "
                                "image (image,class,subset).")

    def check(mask: pd.Series, error: type[DatasetError], problem: str, fix: str) -> None:
        if mask.any():
            raise error(f"{csv_path}: {problem} on {_some([line_of(i) for i in raw.index[mask]], 'lines')}. {fix}")

    check(raw["image"] == "", DatasetError, "empty 'image' value",
          "Every line needs the image's path, e.g. image/12.jpeg.")
    check(raw["class"] == "", DatasetError, "empty 'class' value",
          "Every line needs a class name; fill it in or delete the line.")
    subset = raw["subset"].str.lower().map(SUBSET_NAMES)
    bad = subset.isna()
    if bad.any():
        values = ", ".join(repr(v) for v in sorted(set(raw.loc[bad, "subset"]))[:SHOW_AT_MOST])
        check(bad, DatasetError, f"unknown subset value(s) {values}",
              "Use T (train) or V (validation); train/validation/val/test are also accepted.")

    relative = raw["image"].str.replace("\\", "/", regex=False)
    if image_dir is not None:
        base = Path(image_dir).expanduser().absolute()
        paths = [os.path.join(base, PurePosixPath(p).name) for p in relative]
    else:
        paths = [os.path.normpath(os.path.join(csv_path.parent, p)) for p in relative]
    exists = pd.Series([os.path.isfile(p) for p in paths], index=raw.index)
    if not exists.all():
        first = next(p for p, found in zip(paths, exists) if not found)
        where = f"in {image_dir}" if image_dir is not None else f"relative to {csv_path.parent}"
        check(~exists, MissingImagesError, f"image files not found (looked {where}; first: {first})",
              "Check that the image folder sits next to index.csv (or pass image_dir=), or delete those lines.")

    df = pd.DataFrame({"image_path": paths, "label": raw["class"].to_numpy(), "subset": subset.to_numpy()},
                      index=raw.index)
    df.attrs["source"] = str(csv_path)
    df.attrs["unseen_classes"] = _warn_unseen(df, line_of)
    df = df.reset_index(drop=True)
    warn_exact_duplicates(df, str(csv_path))
    return df


def _folder_entries(folder: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(image paths, [(left-out path, why)]) under ``folder``, recursive and sorted; hidden files and folders
    (``.DS_Store``, macOS's ``._x.jpg`` copies, ``__MACOSX``) are not data and are neither taken nor reported."""
    paths: list[str] = []
    left_out: list[tuple[str, str]] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            fmt = format_for_file_name(name)
            if fmt is None:
                left_out.append((path, f"not a {SUPPORTED_FORMATS} image (by its extension)"))
            elif not decodable(fmt):
                left_out.append((path, not_decodable_reason(fmt)))
            else:
                paths.append(path)
    return paths, left_out


def _warn_left_out(folder: Path, left_out: list[tuple[str, str]]) -> None:
    """One LeftOutFilesWarning: how many files a folder reader did not take, why, and the first names."""
    if not left_out:
        return
    groups: dict[str, list[str]] = {}
    for path, reason in left_out:
        groups.setdefault(reason, []).append(Path(os.path.relpath(path, folder)).as_posix())
    parts = [f"{_first_names(names)}: {reason}" for reason, names in groups.items()]
    warnings.warn(
        f"{folder}: left out {len(left_out)} file{'s' * (len(left_out) != 1)} — " + "; ".join(parts)
        + ". All of them, with reasons, are in the table's attrs['left_out'].",
        LeftOutFilesWarning,
        stacklevel=3,
    )


def _first_names(names: Sequence[str], at_most: int = 3) -> str:
    """'a.txt, b.tif, … (5 in all)': the first few names of a list."""
    shown = ", ".join(names[:at_most])
    return shown + (f", … ({len(names)} in all)" if len(names) > at_most else "")


def load_images_from_directory(folder: str | os.PathLike, use_folder_name_as_label: bool = True) -> pd.DataFrame:
    """Every image file under ``folder`` (recursive, sorted), as in ML.NET's LoadImagesFromDirectory.

    Images are the files whose extension (any case) is one of ``predictions.IMAGE_FORMATS``' (JPEG, PNG,
    GIF, BMP, and WebP when the installed TensorFlow decodes it). Other files are left out and reported
    (a LeftOutFilesWarning with their count and first names; all in ``df.attrs["left_out"]``).
    The label is the image's parent folder name, or — with ``use_folder_name_as_label=False`` — the
    leading letters of its file name (``UD7001-220.jpg`` → ``UD``). Subset is left empty: use split().
    """
    folder = Path(folder).expanduser().absolute()
    if not folder.is_dir():
        raise DatasetNotFoundError(f"Image folder {folder} does not exist (or is not a folder). Check the path.")
    paths, left_out = _folder_entries(folder)
    if not paths:
        names = [Path(os.path.relpath(p, folder)).as_posix() for p, _ in left_out]
        seen = f"; left out {len(names)} other file(s): {_first_names(names)}" if names else ""
        raise DatasetError(
            f"{folder}: no images found ({', '.join(IMAGE_EXTENSIONS)} in any case, searched recursively{seen}). "
            "Point at the folder whose sub-folders hold the images, one sub-folder per class."
        )
    _warn_left_out(folder, left_out)
    if use_folder_name_as_label:
        labels = [Path(p).parent.name for p in paths]
    else:
        labels = [re.match(r"[^\W\d_]*", Path(p).name).group(0) for p in paths]
        empty = [Path(p).name for p, label in zip(paths, labels) if not label]
        if empty:
            raise DatasetError(
                f"{folder}: {_some(empty, 'files')} do not start with letters, so they have no class name "
                "(use_folder_name_as_label=False takes the leading letters, e.g. UD7001-220.jpg -> UD). "
                "Rename them or use use_folder_name_as_label=True."
            )
    df = pd.DataFrame({"image_path": paths, "label": labels, "subset": ""})
    df.attrs["source"] = str(folder)
    df.attrs["left_out"] = left_out
    warn_exact_duplicates(df, str(folder))
    return df


def load_dataset(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """A CSV file, a folder holding ``index.csv``, or a folder of class folders -> the image table.

    ``image_dir`` (index.csv only): the folder the CSV's image file names are looked up in (see load_index).
    """
    path = Path(path).expanduser().absolute()
    csv = path if path.is_file() else path / "index.csv"
    if csv.is_file():
        return load_index(csv, image_dir=image_dir)
    if path.is_dir():
        if image_dir is not None:
            raise DatasetError(
                f"{path} is a folder of class folders (no index.csv), so image_dir={str(image_dir)!r} has nothing "
                "to apply to; give the index.csv whose image paths it resolves, or leave image_dir out."
            )
        return load_images_from_directory(path)
    raise DatasetNotFoundError(f"Dataset {path} does not exist: give an index.csv file or a folder of class folders.")


def _stratified_or_random(df: pd.DataFrame, n_test: int, seed: int, stratify: bool, stage: str):
    """sklearn's train_test_split, stratified by label when asked and possible (else warn and go random)."""
    from sklearn.model_selection import train_test_split

    if stratify:
        counts = df["label"].value_counts()
        lonely = sorted(counts.index[counts < 2])
        reason = (f"{_some([repr(c) for c in lonely], 'classes')} have only 1 image" if lonely else None)
        if reason is None:
            try:
                return train_test_split(df, test_size=n_test, random_state=seed, stratify=df["label"])
            except ValueError as error:  # e.g. fewer held-out images than classes
                reason = str(error)
        warnings.warn(
            f"{_source(df)}: split() cannot keep class proportions in {stage} ({reason}); splitting at "
            "random there instead, so some classes may be missing from a part. More images per class avoid this.",
            StratifyFallbackWarning,
            stacklevel=3,
        )
    return train_test_split(df, test_size=n_test, random_state=seed)


def split(df: pd.DataFrame, test_fraction: float = 0.3, validation_fraction: float = 0.9, seed: int = 0,
          stratify: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, validation, test) as the ML.NET tutorial: hold out ``test_fraction``, then split that part
    ``validation_fraction`` / rest into validation / test. Stratified by label when feasible; same seed, same split.
    """
    _require_columns(df, ["image_path", "label"], "Load the table with load_dataset() or load_index().")
    if not 0 < test_fraction < 1:
        raise DatasetError(f"split(): test_fraction must be between 0 and 1 (exclusive), got {test_fraction}.")
    if not 0 < validation_fraction <= 1:
        raise DatasetError(f"split(): validation_fraction must be in (0, 1], got {validation_fraction}.")
    if len(df) < 2:
        raise DatasetError(f"{_source(df)}: split() needs at least 2 images, got {len(df)}.")
    n_held = min(max(math.ceil(len(df) * test_fraction), 1), len(df) - 1)
    train, held = _stratified_or_random(df, n_held, seed, stratify, f"the {test_fraction:.0%} hold-out")
    n_test = math.ceil(len(held) * (1 - validation_fraction)) if len(held) > 1 else 0
    if n_test == 0:
        validation, test = held, held.iloc[:0]
    else:
        stage = f"the {validation_fraction:.0%}/{1 - validation_fraction:.0%} validation/test split"
        validation, test = _stratified_or_random(held, min(n_test, len(held) - 1), seed, stratify, stage)
    attrs = {k: v for k, v in df.attrs.items() if k != "unseen_classes"}
    parts = []
    for part, name in [(train, "train"), (validation, "validation"), (test, "test")]:
        part = part.assign(subset=name).reset_index(drop=True)
        part.attrs = dict(attrs)
        parts.append(part)
    combined = pd.concat(parts, ignore_index=True)
    combined.attrs = dict(attrs)
    _warn_unseen(combined)  # only possible after a random fallback
    return parts[0], parts[1], parts[2]


def carve_validation(train: pd.DataFrame, fraction: float = 0.15, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation): a stratified, seeded share of the training images set aside to choose on.

    The honest protocol's way to get a validation set when a dataset's own validation images are kept as the
    test set; rows keep their order, and the carved ones are marked ``subset="validation"``.
    """
    _require_columns(train, ["image_path", "label"], "Load the table with load_dataset() first.")
    if not 0 < fraction < 1:
        raise DatasetError(f"carve_validation(): fraction must be between 0 and 1 (exclusive), got {fraction}.")
    if len(train) < 2:
        raise DatasetError(f"{_source(train)}: carving a validation set needs at least 2 training images, "
                                f"got {len(train)}.")
    n = min(max(math.ceil(len(train) * fraction), 1), len(train) - 1)
    kept, carved = _stratified_or_random(train, n, seed, True, f"the {fraction:.0%} validation carve")
    parts = []
    for part, name in [(kept, "train"), (carved, "validation")]:
        part = part.sort_index().assign(subset=name).reset_index(drop=True)
        part.attrs = {k: v for k, v in train.attrs.items() if k != "unseen_classes"}
        parts.append(part)
    return parts[0], parts[1]


def by_subset(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) from the ``subset`` column, as the car-damage lab does with T and V."""
    _require_columns(df, ["image_path", "label", "subset"], "Load the table with load_index() or use split().")
    train = df[df["subset"] == "train"].reset_index(drop=True)
    validation = df[df["subset"] == "validation"].reset_index(drop=True)
    for part, name in [(train, "train"), (validation, "validation")]:
        if part.empty:
            found = ", ".join(sorted(repr(s) for s in set(df["subset"]))) or "no rows at all"
            raise DatasetError(
                f"{_source(df)}: no {name} rows (subset values found: {found}). Mark rows T/V in index.csv, "
                "or make the parts with split(df)."
            )
    unseen = sorted(set(validation["label"]) - set(train["label"]))
    if unseen and unseen != df.attrs.get("unseen_classes"):  # load_index already warned about these
        _warn_unseen(df[df["subset"] != "test"])
    return train, validation


def _image_problem(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """Why an image cannot be used, or None: the scorers' header check (format table, pixel limit), then a
    full decode with PIL (truncated or corrupt pixel data). Over-limit files are never decoded."""
    from PIL import Image

    if not os.path.isfile(path):
        return "file not found"
    try:
        with open(path, "rb") as fh:
            check_image_file(fh, max_pixels, name="", complete=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is applied above
                fh.seek(0)
                with Image.open(fh) as image:
                    image.verify()  # structure and checksums (PNG)
                fh.seek(0)
                with Image.open(fh) as image:
                    image.load()  # every pixel: catches truncated files
    except InvalidImageError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001  (every failure is reported, none stops the run)
        return f"cannot decode: {type(error).__name__}: {error}"
    return None


def validate_images(df: pd.DataFrame | Iterable[str | os.PathLike], progress: bool | None = None,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS) -> pd.DataFrame:
    """Check every image as training and the scorers will; the problems as a DataFrame(path, reason).

    Each file must be a format of ``predictions.IMAGE_FORMATS`` within ``max_pixels`` (checked from its header,
    the scorers' check), then decode fully with PIL. Empty result when all are fine; one bad file never
    stops the run. ``progress`` (default: when more than 100 images) shows a tqdm bar.
    """
    from tqdm.auto import tqdm

    if isinstance(df, pd.DataFrame):
        _require_columns(df, ["image_path"], "Load the table with load_dataset() first.")
        paths = [str(p) for p in df["image_path"]]
    else:
        paths = [str(p) for p in df]
    problems = []
    for path in tqdm(paths, desc="Checking images", unit="img",
                     disable=not (len(paths) > 100 if progress is None else progress)):
        reason = _image_problem(path, max_pixels)
        if reason:
            problems.append((path, reason))
    return pd.DataFrame(problems, columns=["path", "reason"])
