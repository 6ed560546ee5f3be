"""The bottleneck phase: every image once through the frozen CNN (streamed by ``tf.data``), the pooled vectors
cached in ``<workspace>/bottlenecks/<cache_name>/``. The cache is trusted only when its fingerprint matches:
architecture, weights, input size, pixel limit, ``DECODE_VERSION`` and every image's path, size and SHA-1 (ML.NET
only checks that the files exist). Bad, over-limit or cut files are skipped without being decoded, and reported.
"""
from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from workshop_utils.architectures import Architecture, WeightsSpec, feature_extractor, get_architecture
from workshop_utils.config import workspace_dir
from workshop_utils.core.errors import DatasetError, InvalidImageError, SkippedImagesWarning
from workshop_utils.core.formats import DEFAULT_MAX_PIXELS, SUPPORTED_FORMATS, check_image_file
from workshop_utils.core.fsutil import atomic_folder
from workshop_utils.core.images import DECODE_VERSION, decode_image
from workshop_utils.core.runtime import import_tensorflow, quiet_native_stderr
from workshop_utils.quality import file_digest
from workshop_utils.training_metrics import TRAIN, VALIDATION, BottleneckMetrics, ImageClassificationMetrics

tf = import_tensorflow()
import keras  # noqa: E402

CACHE_FORMAT = 2  # 2: content hashes instead of mtimes, the pixel limit, skipped.csv
CACHE_FOLDER = "bottlenecks"
SKIPPED_FILE = "skipped.csv"
SKIPPED_COLUMNS = ["path", "reason"]


@dataclass
class Bottlenecks:
    """Cached features of a set of images: row i of ``features`` is image ``image_paths[i]`` of class ``labels[i]``."""

    features: np.ndarray  # (N, d) float32
    labels: list[str]
    image_paths: list[str]
    skipped: pd.DataFrame  # columns path, reason: images left out (bad header, over the pixel limit, undecodable)
    from_cache: bool
    arch: str
    weights_id: str
    image_size: tuple[int, int]
    cache_dir: Path | None = None
    seconds: float = 0.0  # time to compute (or load) the features
    images_per_second: float = field(default=0.0, repr=False)  # computing speed (0 when loaded from the cache)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def label_indices(self, label_map: Any) -> np.ndarray:
        """The labels as class indices of ``label_map`` (a :class:`workshop_utils.core.labels.LabelMap`)."""
        return np.asarray(label_map.encode(self.labels), dtype=np.int64)


def _image_root(paths: list[str]) -> str:
    """The deepest folder holding every image: paths in the fingerprint are relative to it."""
    try:
        return os.path.commonpath([os.path.dirname(p) for p in paths])
    except ValueError:  # different drives (Windows): keep absolute paths
        return ""


def _relative(path: str, root: str) -> str:
    return Path(os.path.relpath(path, root) if root else path).as_posix()


def _content_entries(paths: list[str], progress: bool) -> list[list[Any]]:
    """Each image's fingerprint entry [relative path, size, SHA-1]; an unreadable file gets [path, -1, ""]."""
    root = _image_root(paths)
    entries: list[list[Any]] = []
    for path in tqdm(paths, desc="Fingerprinting images", unit="img", leave=False,
                     disable=not progress or len(paths) < 500):
        try:
            entries.append([_relative(path, root), os.stat(path).st_size, file_digest(path)])
        except OSError:
            entries.append([_relative(path, root), -1, ""])
    return entries


def _header_problems(paths: list[str], max_pixels: int | None) -> tuple[dict[int, str], np.ndarray]:
    """(by row, why a file cannot be used; every file's EXIF orientation) from the scorers' header check
    (format table, pixel limit, cut JPEG/PNG data), so a bad file never reaches the decoder."""
    problems: dict[int, str] = {}
    orientations = np.ones(len(paths), dtype=np.int32)
    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size == 0:
                    problems[i] = "empty file (0 bytes)"
                else:
                    orientations[i] = check_image_file(fh, max_pixels, name="", complete=True).orientation
        except FileNotFoundError:
            problems[i] = "file not found"
        except InvalidImageError as error:
            problems[i] = str(error)
        except OSError as error:  # a folder, no permission, …
            problems[i] = f"cannot read the file ({error.strerror or type(error).__name__})"
    return problems, orientations


