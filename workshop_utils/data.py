"""The image index (``image_path``, ``label``, ``subset``) from an index.csv or a folder tree: loaded, checked, split.
Problems name the file and its lines (line 1 is the header) before any training starts."""
from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from workshop_utils.core.errors import (SHOW_AT_MOST, DatasetError, DatasetNotFoundError, InvalidImageError,
                                        LeftOutFilesWarning, MissingImagesError, StratifyFallbackWarning,
                                        UnseenClassWarning, listed)
from workshop_utils.core.formats import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, SUPPORTED_FORMATS, check_image_file,
                                         format_for_file_name, not_decodable_reason)
from workshop_utils.quality import first_names, warn_exact_duplicates

INDEX_HEADER = ("image", "class", "subset")
COLUMN_ALIASES = {"label": "class"}  # accepted in index.csv headers
SUBSET_NAMES = {"t": "train", "train": "train", "training": "train", "v": "validation", "val": "validation",
                "valid": "validation", "validation": "validation", "test": "test", "testing": "test"}
# honest: train fits, validation chooses (epochs, early stopping), test is reported and never chosen on;
PROTOCOLS = ("honest", "mlnet")  # mlnet: ML.NET's lab, which chooses and reports on the same validation set
SET_ROLES = {"train": "fitted the weights", "validation": "chose the epoch", "test": "never used for choosing"}


def _source(df: pd.DataFrame) -> str:  # where a table came from (the loaders set it), for messages
    return str(df.attrs.get("source", "the table"))


def require_columns(df: pd.DataFrame, needed: Sequence[str], fix: str = "", what: str | None = None) -> None:
    """Raise a DatasetError naming the table (``what``, else its source) and any missing column."""
    where = what or (_source(df) if isinstance(df, pd.DataFrame) else "the table")
    if not isinstance(df, pd.DataFrame):
        raise DatasetError(f"{where} must be a pandas DataFrame, got {type(df).__name__}. {fix}".rstrip())
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {', '.join(missing)}; expected {', '.join(needed)}, "
                           f"found {', '.join(map(str, df.columns)) or 'none'}. {fix}".rstrip())


def _warn_unseen(df: pd.DataFrame, line_of=None) -> list[str]:
    """Warn (UnseenClassWarning) about classes in validation/test rows but in no train row."""
    train = set(df.loc[df["subset"] == "train", "label"])
    others = df[df["subset"].isin(["validation", "test"]) & ~df["label"].isin(train)]
    unseen = sorted(set(others["label"]))
    for name in unseen:
        rows = others[others["label"] == name]
        where = listed([line_of(i) for i in rows.index], "lines") if line_of else \
            f"{len(rows)} image{'s' * (len(rows) != 1)}"
        warnings.warn(f"{_source(df)}: class {name!r} is in {'/'.join(sorted(set(rows['subset'])))} ({where}) but "
                      "never in train, so the model cannot learn it and those images will always be misclassified. "
                      "Add training images of it, or drop those rows.", UnseenClassWarning, stacklevel=3)
    return unseen


