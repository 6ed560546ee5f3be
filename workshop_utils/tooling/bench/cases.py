"""The benchmark's timed cases, each returning its measures as a dict; the settings they all share."""
from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import psutil  # installed with Jupyter's kernel
from sklearn.linear_model import LogisticRegression

from workshop_utils import config, quality
from workshop_utils.architectures import feature_extractor, get_architecture
from workshop_utils.bottleneck import Bottlenecks, _runner, compute_bottlenecks
from workshop_utils.core.formats import DEFAULT_MAX_PIXELS, check_image_file
from workshop_utils.core.images import decode_image
from workshop_utils.core.labels import LabelMap
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.data import by_subset, load_dataset
from workshop_utils.download import find_data_root
from workshop_utils.finetune import (build_augmentation, compile_for_fine_tuning, compose_model, default_options,
                                     image_dataset, inner_backbone, one_hot, unfreeze_top)
from workshop_utils.head import Options, build_head
from workshop_utils.trainer import ImageClassificationTrainer, class_weights

tf = import_tensorflow()
import keras  # noqa: E402  (after import_tensorflow, which quiets TensorFlow's banner)


@dataclass(frozen=True)
class BenchSettings:
    """What to measure with; ``quick`` shrinks everything to fit in about three minutes on 2 cores."""
    arch: str = "EfficientNetLite0"
    weights: str | None = "imagenet"
    image_size: tuple[int, int] | None = None
    images: int = 512
    batch_size: int = 32
    head_samples: int = 1210
    head_features: int = 1280
    head_classes: int = 8
    head_epochs: int = 200
    head_batch_size: int = 10
    naive_epochs: int = 20  # E of the naive-vs-cached comparison
    naive_epochs_run: int = 20  # epochs the naive recipe really runs (per-epoch time × E when fewer)
    memory_probe: bool = True

    def bottlenecks(self, frame: pd.DataFrame, workspace: Path, cache_name: str, **kwargs: Any) -> Bottlenecks:
        return compute_bottlenecks(frame, self.arch, cache_name=cache_name, workspace=workspace, progress=False,
                                   batch_size=self.batch_size, weights=self.weights, image_size=self.image_size,
                                   **kwargs)


def source_images() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) images to measure on: the real car-damage photos when downloaded, else the sample."""
    real = config.data_dir() / "car-damage"
    root = find_data_root(real) if real.is_dir() else None
    return by_subset(load_dataset(root if root is not None else config.sample_dir()))


def bench_images(n: int, folder: Path) -> pd.DataFrame:
    """N labelled image files: the source's training images, copied (renamed) until there are N."""
    train, _ = source_images()  # only training images are replicated: validation stays unseen
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        source = train.iloc[i % len(train)]
        target = folder / f"{i:06d}{Path(source.image_path).suffix}"
        shutil.copyfile(source.image_path, target)
        rows.append({"image_path": str(target), "label": source.label, "subset": "train"})
    return pd.DataFrame(rows)


def timed(run: Callable[[], Any]) -> tuple[Any, float]:
    """(what ``run()`` returns, the seconds it took)."""
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def seconds(run: Callable[[], Any]) -> float:
    return timed(run)[1]


def bench_pipeline(s: BenchSettings, frame: pd.DataFrame, workspace: Path) -> dict[str, Any]:
    """(1) files → features vs model.predict on pre-decoded pixels; (2) cache reuse vs first computation."""
    size = get_architecture(s.arch).resolve_input_size(s.image_size)
    model = feature_extractor(s.arch, s.weights, size)
    # the 'raw' side: every image decoded and resized in memory, exactly as the pipeline does
    pixels = np.stack([decode_image(tf.io.read_file(p), size).numpy() for p in frame["image_path"]])
    model.predict(pixels[: s.batch_size], batch_size=s.batch_size, verbose=0)  # warm-up
    raw_seconds = seconds(lambda: model.predict(pixels, batch_size=s.batch_size, verbose=0))
    forward = _runner(model)  # the bare forward pass the pipeline itself calls, batch by batch
    forward(pixels[: s.batch_size])
    forward_seconds = seconds(lambda: [forward(pixels[i: i + s.batch_size]).numpy()
                                        for i in range(0, len(pixels), s.batch_size)])
    pixels = None  # free the decoded images (hundreds of MB) before the pipeline runs

    s.bottlenecks(frame.head(s.batch_size), workspace, "warmup")  # trace + warm
    first, pipeline_seconds = timed(lambda: s.bottlenecks(frame, workspace, "bench", reuse=False))
    again, reuse_seconds = timed(lambda: s.bottlenecks(frame, workspace, "bench", reuse=True))
    assert again.from_cache and again.features.shape == first.features.shape
    n = len(frame)
    return {
        "images": n, "raw_images_per_second": n / raw_seconds, "pipeline_images_per_second": n / pipeline_seconds,
        "pipeline_vs_raw": raw_seconds / pipeline_seconds, "forward_images_per_second": n / forward_seconds,
        "pipeline_vs_forward": forward_seconds / pipeline_seconds, "bottleneck_seconds": pipeline_seconds,
        "cache_reuse_seconds": reuse_seconds, "cache_speedup": pipeline_seconds / reuse_seconds,
    }


