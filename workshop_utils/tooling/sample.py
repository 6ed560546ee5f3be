"""The bundled synthetic car-damage sample (``data/sample``), drawn by :mod:`workshop_utils.tooling.paint`.
In the real dataset's layout (``index.csv`` + ``image/<n>.jpeg``), so the workshop runs offline and in CI;
``python -m workshop_utils sample`` regenerates it byte-identically, ``--check`` verifies it."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
from PIL import Image, features

from workshop_utils.config import sample_dir
from workshop_utils.core.errors import ToolingError
from workshop_utils.core.fsutil import atomic_folder
from workshop_utils.tooling.paint import render

# (subset T, subset V) images per class, unbalanced like the real validation set (26, 16, 38, 31, 27, 27, 27 and
# 110 photos: most real photos show no damage of the seven kinds)
COUNTS = {"bumper_dent": (16, 4), "bumper_scratch": (12, 3), "door_dent": (24, 6), "door_scratch": (20, 5),
          "glass_shatter": (16, 4), "head_lamp": (16, 4), "tail_lamp": (16, 4), "unknown": (72, 18)}
CLASSES = tuple(COUNTS)  # the order seeds each picture: never reorder
JPEG_QUALITY = 85
SEED = 0
REFERENCE_BUILD = "Pillow 13.0.0, libjpeg-turbo 3.2.0"  # wrote the committed files: another JPEG library may differ
MAX_ABS = 8  # levels (0-255): the largest pixel difference one JPEG library may make against another
MEAN_ABS = 0.5  # levels: the mean difference per image allowed for the same reason


def build_index(seed: int = SEED, n_train: int | None = None, n_val: int | None = None) -> pd.DataFrame:
    """index.csv's rows (image, class, subset) in a seeded order; :data:`COUNTS` per class, or n_train/n_val."""
    counts = {label: (COUNTS[label][0] if n_train is None else int(n_train),
                      COUNTS[label][1] if n_val is None else int(n_val)) for label in CLASSES}
    if min(min(c) for c in counts.values()) < 1:
        raise ValueError(f"n_train={n_train} and n_val={n_val}: both subsets need at least one image per class.")
    items = [(label, subset) for label in CLASSES for subset, n in zip(("T", "V"), counts[label]) for _ in range(n)]
    order = np.random.default_rng([seed, 1]).permutation(len(items))
    rows = [(f"image/{i + 1}.jpeg", *items[k]) for i, k in enumerate(order)]
    return pd.DataFrame(rows, columns=["image", "class", "subset"])


def generate(out_dir: str | os.PathLike | None = None, seed: int = SEED, n_train: int | None = None,
             n_val: int | None = None) -> pd.DataFrame:
    """Write the sample (index.csv + image/<n>.jpeg) to out_dir (default data/sample) in one folder swap; return
    the index. An existing out_dir is replaced only if it holds nothing but index.csv and image/."""
    index = build_index(seed, n_train, n_val)
    out = Path(out_dir if out_dir is not None else sample_dir()).absolute()
    if out.exists() and (not out.is_dir() or not set(os.listdir(out)) <= {"index.csv", "image"}):
        raise ToolingError(f"{out} exists and holds more than a generated sample (only index.csv and image/): "
                           "refusing to replace it. Choose a new or empty folder with --out.")
    with atomic_folder(out) as tmp:
        (tmp / "image").mkdir()
        seen: dict[tuple[str, str], int] = {}
        for image, label, subset in index.itertuples(index=False):
            k = seen[label, subset] = seen.get((label, subset), -1) + 1  # k-th picture of this class and subset
            rng = np.random.default_rng([seed, 2, CLASSES.index(label), int(subset == "V"), k])
            render(label, rng).save(tmp / image, "JPEG", quality=JPEG_QUALITY, optimize=True)
        index.to_csv(tmp / "index.csv", index=False, lineterminator="\n")
    return index