def _stale_reason(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why a cached fingerprint no longer matches (None when it does), in a few words."""
    if old.get("format") != CACHE_FORMAT:
        return f"cache format {old.get('format')} is not the current {CACHE_FORMAT}"
    for key, what in (("arch", "architecture"), ("weights_id", "backbone weights"), ("image_size", "input size"),
                      ("precision", "precision"), ("max_pixels", "pixel limit")):
        o, n = old.get(key, ["?", "?"] if key == "image_size" else None), new[key]
        if o != n:
            o, n = ("x".join(map(str, o)), "x".join(map(str, n))) if key == "image_size" else (o, n)
            return f"{what} changed ({'max_pixels ' if key == 'max_pixels' else ''}{o} → {n})"
    if old.get("decoding", 1) != new["decoding"]:
        return (f"image decoding changed (version {old.get('decoding', 1)} → {new['decoding']}: "
                "images.DECODE_VERSION, e.g. EXIF orientation now applied)")
    old_images = [tuple(x) for x in old.get("images", [])]
    new_images = [tuple(x) for x in new["images"]]
    if old_images == new_images:
        return None
    old_paths, new_paths = [x[0] for x in old_images], [x[0] for x in new_images]
    if old_paths != new_paths:
        added = [p for p in new_paths if p not in set(old_paths)]
        removed = [p for p in old_paths if p not in set(new_paths)]
        parts = [f"{len(found)} {what} (first: {found[0]})" for found, what in ((added, "added"), (removed, "removed"))
                 if found]
        return "image list changed: " + ", ".join(parts) if parts else "image order changed"
    changed = [n[0] for o, n in zip(old_images, new_images) if o != n]
    return f"{len(changed)} image{'s' if len(changed) != 1 else ''} changed content (first: {changed[0]})"


def _read_cache(folder: Path) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """(manifest, features): None for a missing manifest; features None when they do not match it."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict):
        return None, None
    try:
        features = np.load(folder / "features.npy", allow_pickle=False)
    except (OSError, ValueError):
        return manifest, None
    good = features.ndim == 2 and features.shape[0] == manifest.get("rows") and features.dtype == np.float32
    return manifest, features if good else None


def _kept_and_skipped(manifest: dict[str, Any], paths: list[str]) -> tuple[list[int], pd.DataFrame]:
    """(rows of ``paths`` that have features, the skipped table) from the manifest's skipped list."""
    info = manifest.get("skipped", [])
    rows = {int(s["index"]) for s in info}
    return ([i for i in range(len(paths)) if i not in rows],
            pd.DataFrame([(paths[int(s["index"])], s["reason"]) for s in info], columns=SKIPPED_COLUMNS, dtype=str))


def load_bottlenecks(folder: str | os.PathLike) -> Bottlenecks:
    """Open a cache folder written by :func:`compute_bottlenecks` without the images (e.g. to retrain a head)."""
    folder = Path(folder)
    manifest, features = _read_cache(folder)
    if manifest is None or features is None:
        raise DatasetError(f"{folder} is not a complete bottleneck cache (manifest.json and features.npy must "
                           "match); compute it again with compute_bottlenecks().")
    root, fp = manifest.get("root", ""), manifest["fingerprint"]
    paths = [os.path.join(root, img[0]) if root else img[0] for img in fp["images"]]
    keep, skipped = _kept_and_skipped(manifest, paths)
    return Bottlenecks(features=features, labels=(folder / "labels.txt").read_text(encoding="utf-8").splitlines(),
                       image_paths=[paths[i] for i in keep], skipped=skipped, from_cache=True, arch=fp["arch"],
                       weights_id=fp["weights_id"], image_size=tuple(fp["image_size"]), cache_dir=folder)


@lru_cache(maxsize=4)  # as many as architectures.feature_extractor keeps
def _runner(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """A traced ``model(x, training=False)`` for any batch size, shared between calls (tracing is slow). As fast as
    ``predict_on_batch`` on 2 CPU cores; XLA (``jit_compile``) was ~15x slower here, so it is off."""
    h, w = model.input_shape[1:3]
    return tf.function(lambda x: model(x, training=False),
                       input_signature=[tf.TensorSpec((None, h, w, 3), tf.float32)], reduce_retracing=True)


def _mixed_precision_model(architecture: Architecture, weights: WeightsSpec, size: tuple[int, int]) -> keras.Model:
    """The extractor built under Keras's ``mixed_float16`` policy (float16 maths on the GPU, float32 out)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        return architecture.build(weights, size)
    finally:
        keras.config.set_dtype_policy(previous)


def _error_reason(path: str, size: tuple[int, int], orientation: int) -> str | None:
    """Decode one file eagerly to learn why the pipeline dropped it (None if it decodes now)."""
    try:
        with quiet_native_stderr():  # libjpeg prints its own line about a corrupt file on the C stderr
            decode_image(tf.io.read_file(path), size, orientation)
        return None
    except tf.errors.NotFoundError:
        return "file not found"
    except tf.errors.OpError as error:
        message = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message or "")
        return re.sub(r"\s*\[Op:[^\]]*\].*$", "", message).strip() or type(error).__name__


def _warn_skipped(skipped: pd.DataFrame, total: int, when: str, folder: Path | None, stacklevel: int) -> None:
    """One warning: how many images were left out, the first with its reason, and where the whole list is."""
    if len(skipped):
        first = skipped.iloc[0]
        where = (f"all {len(skipped)} with reasons: {folder / SKIPPED_FILE}" if folder is not None
                 else "all of them with reasons are in the result's .skipped table (path, reason)")
        warnings.warn(f"Skipped {len(skipped)} of {total} images that could not be used{when} "
                      f"(first: {first['path']}: {first['reason']}); {where}.", SkippedImagesWarning,
                      stacklevel=stacklevel)


def compute_bottlenecks(df: pd.DataFrame, arch: str | Architecture, workspace: str | os.PathLike | None = None,
                        cache_name: str | None = "train", reuse: bool = False, batch_size: int = 32,
                        metrics_callback: Callable[[ImageClassificationMetrics], Any] | None = None, *,
                        weights: WeightsSpec = "imagenet", image_size: tuple[int, int] | None = None,
                        dataset_name: str | None = None, progress: bool = True, mixed_precision: bool = False,
                        max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Bottlenecks:
    """Run every image of ``df`` (columns ``image_path``, ``label``) through the frozen CNN once.

    ``reuse``: load the cache when its fingerprint matches (no model built), else print why not; ``cache_name=None``:
    no cache. ``metrics_callback`` gets ML.NET's per-image line (``dataset_name`` defaults from ``cache_name``).
    ``mixed_precision`` applies on a GPU only. Images over ``max_pixels`` or undecodable are skipped and reported.
    """
    started = time.perf_counter()
    if not isinstance(df, pd.DataFrame) or "image_path" not in df.columns:
        got = list(df.columns) if isinstance(df, pd.DataFrame) else type(df).__name__
        raise DatasetError(f"compute_bottlenecks needs a DataFrame with an 'image_path' column (got {got}); "
                           "load it with workshop_utils.data.load_dataset().")
    if len(df) == 0:
        raise DatasetError(f"No images to compute bottlenecks for (cache {cache_name!r} got an empty table).")
    if int(batch_size) < 1:
        raise DatasetError(f"batch_size must be at least 1, got {batch_size}.")
    architecture = get_architecture(arch)
    size = architecture.resolve_input_size(image_size)
    weights_id = architecture.weights_id(weights)
    if mixed_precision and not tf.config.list_physical_devices("GPU"):
        print("Note: mixed precision needs a GPU; computing the bottlenecks in float32 on the CPU.")
        mixed_precision = False
    paths = [os.path.abspath(str(p)) for p in df["image_path"]]
    labels = [str(x) for x in df["label"]] if "label" in df.columns else [""] * len(paths)
    ds_name = dataset_name or (VALIDATION if cache_name and cache_name.lower().startswith("val") else TRAIN)
    base = dict(arch=architecture.name, weights_id=weights_id, image_size=tuple(size))

    folder = fingerprint = None
    if cache_name is not None:
        folder = Path(workspace if workspace is not None else workspace_dir()).expanduser() / CACHE_FOLDER / cache_name
        fingerprint = {"arch": architecture.name, "weights_id": weights_id, "image_size": [int(size[0]), int(size[1])],
                       "precision": "mixed_float16" if mixed_precision else "float32", "max_pixels": max_pixels,
                       "decoding": DECODE_VERSION, "images": _content_entries(paths, progress)}
        if reuse:
            hit = _try_reuse(folder, fingerprint, paths, labels, base, cache_name, started)
            if hit is not None:
                return hit

    reasons, orientations = _header_problems(paths, max_pixels)  # walks the files; a cache hit above needs none
    candidates = [i for i in range(len(paths)) if i not in reasons]  # header checked: these go to the decoder
    ok = np.zeros(len(paths), dtype=bool)
    if candidates:
        model = (_mixed_precision_model(architecture, weights, size) if mixed_precision
                 else feature_extractor(architecture, weights, size))
        features, ok = _run_pipeline(model, paths, candidates, size, int(batch_size), ds_name, metrics_callback,
                                     progress, orientations)
        for i in [i for i in candidates if not ok[i]]:
            reason = _error_reason(paths[i], size, int(orientations[i]))
            if reason is None:  # decodes on a second try (a file written meanwhile): compute it after all
                image = decode_image(tf.io.read_file(paths[i]), size, int(orientations[i]))
                features[i] = np.asarray(_runner(model)(image[None]), dtype=np.float32)[0]
                ok[i] = True
            else:
                reasons[i] = reason
    keep = np.flatnonzero(ok)
    if len(keep) == 0:  # every image failed its header check or its decoding
        first = min(reasons)
        raise DatasetError(f"None of the {len(paths)} images could be decoded (first: {paths[first]}: "
                           f"{reasons[first]}); check the image paths and that the files are {SUPPORTED_FORMATS} "
                           "images.")
    features = np.ascontiguousarray(features[keep])
    kept_labels = [labels[i] for i in keep]
    skipped = pd.DataFrame([(paths[i], reasons[i]) for i in sorted(reasons)], columns=SKIPPED_COLUMNS, dtype=str)
    elapsed = time.perf_counter() - started

    if folder is not None and fingerprint is not None:
        root = _image_root(paths)
        manifest = {
            "format": CACHE_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "root": root,
            "rows": int(len(keep)), "width": int(features.shape[1]), "fingerprint": fingerprint,
            "skipped": [{"index": int(i), "path": _relative(paths[i], root), "reason": reasons[i]}
                        for i in sorted(reasons)],
        }
        with atomic_folder(folder) as tmp:  # labels.txt: each row's label (not class names, so not core.labels)
            np.save(tmp / "features.npy", features, allow_pickle=False)
            (tmp / "labels.txt").write_text("".join(f"{label}\n" for label in kept_labels), encoding="utf-8")
            skipped.to_csv(tmp / SKIPPED_FILE, index=False)
            (tmp / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")  # last: without it, untrusted
    _warn_skipped(skipped, len(paths), "", folder, stacklevel=3)
    return Bottlenecks(features=features, labels=kept_labels, image_paths=[paths[i] for i in keep], skipped=skipped,
                       from_cache=False, cache_dir=folder, seconds=elapsed,
                       images_per_second=len(paths) / max(elapsed, 1e-9), **base)


def _try_reuse(folder: Path, fingerprint: dict[str, Any], paths: list[str], labels: list[str],
               base: dict[str, Any], cache_name: str, started: float) -> Bottlenecks | None:
    """The cached bottlenecks when the fingerprint matches; else print why and return None."""
    manifest, features = _read_cache(folder)
    if manifest is None:
        reason = "no cache yet" if not folder.exists() else "the cache is incomplete (no readable manifest.json)"
        print(f"Cache {cache_name}: {reason}; computing the bottlenecks.")
        return None
    reason = _stale_reason({**manifest.get("fingerprint", {}), "format": manifest.get("format")}, fingerprint)
    if reason is None and features is None:
        reason = "features.npy is damaged or does not match manifest.json"
    if reason is not None or features is None:
        print(f"Cache {cache_name} is stale: {reason}; recomputing.")
        return None
    print(f"Cache {cache_name}: reusing {len(features)} cached bottlenecks (fingerprint matches) from {folder}.")
    keep, skipped = _kept_and_skipped(manifest, paths)
    _warn_skipped(skipped, len(paths), " when the cache was made", folder, stacklevel=4)
    return Bottlenecks(features=features, labels=[labels[i] for i in keep], image_paths=[paths[i] for i in keep],
                       skipped=skipped, from_cache=True, cache_dir=folder, seconds=time.perf_counter() - started,
                       **base)


def _run_pipeline(model: keras.Model, paths: list[str], rows: list[int], size: tuple[int, int], batch_size: int,
                  ds_name: str, metrics_callback: Callable[[ImageClassificationMetrics], Any] | None,
                  progress: bool, orientations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stream the files of ``rows`` (ascending) through decode → orient → resize → batch → model; (features,
    decoded-ok mask), both over all ``paths`` (rows not streamed stay unfilled). ``orientations``: EXIF, by path."""
    features = np.zeros((len(paths), int(model.output_shape[-1])), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)

    def load(index: tf.Tensor, path: tf.Tensor, orientation: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return index, decode_image(tf.io.read_file(path), size, orientation)

    # Decoding overlaps the model (fixed decode workers, one batch prefetched). tf.data's autotuner is off: on
    # 2 CPU cores it intermittently halved the model's speed (~50 instead of ~95 images/s for Lite0; bench).
    options = tf.data.Options()
    options.autotune.enabled = False
    turns = np.asarray(orientations, dtype=np.int32)
    dataset = (
        tf.data.Dataset.from_tensor_slices((tf.constant(rows, dtype=tf.int64), tf.constant([paths[i] for i in rows]),
                                            tf.constant(turns[rows], dtype=tf.int32)))
        .map(load, num_parallel_calls=min(8, os.cpu_count() or 1), deterministic=True)
        .ignore_errors()  # a failing file is dropped; _error_reason decodes it alone afterwards to say why
        .batch(batch_size).prefetch(1).with_options(options)
    )
    run = _runner(model)
    metrics = ImageClassificationMetrics(bottleneck=BottleneckMetrics(dataset_used=ds_name))
    order = np.asarray(rows, dtype=np.int64)
    with tqdm(total=len(rows), desc=f"Bottlenecks ({ds_name})", unit="img", disable=not progress) as bar:
        done = 0
        for indices, images in dataset:
            idx = indices.numpy()
            features[idx] = np.asarray(run(images), dtype=np.float32)
            ok[idx] = True
            if metrics_callback is not None:
                with tqdm.external_write_mode():  # the bar steps aside for the printed lines, then redraws
                    for i in idx:
                        metrics.bottleneck.index = int(i) + 1
                        metrics_callback(metrics)
            reached = int(np.searchsorted(order, idx[-1])) + 1  # rows dropped before this one count as processed
            bar.update(reached - done)
            done = reached
        bar.update(len(rows) - done)
    return features, ok
