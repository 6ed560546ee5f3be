"""The bottleneck phase: every image once through the frozen CNN, the pooled vectors cached on disk.

Files stream through a ``tf.data`` pipeline (read → :func:`workshop_utils.core.images.decode_image` → batch →
prefetch) into the feature extractor, so memory holds only the feature matrix, never all the pixels.
The cache ``<workspace>/bottlenecks/<cache_name>/`` (``features.npy``, ``labels.txt``, ``manifest.json``,
``skipped.csv``) carries a fingerprint of the architecture, its weights, the input size, the pixel limit,
the decoding rules (``images.DECODE_VERSION``: EXIF orientation, which files are refused) and every
image (relative path, size and a hash of its bytes: a replaced file is noticed even when it keeps its
size and timestamp); ``reuse=True`` trusts it only when the fingerprint matches (ML.NET only
checks that the files exist). It is written to a temporary folder and renamed into place, so an
interrupted run never leaves a cache that a later run trusts. Before decoding, each file's header is
checked as the scorers check uploads (``predictions.check_image_file``: the format table,
``DEFAULT_MAX_PIXELS``, and data that ends before its pixels do), so a decompression bomb or a cut file is
never decoded; an image that fails the check or cannot be decoded is skipped and reported. Each photo is
turned upright by its EXIF orientation (read with the header) before it is resized.
"""
from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from workshop_utils.architectures import Architecture, WeightsSpec, feature_extractor, get_architecture
from workshop_utils.config import workspace_dir
from workshop_utils.core.errors import (
    DatasetError,
    InvalidImageError,
    SkippedImagesWarning,
)
from workshop_utils.core.formats import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_FORMATS,
    check_image_file,
)
from workshop_utils.core.fsutil import atomic_folder
from workshop_utils.core.images import DECODE_VERSION, decode_image
from workshop_utils.core.runtime import import_tensorflow, quiet_native_stderr
from workshop_utils.quality import file_digest
from workshop_utils.training_metrics import TRAIN, VALIDATION, BottleneckMetrics, ImageClassificationMetrics

tf = import_tensorflow()
import keras  # noqa: E402

CACHE_FORMAT = 2  # 2: content hashes instead of mtimes, the pixel limit, skipped.csv


CACHE_FOLDER = "bottlenecks"


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


def _empty_skipped() -> pd.DataFrame:
    return pd.DataFrame({"path": pd.Series(dtype=str), "reason": pd.Series(dtype=str)})


def _image_root(paths: list[str]) -> str:
    """The deepest folder holding every image: paths in the fingerprint are relative to it."""
    try:
        return os.path.commonpath([os.path.dirname(p) for p in paths])
    except ValueError:  # different drives (Windows): keep absolute paths
        return ""


def _relative(path: str, root: str) -> str:
    return Path(os.path.relpath(path, root) if root else path).as_posix()


def _content_entries(paths: list[str], progress: bool) -> list[list[Any]]:
    """Each image's fingerprint entry: [path relative to the common folder, size, SHA-1 of its bytes].

    A missing or unreadable file gets size -1 (it is skipped, and checked again next run).
    """
    from tqdm.auto import tqdm

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
    """(by row, why a file cannot be used; every file's EXIF orientation), from ``predictions.check_image_file``
    (the format table, the pixel limit the scorers apply, and a JPEG or PNG whose data is cut), so a bad,
    over-limit or cut file never reaches the decoder. The bodies are walked, not decoded."""
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


def _fingerprint(entries: list[list[Any]], architecture: Architecture, weights_id: str, size: tuple[int, int],
                 precision: str, max_pixels: int | None) -> dict[str, Any]:
    """What the features depend on: model identity, input size, pixel limit, decoding rules, and each image's
    path, size and hash."""
    return {
        "arch": architecture.name,
        "weights_id": weights_id,
        "image_size": [int(size[0]), int(size[1])],
        "precision": precision,
        "max_pixels": max_pixels,
        "decoding": DECODE_VERSION,
        "images": entries,
    }