def picture_differences(expected: str | os.PathLike, actual: str | os.PathLike, max_abs: float = MAX_ABS,
                        mean_abs: float = MEAN_ABS) -> list[str]:
    """What differs between two samples as pictures: index, file names, image sizes, and pixels beyond max_abs /
    mean_abs levels. Not JPEG bytes: another JPEG library (or CPU) encodes the same pixels into other bytes."""
    expected, actual = Path(expected), Path(actual)
    problems = []
    index_a, index_b = pd.read_csv(expected / "index.csv"), pd.read_csv(actual / "index.csv")
    if list(index_a.columns) != list(index_b.columns) or len(index_a) != len(index_b):
        problems.append(f"index.csv: {len(index_b)} rows {list(index_b.columns)}, expected {len(index_a)} rows "
                        f"{list(index_a.columns)}")
    else:
        changed = (index_a != index_b).any(axis=1)
        problems += [f"index.csv row {i + 2}: {', '.join(map(str, index_b.loc[i]))} (expected "
                     f"{', '.join(map(str, index_a.loc[i]))})" for i in np.flatnonzero(changed)]
    names_a = {p.name for p in (expected / "image").iterdir()}
    names_b = {p.name for p in (actual / "image").iterdir()}
    problems += [f"image/{n} (missing)" for n in sorted(names_a - names_b)]
    problems += [f"image/{n} (unexpected)" for n in sorted(names_b - names_a)]
    for name in sorted(names_a & names_b, key=lambda n: int("0" + "".join(filter(str.isdigit, n)))):
        try:
            b = Image.open(actual / "image" / name)
            b.load()
        except OSError:
            problems.append(f"image/{name} (not a readable image)")
            continue
        with Image.open(expected / "image" / name) as a, b:
            if (a.size, a.mode) != (b.size, b.mode):
                problems.append(f"image/{name}: {b.size[0]}x{b.size[1]} {b.mode}, expected "
                                f"{a.size[0]}x{a.size[1]} {a.mode}")
                continue
            delta = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        if delta.max() > max_abs or delta.mean() > mean_abs:
            problems.append(f"image/{name}: pixels differ by up to {delta.max()} levels, {delta.mean():.3f} on "
                            f"average (allowed {max_abs} and {mean_abs})")
    return problems


def pillow_build() -> str:
    """This Pillow and JPEG library, written like REFERENCE_BUILD (which made the committed files)."""
    jpeg = features.version("libjpeg_turbo")
    return f"Pillow {PIL.__version__}, " + (f"libjpeg-turbo {jpeg}" if jpeg else f"libjpeg {features.version('jpg')}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workshop_utils sample", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="the sample folder (default: data/sample)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED}: the committed sample)")
    parser.add_argument("--check", action="store_true", help="compare the folder with a fresh generation, as pictures; "
                        "exit 1 if anything differs")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else sample_dir()
    if args.check:  # regenerate into a temporary folder and compare, as pictures
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp) / "sample", seed=args.seed)
            problems = picture_differences(Path(tmp) / "sample", out)
        if problems:
            listed = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if problems[20:] else "")
            print(f"{out} does not match a fresh generation; {len(problems)} difference(s):\n  {listed}\n"
                  f"Regenerate it with `python -m workshop_utils sample`. This build is {pillow_build()}; the "
                  f"committed files were made with {REFERENCE_BUILD} (another JPEG library changes bytes, so pixels "
                  f"are compared within {MAX_ABS} levels, {MEAN_ABS} on average).", file=sys.stderr)
            return 1
        print(f"{out} matches a fresh generation ({pillow_build()}).")
        return 0
    try:
        index = generate(out, seed=args.seed)
    except ToolingError as error:
        print(error, file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    counts = ", ".join(f"{n} in {s}" for s, n in index["subset"].value_counts().sort_index().items())
    print(f"Wrote {len(index)} images ({counts}) of {len(CLASSES)} classes to {out} ({size / 1e6:.2f} MB).")
    return 0