def load_index(csv_path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read a car-damage ``index.csv`` into image_path/label/subset, checking every row; paths are relative to the
    CSV's folder or, with ``image_dir``, file names looked up there (as the lab does)."""
    csv_path = Path(csv_path).expanduser().absolute()
    if not csv_path.is_file():
        raise DatasetNotFoundError(f"Index file {csv_path} does not exist. Check the path, or fetch the dataset "
                                   "first (workshop_utils.download.resolve_dataset).")
    try:  # blank lines are kept as empty rows so that row i is line i + 2 of the file
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{csv_path}: the file is empty; expected the header image,class,subset "
                           "followed by one line per image.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DatasetError(f"{csv_path}: not a readable CSV file ({error}). Save it as UTF-8 CSV with "
                           "the header image,class,subset and three comma-separated values a line.") from None
    raw.attrs["source"] = str(csv_path)
    raw.columns = [COLUMN_ALIASES.get(c.strip().lower(), c.strip().lower()) for c in raw.columns]
    require_columns(raw, INDEX_HEADER, "Make the first line of the file exactly: image,class,subset")
    raw = raw[list(INDEX_HEADER)].apply(lambda column: column.str.strip())
    raw = raw[(raw != "").any(axis=1)]  # blank lines
    if raw.empty:
        raise DatasetError(f"{csv_path}: the index has a header but no data rows; add one line per "
                           "image (image,class,subset).")

    def check(mask: pd.Series, problem: str, fix: str, error: type[DatasetError] = DatasetError) -> None:
        if mask.any():  # pandas row label i is line i + 2 of the file (the header is line 1)
            raise error(f"{csv_path}: {problem} on {listed([i + 2 for i in raw.index[mask]], 'lines')}. {fix}")

    check(raw["image"] == "", "empty 'image' value", "Every line needs the image's path, e.g. image/12.jpeg.")
    check(raw["class"] == "", "empty 'class' value", "Every line needs a class name; fill it in or delete the line.")
    subset = raw["subset"].str.lower().map(SUBSET_NAMES)
    values = ", ".join(repr(v) for v in sorted(set(raw.loc[subset.isna(), "subset"]))[:SHOW_AT_MOST])
    check(subset.isna(), f"unknown subset value(s) {values}",
          "Use T (train) or V (validation); train/validation/val/test are also accepted.")
    relative = raw["image"].str.replace("\\", "/", regex=False)
    base = Path(image_dir).expanduser().absolute() if image_dir is not None else None
    paths = [os.path.join(base, PurePosixPath(p).name) if base else os.path.normpath(os.path.join(csv_path.parent, p))
             for p in relative]
    exists = pd.Series([os.path.isfile(p) for p in paths], index=raw.index)
    first = next((p for p, found in zip(paths, exists) if not found), None)
    where = f"in {image_dir}" if image_dir is not None else f"relative to {csv_path.parent}"
    check(~exists, f"image files not found (looked {where}; first: {first})",
          "Check that the image folder sits next to index.csv (or pass image_dir=), or delete those lines.",
          MissingImagesError)
    df = pd.DataFrame({"image_path": paths, "label": raw["class"], "subset": subset}, index=raw.index)
    df.attrs["source"] = str(csv_path)
    df.attrs["unseen_classes"] = _warn_unseen(df, lambda i: i + 2)
    df = df.reset_index(drop=True)
    warn_exact_duplicates(df, str(csv_path))
    return df


def load_images_from_directory(folder: str | os.PathLike, use_folder_name_as_label: bool = True) -> pd.DataFrame:
    """Every image under ``folder`` (recursive, sorted; others in ``attrs["left_out"]``) as ML.NET's
    LoadImagesFromDirectory: labelled by folder or (``use_folder_name_as_label=False``) leading letters, UD7 -> UD."""
    folder = Path(folder).expanduser().absolute()
    if not folder.is_dir():
        raise DatasetNotFoundError(f"Image folder {folder} does not exist (or is not a folder). Check the path.")
    paths, left_out = [], []  # left_out: (path, why)
    for root, dirs, files in os.walk(folder):  # hidden files and folders (.DS_Store, ._x.jpg, __MACOSX) are not data
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        for name in sorted(n for n in files if not n.startswith(".")):
            path, fmt = os.path.join(root, name), format_for_file_name(name)
            if fmt is None:
                left_out.append((path, f"not a {SUPPORTED_FORMATS} image (by its extension)"))
            elif reason := not_decodable_reason(fmt):
                left_out.append((path, reason))
            else:
                paths.append(path)
    relative = [Path(os.path.relpath(p, folder)).as_posix() for p, _ in left_out]
    if not paths:
        seen = f"; left out {len(relative)} other file(s): {first_names(relative)}" if relative else ""
        raise DatasetError(
            f"{folder}: no images found ({', '.join(IMAGE_EXTENSIONS)} in any case, searched recursively{seen}). "
            "Point at the folder whose sub-folders hold the images, one sub-folder per class.")
    if left_out:
        groups = pd.Series(relative).groupby([reason for _, reason in left_out], sort=False).agg(list)
        warnings.warn(f"{folder}: left out {len(left_out)} file{'s' * (len(left_out) != 1)} — "
                      + "; ".join(f"{first_names(names)}: {reason}" for reason, names in groups.items())
                      + ". All of them, with reasons, are in the table's attrs['left_out'].",
                      LeftOutFilesWarning, stacklevel=2)
    if use_folder_name_as_label:
        labels = [Path(p).parent.name for p in paths]
    else:
        labels = [re.match(r"[^\W\d_]*", Path(p).name).group(0) for p in paths]
        empty = [Path(p).name for p, label in zip(paths, labels) if not label]
        if empty:
            raise DatasetError(
                f"{folder}: {listed(empty, 'files')} do not start with letters, so they have no class name "
                "(use_folder_name_as_label=False takes the leading letters, e.g. UD7001-220.jpg -> UD). "
                "Rename them or use use_folder_name_as_label=True.")
    df = pd.DataFrame({"image_path": paths, "label": labels, "subset": ""})
    df.attrs.update(source=str(folder), left_out=left_out)
    warn_exact_duplicates(df, str(folder))
    return df