def _stale_reason(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why a cached fingerprint no longer matches (None when it does), in a few words."""
    if old.get("format") != CACHE_FORMAT:
        return f"cache format {old.get('format')} is not the current {CACHE_FORMAT}"
    if old.get("arch") != new["arch"]:
        return f"architecture changed ({old.get('arch')} → {new['arch']})"
    if old.get("weights_id") != new["weights_id"]:
        return f"backbone weights changed ({old.get('weights_id')} → {new['weights_id']})"
    if list(old.get("image_size", [])) != new["image_size"]:
        o, n = old.get("image_size", ["?", "?"]), new["image_size"]
        return f"input size changed ({o[0]}x{o[1]} → {n[0]}x{n[1]})"
    if old.get("precision") != new["precision"]:
        return f"precision changed ({old.get('precision')} → {new['precision']})"
    if old.get("max_pixels") != new["max_pixels"]:
        return f"pixel limit changed (max_pixels {old.get('max_pixels')} → {new['max_pixels']})"
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
        if added or removed:
            parts = []
            if added:
                parts.append(f"{len(added)} added (first: {added[0]})")
            if removed:
                parts.append(f"{len(removed)} removed (first: {removed[0]})")
            return "image list changed: " + ", ".join(parts)
        return "image order changed"
    changed = [n[0] for o, n in zip(old_images, new_images) if o != n]
    return f"{len(changed)} image{'s' if len(changed) != 1 else ''} changed content (first: {changed[0]})"


SKIPPED_FILE = "skipped.csv"


def _write_cache(folder: Path, features: np.ndarray, labels: list[str], manifest: dict[str, Any],
                 skipped: pd.DataFrame) -> None:
    """Write features, labels, the skipped images (path, reason) and (last) the manifest, atomically."""
    with atomic_folder(folder) as tmp:
        np.save(tmp / "features.npy", features, allow_pickle=False)
        (tmp / "labels.txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        skipped.to_csv(tmp / SKIPPED_FILE, index=False)
        # The manifest goes last: a folder without it is never trusted.
        with open(tmp / "manifest.json", "w", encoding="utf-8") as fh:
            json.dump(manifest, fh)
            fh.flush()
            os.fsync(fh.fileno())


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        with open(folder / "manifest.json", encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _load_features(folder: Path, manifest: dict[str, Any]) -> np.ndarray | None:
    """The cached matrix, or None when it does not match the manifest (damaged by hand)."""
    try:
        features = np.load(folder / "features.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if features.ndim != 2 or features.shape[0] != manifest.get("rows") or features.dtype != np.float32:
        return None
    return features


def load_bottlenecks(folder: str | os.PathLike) -> Bottlenecks:
    """Open a cache folder written by :func:`compute_bottlenecks` without the images (e.g. to retrain a head)."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    features = None if manifest is None else _load_features(folder, manifest)
    if manifest is None or features is None:
        raise DatasetError(
            f"{folder} is not a complete bottleneck cache (manifest.json and features.npy must match); "
            "compute it again with compute_bottlenecks()."
        )
    labels = (folder / "labels.txt").read_text(encoding="utf-8").splitlines()
    root = manifest.get("root", "")
    skipped_rows = {int(s["index"]) for s in manifest.get("skipped", [])}
    kept = [img[0] for i, img in enumerate(manifest["fingerprint"]["images"]) if i not in skipped_rows]
    paths = [os.path.join(root, p) if root else p for p in kept]
    skipped = pd.DataFrame([(os.path.join(root, s["path"]) if root else s["path"], s["reason"])
                            for s in manifest.get("skipped", [])], columns=["path", "reason"])
    fp = manifest["fingerprint"]
    return Bottlenecks(features=features, labels=labels, image_paths=paths,
                       skipped=skipped if len(skipped) else _empty_skipped(), from_cache=True, arch=fp["arch"],
                       weights_id=fp["weights_id"], image_size=tuple(fp["image_size"]), cache_dir=folder)


_RUNNERS: dict[int, tuple[keras.Model, Callable[[tf.Tensor], tf.Tensor]]] = {}


def _runner(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """A traced ``model(x, training=False)`` for any batch size, shared between calls (tracing is slow).

    Measured on 2 CPU cores (MobileNetV2 224×224, batch 32): as fast as ``predict_on_batch``; XLA
    (``jit_compile=True``) was about 15× slower for these convolutions, so it is not used.
    """
    key = id(model)
    if key not in _RUNNERS or _RUNNERS[key][0] is not model:
        h, w = model.input_shape[1:3]
        fn = tf.function(lambda x: model(x, training=False),
                         input_signature=[tf.TensorSpec((None, h, w, 3), tf.float32)], reduce_retracing=True)
        _RUNNERS[key] = (model, fn)
        while len(_RUNNERS) > 4:  # as many as architectures.feature_extractor keeps; the oldest go
            _RUNNERS.pop(next(iter(_RUNNERS)))
    return _RUNNERS[key][1]


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
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with quiet_native_stderr():  # libjpeg prints its own line about a corrupt file on the C stderr
            decode_image(tf.io.read_file(path), size, orientation)
        return None
    except tf.errors.OpError as error:
        message = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message or type(error).__name__)
        message = re.sub(r"\s*\[Op:[^\]]*\].*$", "", message).strip()
        if isinstance(error, tf.errors.NotFoundError):
            return "file not found"
        return message or type(error).__name__


def _warn_skipped(skipped: pd.DataFrame, total: int, when: str, folder: Path | None, stacklevel: int) -> None:
    """One warning: how many images were left out, the first with its reason, and where the whole list is."""
    if len(skipped):
        first = skipped.iloc[0]
        where = (f"all {len(skipped)} with reasons: {folder / SKIPPED_FILE}" if folder is not None
                 else "all of them with reasons are in the result's .skipped table (path, reason)")
        warnings.warn(
            f"Skipped {len(skipped)} of {total} images that could not be used{when} "
            f"(first: {first['path']}: {first['reason']}); {where}.",
            SkippedImagesWarning,
            stacklevel=stacklevel,
        )


def _dataset_name(cache_name: str | None, dataset_name: str | None) -> str:
    if dataset_name:
        return dataset_name
    if cache_name and cache_name.lower().startswith("val"):
        return VALIDATION
    return TRAIN


def compute_bottlenecks(
    df: pd.DataFrame,
    arch: str | Architecture,
    workspace: str | os.PathLike | None = None,
    cache_name: str | None = "train",
    reuse: bool = False,
    batch_size: int = 32,
    metrics_callback: Callable[[ImageClassificationMetrics], Any] | None = None,
    *,
    weights: WeightsSpec = "imagenet",
    image_size: tuple[int, int] | None = None,
    dataset_name: str | None = None,
    progress: bool = True,
    mixed_precision: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Bottlenecks:
    """Run every image of ``df`` (columns ``image_path``, ``label``) through the frozen CNN once.

    With ``reuse`` the cache ``<workspace>/bottlenecks/<cache_name>/`` is loaded when its fingerprint
    matches (no model is even built); otherwise one line says why it is recomputed. ``cache_name=None``
    neither reads nor writes a cache. ``metrics_callback`` gets ML.NET's per-image line (``dataset_name``
    "Train"/"Validation", default from ``cache_name``); ``mixed_precision`` applies on a GPU only.
    Images over ``max_pixels`` (from the header; the scorers' limit) or not of the format table are
    skipped without being decoded, and reported with the undecodable ones (a SkippedImagesWarning).
    """
    started = time.perf_counter()
    if not isinstance(df, pd.DataFrame) or "image_path" not in df.columns:
        got = list(df.columns) if isinstance(df, pd.DataFrame) else type(df).__name__
        raise DatasetError(
            f"compute_bottlenecks needs a DataFrame with an 'image_path' column (got {got}); "
            "load it with workshop_utils.data.load_dataset()."
        )
    if len(df) == 0:
        raise DatasetError(f"No images to compute bottlenecks for (cache {cache_name!r} got an empty table).")
    if int(batch_size) < 1:
        raise DatasetError(f"batch_size must be at least 1, got {batch_size}.")
    architecture = get_architecture(arch)
    size = architecture.resolve_input_size(image_size)
    weights_id = architecture.weights_id(weights)
    gpus = tf.config.list_physical_devices("GPU")
    if mixed_precision and not gpus:
        print("Note: mixed precision needs a GPU; computing the bottlenecks in float32 on the CPU.")
        mixed_precision = False
    precision = "mixed_float16" if mixed_precision else "float32"
    paths = [os.path.abspath(str(p)) for p in df["image_path"]]
    labels = [str(x) for x in df["label"]] if "label" in df.columns else [""] * len(paths)
    ds_name = _dataset_name(cache_name, dataset_name)
    base = dict(arch=architecture.name, weights_id=weights_id, image_size=tuple(size))

    folder = None
    fingerprint = None
    if cache_name is not None:
        folder = Path(workspace if workspace is not None else workspace_dir()).expanduser() / CACHE_FOLDER / cache_name
        fingerprint = _fingerprint(_content_entries(paths, progress), architecture, weights_id, size, precision,
                                   max_pixels)
        if reuse:
            hit = _try_reuse(folder, fingerprint, paths, labels, base, cache_name, started)
            if hit is not None:
                return hit

    reasons, orientations = _header_problems(paths, max_pixels)  # walks the files; a cache hit above needs none
    candidates = [i for i in range(len(paths)) if i not in reasons]  # header checked: these go to the decoder
    if not candidates:
        _raise_nothing_decodable(paths, reasons)
    if mixed_precision:
        model = _mixed_precision_model(architecture, weights, size)
    else:
        model = feature_extractor(architecture, weights, size)
    features, ok = _run_pipeline(model, paths, candidates, size, int(batch_size), ds_name, metrics_callback,
                                 progress, orientations)

    skipped_rows = [i for i in candidates if not ok[i]]
    retry: list[int] = []
    for i in skipped_rows:
        reason = _error_reason(paths[i], size, int(orientations[i]))
        if reason is None:
            retry.append(i)  # decoded on a second try (a file written meanwhile): compute it after all
        else:
            reasons[i] = reason
    if retry:
        images = tf.stack([decode_image(tf.io.read_file(paths[i]), size, int(orientations[i])) for i in retry])
        features[retry] = np.asarray(_runner(model)(images), dtype=np.float32)
        ok[retry] = True
    keep = np.flatnonzero(ok)
    if len(keep) == 0:
        _raise_nothing_decodable(paths, reasons)
    features = np.ascontiguousarray(features[keep])
    kept_labels = [labels[i] for i in keep]
    skipped = pd.DataFrame([(paths[i], reasons[i]) for i in sorted(reasons)], columns=["path", "reason"])
    elapsed = time.perf_counter() - started

    if folder is not None and fingerprint is not None:
        root = _image_root(paths)
        manifest = {
            "format": CACHE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "root": root,
            "rows": int(len(keep)),
            "width": int(features.shape[1]),
            "fingerprint": fingerprint,
            "skipped": [{"index": int(i), "path": _relative(paths[i], root), "reason": reasons[i]}
                        for i in sorted(reasons)],
        }
        _write_cache(folder, features, kept_labels, manifest, skipped)
    _warn_skipped(skipped, len(paths), "", folder, stacklevel=3)

    return Bottlenecks(features=features, labels=kept_labels, image_paths=[paths[i] for i in keep],
                       skipped=skipped if len(skipped) else _empty_skipped(), from_cache=False,
                       cache_dir=folder, seconds=elapsed, images_per_second=len(paths) / max(elapsed, 1e-9),
                       **base)


def _raise_nothing_decodable(paths: list[str], reasons: dict[int, str]) -> NoReturn:
    """Every image failed (its header check or its decoding): one error naming the first and why."""
    first = min(reasons)
    raise DatasetError(
        f"None of the {len(paths)} images could be decoded (first: {paths[first]}: {reasons[first]}); "
        f"check the image paths and that the files are {SUPPORTED_FORMATS} images."
    )


def _try_reuse(folder: Path, fingerprint: dict[str, Any], paths: list[str], labels: list[str],
               base: dict[str, Any], cache_name: str, started: float) -> Bottlenecks | None:
    """The cached bottlenecks when the fingerprint matches; else print why and return None."""
    manifest = _read_manifest(folder)
    if manifest is None:
        reason = "no cache yet" if not folder.exists() else "the cache is incomplete (no readable manifest.json)"
        print(f"Cache {cache_name}: {reason}; computing the bottlenecks.")
        return None
    reason = _stale_reason({**manifest.get("fingerprint", {}), "format": manifest.get("format")}, fingerprint)
    features = None
    if reason is None:
        features = _load_features(folder, manifest)
        if features is None:
            reason = "features.npy is damaged or does not match manifest.json"
    if reason is not None or features is None:
        print(f"Cache {cache_name} is stale: {reason}; recomputing.")
        return None
    print(f"Cache {cache_name}: reusing {len(features)} cached bottlenecks (fingerprint matches) from {folder}.")
    skipped_info = manifest.get("skipped", [])
    skipped_rows = {int(s["index"]) for s in skipped_info}
    keep = [i for i in range(len(paths)) if i not in skipped_rows]
    skipped = pd.DataFrame([(paths[int(s["index"])], s["reason"]) for s in skipped_info], columns=["path", "reason"])
    _warn_skipped(skipped, len(paths), " when the cache was made", folder, stacklevel=4)
    return Bottlenecks(features=features, labels=[labels[i] for i in keep], image_paths=[paths[i] for i in keep],
                       skipped=skipped if len(skipped) else _empty_skipped(), from_cache=True, cache_dir=folder,
                       seconds=time.perf_counter() - started, **base)


def _run_pipeline(model: keras.Model, paths: list[str], rows: list[int], size: tuple[int, int], batch_size: int,
                  ds_name: str, metrics_callback: Callable[[ImageClassificationMetrics], Any] | None,
                  progress: bool, orientations: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stream the files of ``rows`` (ascending) through decode → orient → resize → batch → model; (features,
    decoded-ok mask), both over all ``paths`` (rows not streamed stay unfilled). ``orientations``: EXIF, by path."""
    from tqdm.auto import tqdm

    n = len(paths)
    width = int(model.output_shape[-1])
    features = np.zeros((n, width), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)

    turns = np.ones(n, dtype=np.int32) if orientations is None else np.asarray(orientations, dtype=np.int32)

    def load(index: tf.Tensor, path: tf.Tensor, orientation: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return index, decode_image(tf.io.read_file(path), size, orientation)

    # Decoding overlaps the model: a fixed number of decode workers and one batch prefetched. tf.data's
    # autotuner is off: on 2 CPU cores its background work intermittently halved the model's speed
    # (~50 instead of ~95 images/s for EfficientNet-Lite0; measured, see workshop_utils.bench).
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = (
        tf.data.Dataset.from_tensor_slices((tf.constant(rows, dtype=tf.int64), tf.constant([paths[i] for i in rows]),
                                            tf.constant(turns[rows], dtype=tf.int32)))
        .map(load, num_parallel_calls=min(8, os.cpu_count() or 1), deterministic=True)
        # A file that fails to read or decode is dropped here; its index is missing from the batches, and
        # the reason is found afterwards by decoding it again on its own (see _error_reason).
        .ignore_errors()
        .batch(batch_size)
        .prefetch(1)
        .with_options(options)
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