def structured_features(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random features with class structure (a mean per class plus noise), like bottlenecks of real photos."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (classes, d)).astype(np.float32)
    y = np.arange(n) % classes
    x = np.maximum(centers[y] + rng.normal(0.0, 2.0, (n, d)).astype(np.float32), 0.0)  # ReLU-like, as CNN features
    return x.astype(np.float32), y


def _bottlenecks(features: np.ndarray, y: np.ndarray, arch: str) -> Bottlenecks:
    labels = [f"class_{k}" for k in y]
    return Bottlenecks(features=features, labels=labels, image_paths=[f"{i}.jpeg" for i in range(len(labels))],
                       skipped=pd.DataFrame(columns=["path", "reason"]), from_cache=False, arch=arch,
                       weights_id="bench", image_size=(224, 224))


def bench_head(s: BenchSettings) -> dict[str, Any]:
    """(3) 200 epochs of the softmax head with validation every epoch: ours, a plain Keras fit, scikit-learn."""
    n_val = max(s.head_samples // 4, 1)
    x_all, y_all = structured_features(s.head_samples + n_val, s.head_features, s.head_classes)
    x, y, xv, yv = x_all[:s.head_samples], y_all[:s.head_samples], x_all[s.head_samples:], y_all[s.head_samples:]
    train, validation = _bottlenecks(x, y, s.arch), _bottlenecks(xv, yv, s.arch)
    options = Options(arch=s.arch, epoch=s.head_epochs, batch_size=s.head_batch_size, early_stopping=None,
                      test_on_train_set=True, progress=False)
    # tracing included: a learner pays it too
    trained, head_seconds = timed(lambda: ImageClassificationTrainer(options).fit_features(train, validation))

    # Keras' plain recipe: fit on numpy arrays, one Python step per batch. Timed over a few epochs, scaled.
    plain_epochs = min(s.head_epochs, 10)
    plain = build_head(s.head_features, s.head_classes)
    plain.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    plain.fit(x[:s.head_batch_size], y[:s.head_batch_size], epochs=1, verbose=0)  # trace once
    plain_seconds = seconds(lambda: plain.fit(x, y, batch_size=s.head_batch_size, epochs=plain_epochs,
                                               validation_data=(xv, yv), verbose=0)) * s.head_epochs / plain_epochs
    sklearn_seconds = seconds(lambda: LogisticRegression(max_iter=1000).fit(x, y))
    final = trained.history[trained.history["dataset"] == "Validation"].iloc[-1]
    return {
        "head_train_seconds": head_seconds, "head_train_epochs": s.head_epochs,
        "head_train_final_accuracy": float(final["accuracy"]), "plain_fit_seconds": plain_seconds,
        "plain_fit_epochs_timed": plain_epochs, "sklearn_seconds": sklearn_seconds,
        "head_train_vs_sklearn": head_seconds / sklearn_seconds,
    }


def bench_naive(s: BenchSettings, frame: pd.DataFrame, workspace: Path) -> dict[str, Any]:
    """(4) the tutorial recipe (frozen backbone inside a Sequential, fit over images) vs bottleneck-once: both train
    on the same N files and are scored on the validation images, not among the (replicated) training files."""
    size = get_architecture(s.arch).resolve_input_size(s.image_size)
    train_df, val_df = frame, source_images()[1]  # the N (replicated) training files; distinct validation images
    label_map = LabelMap.from_labels(list(train_df["label"]) + list(val_df["label"]))

    def dataset(df: pd.DataFrame, shuffle: bool = False) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((list(df["image_path"]), label_map.encode(df["label"])))
        if shuffle:  # what the tutorial does: reshuffle the file list every epoch
            ds = ds.shuffle(len(df), seed=0, reshuffle_each_iteration=True)
        ds = ds.map(lambda p, y: (decode_image(tf.io.read_file(p), size), y), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(s.head_batch_size).prefetch(tf.data.AUTOTUNE)

    keras.utils.set_random_seed(0)
    naive = keras.Sequential([feature_extractor(s.arch, s.weights, size),
                              keras.layers.Dense(len(label_map), activation="softmax")])
    naive.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    naive.fit(dataset(train_df.head(s.head_batch_size)), epochs=1, verbose=0, shuffle=False)  # trace + warm
    naive_run_seconds = seconds(lambda: naive.fit(dataset(train_df, shuffle=True), epochs=s.naive_epochs_run,
                                                   verbose=0, shuffle=False))
    naive_seconds = naive_run_seconds * s.naive_epochs / s.naive_epochs_run
    naive_accuracy = float(naive.evaluate(dataset(val_df), verbose=0)[1])

    options = Options(arch=s.arch, epoch=s.naive_epochs, batch_size=s.head_batch_size, early_stopping=None,
                      weights=s.weights, image_size=s.image_size, workspace_path=str(workspace), progress=False)
    started = time.perf_counter()
    train_b = s.bottlenecks(train_df, workspace, "naive-train")
    val_b = s.bottlenecks(val_df, workspace, "naive-validation")
    trained = ImageClassificationTrainer(options).fit_features(train_b, val_b)
    cached_seconds = time.perf_counter() - started
    predicted = trained.predict(val_b.features)
    cached_accuracy = float(np.mean(np.asarray(predicted) == np.asarray(val_b.labels)))
    return {
        "naive_epochs": s.naive_epochs, "naive_epochs_run": s.naive_epochs_run, "naive_seconds": naive_seconds,
        "naive_extrapolated": s.naive_epochs_run != s.naive_epochs, "cached_seconds": cached_seconds,
        "naive_vs_cached_speedup": naive_seconds / cached_seconds, "naive_accuracy": naive_accuracy,
        "naive_accuracy_after_epochs": s.naive_epochs_run, "cached_accuracy": cached_accuracy,
    }


def bench_finetune(s: BenchSettings, frame: pd.DataFrame, bottleneck_seconds: float) -> dict[str, Any]:
    """(6) one fine-tuning epoch (07's CPU defaults) over the same N images, next to the frozen bottleneck pass."""
    arch = get_architecture(s.arch)
    size = arch.resolve_input_size(s.image_size)
    label_map = LabelMap.from_labels(list(frame["label"]))
    options = default_options("full", gpu=False)
    fake = SimpleNamespace(arch=arch.name, image_size=size, backbone_weights=s.weights, label_map=label_map,
                           kernel=np.zeros((arch.bottleneck_width, len(label_map)), np.float32),
                           bias=np.zeros(len(label_map), np.float32))
    keras.utils.set_random_seed(0)
    model = compose_model(fake, build_augmentation(options.augmentation))
    unfreeze_top(inner_backbone(model), options.unfreeze)
    y = label_map.encode(frame["label"])
    compile_for_fine_tuning(model, options, math.ceil(len(frame) / options.batch_size))  # 07's exact recipe
    data = one_hot(image_dataset(list(frame["image_path"]), y, size, options.batch_size, shuffle=True),
                   len(label_map))
    weights = class_weights(options.class_weight, y, label_map)
    epoch = partial(model.fit, data, epochs=1, verbose=0, shuffle=False, class_weight=weights)
    first_seconds = seconds(epoch)  # traces, decodes, caches the images
    epoch_seconds = seconds(epoch)
    return {
        "finetune_unfreeze": options.unfreeze, "finetune_batch_size": options.batch_size,
        "finetune_first_epoch_seconds": first_seconds, "finetune_epoch_seconds": epoch_seconds,
        "finetune_images_per_second": len(frame) / epoch_seconds,
        "finetune_vs_bottleneck": epoch_seconds / bottleneck_seconds,
    }


def bench_fingerprint(s: BenchSettings, frame: pd.DataFrame, bottleneck_seconds: float) -> dict[str, Any]:
    """(7) the cache fingerprint's cost: SHA-1 of the files, and the header check, each next to decoding them (read,
    decode, resize) on one thread, files in the page cache; also as a share of the bottleneck pass."""
    size = get_architecture(s.arch).resolve_input_size(s.image_size)
    paths = [str(p) for p in frame["image_path"]]
    decode = (tf.data.Dataset.from_tensor_slices(paths)
              .map(lambda p: decode_image(tf.io.read_file(p), size)))  # one image at a time, like the hashing

    def best_of_3(run: Callable[[], Any]) -> float:
        run()  # warm: traced, files read once
        return min(seconds(run) for _ in range(3))

    decode_seconds = best_of_3(lambda: [None for _ in decode])
    hash_seconds = best_of_3(lambda: [quality.sha1_of_file(path) for path in paths])
    header_seconds = best_of_3(lambda: [check_image_file(path, DEFAULT_MAX_PIXELS) for path in paths])
    return {
        "fingerprint_hash_seconds": hash_seconds, "fingerprint_header_seconds": header_seconds,
        "fingerprint_decode_seconds": decode_seconds, "fingerprint_vs_decode": hash_seconds / decode_seconds,
        "header_check_vs_decode": header_seconds / decode_seconds,
        "fingerprint_vs_bottleneck": (hash_seconds + header_seconds) / bottleneck_seconds,
        "fingerprint_mean_file_kb": sum(os.path.getsize(p) for p in paths) / len(paths) / 1024,
    }


def bench_data_check(frame: pd.DataFrame, bottleneck_seconds: float) -> dict[str, Any]:
    """(8) the data-quality check's cost next to the bottleneck pass: SHA-1 of every file (remembered digests
    cleared), a signature of *every* file (copies, which the check would skip) and the all-pairs comparison."""
    paths = [str(p) for p in frame["image_path"]]
    quality._digest.cache_clear()  # noqa: SLF001  (measure the hashing, not the memory of it)
    hash_seconds = seconds(lambda: quality.exact_findings(frame))
    near_seconds = seconds(lambda: quality.near_pairs(np.stack([quality.thumbnail_signature(p) for p in paths])))
    return {
        "data_check_hash_seconds": hash_seconds, "data_check_near_seconds": near_seconds,
        "data_check_vs_bottleneck": (hash_seconds + near_seconds) / bottleneck_seconds,
    }


def rss_probe(s: BenchSettings, n: int, workspace: Path) -> dict[str, float]:
    """A fresh process's body: resident memory just before, and at its highest during, the bottleneck phase."""
    frame = bench_images(n, workspace / "images")
    s.bottlenecks(frame.head(s.batch_size), workspace, "probe-warm")  # model built, traced
    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = s.bottlenecks(frame, workspace, "probe")
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    return {"images": n, "rss_before_bytes": int(before), "rss_peak_bytes": int(peak[0]),
            "feature_bytes": float(result.features.nbytes)}


def bench_memory(s: BenchSettings, n: int, workspace: Path) -> dict[str, Any]:
    """(5) peak RSS growth at N and 4N images, each in a fresh process; streaming means only features grow."""
    probes = []
    for count in (n, 4 * n):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            probes.append(child.submit(rss_probe, s, count, workspace / f"rss-{count}").result())
    small, large = probes
    growth_small = small["rss_peak_bytes"] - small["rss_before_bytes"]
    growth_large = large["rss_peak_bytes"] - large["rss_before_bytes"]
    feature_difference = large["feature_bytes"] - small["feature_bytes"]
    slack = 64 * 2**20  # allocator and tf.data buffers; loading every image would need hundreds of MB more
    return {
        "rss": probes, "rss_growth_small_bytes": growth_small, "rss_growth_large_bytes": growth_large,
        "rss_growth_difference_bytes": growth_large - growth_small,
        "feature_matrix_difference_bytes": feature_difference,
        "rss_growth_explained": bool(growth_large - growth_small <= feature_difference + slack),
    }