def load_dataset(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """An index.csv, a folder with one, or a folder of class folders -> the image table (``image_dir``: load_index)."""
    path = Path(path).expanduser().absolute()
    csv = path if path.is_file() else path / "index.csv"
    if csv.is_file():
        return load_index(csv, image_dir=image_dir)
    if not path.is_dir():
        raise DatasetNotFoundError(f"Dataset {path} does not exist: give an index.csv file or a folder of class "
                                   "folders.")
    if image_dir is not None:
        raise DatasetError(f"{path} is a folder of class folders (no index.csv), so image_dir={str(image_dir)!r} has "
                           "nothing to apply to; give the index.csv whose image paths it resolves, or leave "
                           "image_dir out.")
    return load_images_from_directory(path)


def _stratified_or_random(df: pd.DataFrame, fraction: float, seed: int, stratify: bool, stage: str):
    """sklearn's train_test_split of 1 to len - 1 rows, stratified by label when asked and possible (else warned)."""
    n_test = min(max(math.ceil(len(df) * fraction), 1), len(df) - 1)
    if stratify:
        counts = df["label"].value_counts()
        lonely = sorted(counts.index[counts < 2])
        try:
            if lonely:
                raise ValueError(f"{listed([repr(c) for c in lonely], 'classes')} have only 1 image")
            return train_test_split(df, test_size=n_test, random_state=seed, stratify=df["label"])
        except ValueError as reason:  # a class of one image, or fewer held-out images than classes
            warnings.warn(f"{_source(df)}: split() cannot keep class proportions in {stage} ({reason}); splitting "
                          "at random there instead, so some classes may be missing from a part. More images per "
                          "class avoid this.", StratifyFallbackWarning, stacklevel=3)
    return train_test_split(df, test_size=n_test, random_state=seed)


def _parts(parts: Iterable[tuple[pd.DataFrame, str]], attrs: dict, sort: bool = False) -> list[pd.DataFrame]:
    """Each part marked with its subset, renumbered, with the table's attrs (unseen classes recomputed later)."""
    marked = [(part.sort_index() if sort else part).assign(subset=name).reset_index(drop=True) for part, name in parts]
    for part in marked:
        part.attrs = {k: v for k, v in attrs.items() if k != "unseen_classes"}
    return marked


def split(df: pd.DataFrame, test_fraction: float = 0.3, validation_fraction: float = 0.9, seed: int = 0,
          stratify: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, validation, test) as the ML.NET tutorial: hold out ``test_fraction``, split that part
    ``validation_fraction`` / rest into validation / test; stratified by label when feasible, seeded."""
    require_columns(df, ["image_path", "label"], "Load the table with load_dataset() or load_index().")
    if not 0 < test_fraction < 1:
        raise DatasetError(f"split(): test_fraction must be between 0 and 1 (exclusive), got {test_fraction}.")
    if not 0 < validation_fraction <= 1:
        raise DatasetError(f"split(): validation_fraction must be in (0, 1], got {validation_fraction}.")
    if len(df) < 2:
        raise DatasetError(f"{_source(df)}: split() needs at least 2 images, got {len(df)}.")
    train, held = _stratified_or_random(df, test_fraction, seed, stratify, f"the {test_fraction:.0%} hold-out")
    if len(held) < 2 or validation_fraction == 1:
        validation, test = held, held.iloc[:0]
    else:
        stage = f"the {validation_fraction:.0%}/{1 - validation_fraction:.0%} validation/test split"
        validation, test = _stratified_or_random(held, 1 - validation_fraction, seed, stratify, stage)
    parts = _parts([(train, "train"), (validation, "validation"), (test, "test")], df.attrs)
    combined = pd.concat(parts, ignore_index=True)
    combined.attrs = dict(parts[0].attrs)
    _warn_unseen(combined)  # only possible after a random fallback
    return parts[0], parts[1], parts[2]


def carve_validation(train: pd.DataFrame, fraction: float = 0.15, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation): a stratified, seeded share of the training images set aside to choose on, in order."""
    require_columns(train, ["image_path", "label"], "Load the table with load_dataset() first.")
    if not 0 < fraction < 1:
        raise DatasetError(f"carve_validation(): fraction must be between 0 and 1 (exclusive), got {fraction}.")
    if len(train) < 2:
        raise DatasetError(f"{_source(train)}: carving a validation set needs at least 2 training images, "
                           f"got {len(train)}.")
    kept, carved = _stratified_or_random(train, fraction, seed, True, f"the {fraction:.0%} validation carve")
    return tuple(_parts([(kept, "train"), (carved, "validation")], train.attrs, sort=True))


def by_subset(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) from the ``subset`` column, as the car-damage lab does with T and V."""
    require_columns(df, ["image_path", "label", "subset"], "Load the table with load_index() or use split().")
    train, validation = (df[df["subset"] == name].reset_index(drop=True) for name in ("train", "validation"))
    for part, name in [(train, "train"), (validation, "validation")]:
        if part.empty:
            found = ", ".join(sorted(repr(s) for s in set(df["subset"]))) or "no rows at all"
            raise DatasetError(f"{_source(df)}: no {name} rows (subset values found: {found}). Mark rows T/V in "
                               "index.csv, or make the parts with split(df).")
    unseen = sorted(set(validation["label"]) - set(train["label"]))
    if unseen and unseen != df.attrs.get("unseen_classes"):  # load_index already warned about these
        _warn_unseen(df[df["subset"] != "test"])
    return train, validation


def _image_problem(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """Why an image cannot be used, or None: the scorers' header check (format, pixel limit), then a full PIL decode."""
    if not os.path.isfile(path):
        return "file not found"
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            check_image_file(fh, max_pixels, name="", complete=True)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is applied above
            for check in ("verify", "load"):  # structure and checksums (PNG), then every pixel (truncated files)
                fh.seek(0)
                with Image.open(fh) as image:
                    getattr(image, check)()
    except InvalidImageError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001  (every failure is reported, none stops the run)
        return f"cannot decode: {type(error).__name__}: {error}"
    return None


def validate_images(df: pd.DataFrame | Iterable[str | os.PathLike], progress: bool | None = None,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS) -> pd.DataFrame:
    """Check every image as training and the scorers will: the problems as a DataFrame(path, reason), empty when
    all are fine; one bad file never stops the run. ``progress`` (default: over 100 images) shows a tqdm bar."""
    if isinstance(df, pd.DataFrame):
        require_columns(df, ["image_path"], "Load the table with load_dataset() first.")
    paths = [str(p) for p in (df["image_path"] if isinstance(df, pd.DataFrame) else df)]
    show = len(paths) > 100 if progress is None else progress
    bar = tqdm(paths, desc="Checking images", unit="img", disable=not show)
    return pd.DataFrame([(p, why) for p in bar if (why := _image_problem(p, max_pixels))], columns=["path", "reason"])
