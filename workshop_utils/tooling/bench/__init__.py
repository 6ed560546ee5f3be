"""Benchmark: how fast each phase is, next to its physical limit and to what a learner would write instead.

``python -m workshop_utils bench [--arch NAME] [--images N] [--quick] [--out DIR]`` measures, in one
process (memory in child processes), the ratios the workshop's approach rests on and writes them to
``bench/results/<date>-<arch>.json`` plus a markdown table. Targets are reported, never asserted.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workshop_utils import config
from workshop_utils import quality
from workshop_utils.architectures import feature_extractor, get_architecture
from workshop_utils.bottleneck import Bottlenecks, _runner, compute_bottlenecks
from workshop_utils.config import REPO_ROOT, environment_report, sample_dir
from workshop_utils.core.formats import DEFAULT_MAX_PIXELS, check_image_file
from workshop_utils.core.images import decode_image
from workshop_utils.core.labels import LabelMap
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.course import load_exported
from workshop_utils.data import by_subset, load_dataset
from workshop_utils.download import find_data_root
from workshop_utils.finetune import (
    build_augmentation,
    compile_for_fine_tuning,
    compose_model,
    default_options,
    image_dataset,
    inner_backbone,
    one_hot,
    unfreeze_top,
)
from workshop_utils.head import Options, build_head
from workshop_utils.quality import sha1_of_file
from workshop_utils.scoring import Classifier
from workshop_utils.trainer import ImageClassificationTrainer, class_weights

tf = import_tensorflow()


TARGETS = {
    "pipeline_vs_raw": ("≥", 0.9),
    "pipeline_vs_forward": ("≥", 0.9),
    "cache_speedup": ("≥", 50.0),
    "head_train_seconds": ("≤", 15.0),
    "naive_vs_cached_speedup": ("≥", 10.0),
    "fingerprint_vs_decode": ("≤", 0.05),
    "data_check_vs_bottleneck": ("≤", 0.10),
}


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


def quick_settings(**overrides: Any) -> BenchSettings:
    """The ``--quick`` settings: fewer images, the naive recipe timed over 2 epochs and scaled to E = 20."""
    return replace(BenchSettings(images=96, naive_epochs_run=2), **overrides)


def machine_info() -> dict[str, Any]:
    """CPU model, cores, GPUs and library versions, so a result file says where it was measured."""
    env = environment_report()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpus": env["gpus"], "tensorflow": env["tensorflow"],
            "keras": env["keras"], "python": env["python"], "platform": env["platform"]}


def source_images() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) images to measure on: the real car-damage photos when downloaded, else the sample."""

    real = config.data_dir() / "car-damage"
    root = find_data_root(real) if real.is_dir() else None
    return by_subset(load_dataset(root if root is not None else sample_dir()))


def bench_images(n: int, folder: Path) -> pd.DataFrame:
    """N labelled image files: the source's training images, copied (renamed) until there are N."""
    train, _ = source_images()  # only training images are replicated: validation stays unseen
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        source = train.iloc[i % len(train)]
        target = folder / f"{i:06d}{Path(source.image_path).suffix}"
        if not target.exists():
            shutil.copyfile(source.image_path, target)
        rows.append({"image_path": str(target), "label": source.label, "subset": "train"})
    return pd.DataFrame(rows)


def _decoded(frame: pd.DataFrame, size: tuple[int, int]) -> np.ndarray:
    """Every image decoded and resized in memory, exactly as the pipeline does (the 'raw' side)."""
    tf = import_tensorflow()

    return np.stack([decode_image(tf.io.read_file(p), size).numpy() for p in frame["image_path"]])


def bench_pipeline(s: BenchSettings, frame: pd.DataFrame, workspace: Path) -> dict[str, Any]:
    """(1) files → features vs model.predict on pre-decoded pixels; (2) cache reuse vs first computation."""

    size = get_architecture(s.arch).resolve_input_size(s.image_size)
    model = feature_extractor(s.arch, s.weights, size)
    pixels = _decoded(frame, size)
    model.predict(pixels[: s.batch_size], batch_size=s.batch_size, verbose=0)  # warm-up
    started = time.perf_counter()
    model.predict(pixels, batch_size=s.batch_size, verbose=0)
    raw_seconds = time.perf_counter() - started
    forward = _runner(model)  # the bare forward pass the pipeline itself calls, batch by batch
    forward(pixels[: s.batch_size])
    started = time.perf_counter()
    for i in range(0, len(pixels), s.batch_size):
        forward(pixels[i: i + s.batch_size]).numpy()
    forward_seconds = time.perf_counter() - started
    del pixels

    common = dict(workspace=workspace, batch_size=s.batch_size, weights=s.weights, image_size=s.image_size,
                  progress=False)
    compute_bottlenecks(frame.head(s.batch_size), s.arch, cache_name="warmup", **common)  # trace + warm
    started = time.perf_counter()
    first = compute_bottlenecks(frame, s.arch, cache_name="bench", reuse=False, **common)
    pipeline_seconds = time.perf_counter() - started
    started = time.perf_counter()
    again = compute_bottlenecks(frame, s.arch, cache_name="bench", reuse=True, **common)
    reuse_seconds = time.perf_counter() - started
    assert again.from_cache and again.features.shape == first.features.shape
    n = len(frame)
    return {
        "images": n,
        "raw_images_per_second": n / raw_seconds,
        "pipeline_images_per_second": n / pipeline_seconds,
        "pipeline_vs_raw": raw_seconds / pipeline_seconds,
        "forward_images_per_second": n / forward_seconds,
        "pipeline_vs_forward": forward_seconds / pipeline_seconds,
        "bottleneck_seconds": pipeline_seconds,
        "cache_reuse_seconds": reuse_seconds,
        "cache_speedup": pipeline_seconds / reuse_seconds,
    }


def structured_features(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random features with class structure (a mean per class plus noise), like bottlenecks of real photos."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (classes, d)).astype(np.float32)
    y = np.arange(n) % classes
    x = np.maximum(centers[y] + rng.normal(0.0, 2.0, (n, d)).astype(np.float32), 0.0)  # ReLU-like, as pooled CNN features
    return x.astype(np.float32), y


def _bottlenecks(features: np.ndarray, labels: list[str], arch: str, size: tuple[int, int]):

    return Bottlenecks(features=features, labels=labels, image_paths=[f"{i}.jpeg" for i in range(len(labels))],
                       skipped=pd.DataFrame(columns=["path", "reason"]), from_cache=False, arch=arch,
                       weights_id="bench", image_size=size)


def bench_head(s: BenchSettings) -> dict[str, Any]:
    """(3) 200 epochs of the softmax head with validation every epoch: ours, a plain Keras fit, scikit-learn."""
    import keras
    from sklearn.linear_model import LogisticRegression


    n_val = max(s.head_samples // 4, 1)
    x_all, y_all = structured_features(s.head_samples + n_val, s.head_features, s.head_classes)
    x, y, xv, yv = x_all[:s.head_samples], y_all[:s.head_samples], x_all[s.head_samples:], y_all[s.head_samples:]
    labels = [f"class_{k}" for k in y_all]
    train = _bottlenecks(x, labels[:s.head_samples], s.arch, (224, 224))
    validation = _bottlenecks(xv, labels[s.head_samples:], s.arch, (224, 224))
    options = Options(arch=s.arch, epoch=s.head_epochs, batch_size=s.head_batch_size, early_stopping=None,
                      test_on_train_set=True, progress=False)
    trainer = ImageClassificationTrainer(options)
    started = time.perf_counter()
    trained = trainer.fit_features(train, validation)
    head_seconds = time.perf_counter() - started  # tracing included: a learner pays it too

    # Keras' plain recipe: fit on numpy arrays, one Python step per batch. Timed over a few epochs, scaled.
    plain_epochs = min(s.head_epochs, 10)
    plain = build_head(s.head_features, s.head_classes)
    plain.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    plain.fit(x[:s.head_batch_size], y[:s.head_batch_size], epochs=1, verbose=0)  # trace once
    started = time.perf_counter()
    plain.fit(x, y, batch_size=s.head_batch_size, epochs=plain_epochs, validation_data=(xv, yv), verbose=0)
    plain_seconds = (time.perf_counter() - started) * s.head_epochs / plain_epochs

    started = time.perf_counter()
    LogisticRegression(max_iter=1000).fit(x, y)
    sklearn_seconds = time.perf_counter() - started
    final = trained.history[trained.history["dataset"] == "Validation"].iloc[-1]
    return {
        "head_train_seconds": head_seconds,
        "head_train_epochs": s.head_epochs,
        "head_train_final_accuracy": float(final["accuracy"]),
        "plain_fit_seconds": plain_seconds,
        "plain_fit_epochs_timed": plain_epochs,
        "sklearn_seconds": sklearn_seconds,
        "head_train_vs_sklearn": head_seconds / sklearn_seconds,
    }


def bench_naive(s: BenchSettings, frame: pd.DataFrame, workspace: Path) -> dict[str, Any]:
    """(4) the tutorial recipe (frozen backbone inside a Sequential, fit over images) vs bottleneck-once.

    Both train on the same N image files and are scored on the source's validation images, which are never
    among the (replicated) training files.
    """
    tf = import_tensorflow()
    import keras


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
    started = time.perf_counter()
    naive.fit(dataset(train_df, shuffle=True), epochs=s.naive_epochs_run, verbose=0, shuffle=False)
    naive_run_seconds = time.perf_counter() - started
    naive_seconds = naive_run_seconds * s.naive_epochs / s.naive_epochs_run
    naive_accuracy = float(naive.evaluate(dataset(val_df), verbose=0)[1])

    options = Options(arch=s.arch, epoch=s.naive_epochs, batch_size=s.head_batch_size, early_stopping=None,
                      weights=s.weights, image_size=s.image_size, workspace_path=str(workspace), progress=False)
    started = time.perf_counter()
    common = dict(workspace=workspace, batch_size=s.batch_size, weights=s.weights, image_size=s.image_size,
                  progress=False)
    train_b = compute_bottlenecks(train_df, s.arch, cache_name="naive-train", **common)
    val_b = compute_bottlenecks(val_df, s.arch, cache_name="naive-validation", **common)
    trained = ImageClassificationTrainer(options).fit_features(train_b, val_b)
    cached_seconds = time.perf_counter() - started
    predicted = trained.predict(val_b.features)
    cached_accuracy = float(np.mean(np.asarray(predicted) == np.asarray(val_b.labels)))
    return {
        "naive_epochs": s.naive_epochs,
        "naive_epochs_run": s.naive_epochs_run,
        "naive_seconds": naive_seconds,
        "naive_extrapolated": s.naive_epochs_run != s.naive_epochs,
        "cached_seconds": cached_seconds,
        "naive_vs_cached_speedup": naive_seconds / cached_seconds,
        "naive_accuracy": naive_accuracy,
        "naive_accuracy_after_epochs": s.naive_epochs_run,
        "cached_accuracy": cached_accuracy,
    }


def bench_finetune(s: BenchSettings, frame: pd.DataFrame, bottleneck_seconds: float) -> dict[str, Any]:
    """(6) one fine-tuning epoch (07's defaults for a CPU: top third unfrozen, augmentation, Adam) over the
    same N images, as a ratio to the frozen bottleneck pass over them; images cached after the first epoch."""
    from types import SimpleNamespace

    import keras


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
    started = time.perf_counter()
    model.fit(data, epochs=1, verbose=0, shuffle=False, class_weight=weights)  # traces, decodes, caches the images
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model.fit(data, epochs=1, verbose=0, shuffle=False, class_weight=weights)
    epoch_seconds = time.perf_counter() - started
    return {
        "finetune_unfreeze": options.unfreeze,
        "finetune_batch_size": options.batch_size,
        "finetune_first_epoch_seconds": first_seconds,
        "finetune_epoch_seconds": epoch_seconds,
        "finetune_images_per_second": len(frame) / epoch_seconds,
        "finetune_vs_bottleneck": epoch_seconds / bottleneck_seconds,
    }


def bench_fingerprint(s: BenchSettings, frame: pd.DataFrame, bottleneck_seconds: float) -> dict[str, Any]:
    """(7) what the cache fingerprint costs: SHA-1 of every image's bytes, and the header check (format, pixel
    limit), each next to decoding the same images (read + decode + resize, as the pipeline does). All on one
    thread, files in the page cache; also as a share of the whole bottleneck pass over them."""
    tf = import_tensorflow()

    size = get_architecture(s.arch).resolve_input_size(s.image_size)
    paths = [str(p) for p in frame["image_path"]]
    decode = (tf.data.Dataset.from_tensor_slices(paths)
              .map(lambda p: decode_image(tf.io.read_file(p), size)))  # one image at a time, like the hashing

    def hash_all() -> None:
        for path in paths:
            sha1_of_file(path)

    def check_all() -> None:
        for path in paths:
            check_image_file(path, DEFAULT_MAX_PIXELS)

    def timed(run) -> float:
        run()  # warm: traced, files read once
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
        return best

    decode_seconds = timed(lambda: [None for _ in decode])
    hash_seconds = timed(hash_all)
    header_seconds = timed(check_all)
    return {
        "fingerprint_hash_seconds": hash_seconds,
        "fingerprint_header_seconds": header_seconds,
        "fingerprint_decode_seconds": decode_seconds,
        "fingerprint_vs_decode": hash_seconds / decode_seconds,
        "header_check_vs_decode": header_seconds / decode_seconds,
        "fingerprint_vs_bottleneck": (hash_seconds + header_seconds) / bottleneck_seconds,
        "fingerprint_mean_file_kb": sum(os.path.getsize(p) for p in paths) / len(paths) / 1024,
    }


def bench_data_check(frame: pd.DataFrame, bottleneck_seconds: float) -> dict[str, Any]:
    """(8) what the data-quality check costs next to the bottleneck pass over the same images: the SHA-1 of every
    file (exact copies; the remembered digests cleared first), a perceptual signature of *every* file (the bench's
    files are copies, which the check would otherwise skip) and the all-pairs comparison."""

    paths = [str(p) for p in frame["image_path"]]
    quality._digest.cache_clear()  # noqa: SLF001  (measure the hashing, not the memory of it)
    started = time.perf_counter()
    quality.exact_findings(frame)
    hash_seconds = time.perf_counter() - started
    started = time.perf_counter()
    signatures = np.stack([quality.thumbnail_signature(p) for p in paths])
    quality.near_pairs(signatures)
    near_seconds = time.perf_counter() - started
    return {
        "data_check_hash_seconds": hash_seconds,
        "data_check_near_seconds": near_seconds,
        "data_check_vs_bottleneck": (hash_seconds + near_seconds) / bottleneck_seconds,
    }


def _current_rss() -> int:
    import psutil  # installed with Jupyter's kernel

    return int(psutil.Process().memory_info().rss)


def _rss_probe(s: BenchSettings, n: int, workspace: Path) -> dict[str, float]:
    """Child-process body: resident memory just before, and at its highest during, the bottleneck phase."""
    import threading


    frame = bench_images(n, workspace / "images")
    common = dict(workspace=workspace, batch_size=s.batch_size, weights=s.weights, image_size=s.image_size,
                  progress=False)
    compute_bottlenecks(frame.head(s.batch_size), s.arch, cache_name="probe-warm", **common)  # model built, traced
    before = _current_rss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _current_rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = compute_bottlenecks(frame, s.arch, cache_name="probe", **common)
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], _current_rss())
    return {"images": n, "rss_before_bytes": before, "rss_peak_bytes": peak[0],
            "feature_bytes": float(result.features.nbytes)}


def bench_memory(s: BenchSettings, n: int, workspace: Path) -> dict[str, Any]:
    """(5) peak RSS growth at N and 4N images, each in a fresh process; streaming means only features grow."""
    probes = []
    for count in (n, 4 * n):
        folder = workspace / f"rss-{count}"
        command = [sys.executable, "-m", "workshop_utils", "bench", "--_rss-probe", str(count), "--arch", s.arch,
                   "--out", str(folder), "--_settings", json.dumps({"weights": s.weights, "image_size": s.image_size,
                                                                     "batch_size": s.batch_size})]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"Memory probe with {count} images failed:\n{done.stderr[-2000:]}")
        probes.append(json.loads(done.stdout.strip().splitlines()[-1]))
    small, large = probes
    growth_small = small["rss_peak_bytes"] - small["rss_before_bytes"]
    growth_large = large["rss_peak_bytes"] - large["rss_before_bytes"]
    feature_difference = large["feature_bytes"] - small["feature_bytes"]
    slack = 64 * 2**20  # allocator and tf.data buffers; loading every image would need hundreds of MB more
    return {
        "rss": probes,
        "rss_growth_small_bytes": growth_small,
        "rss_growth_large_bytes": growth_large,
        "rss_growth_difference_bytes": growth_large - growth_small,
        "feature_matrix_difference_bytes": feature_difference,
        "rss_growth_explained": bool(growth_large - growth_small <= feature_difference + slack),
    }


def run_benchmark(settings: BenchSettings, out_dir: Path | None = None) -> dict[str, Any]:
    """Run every measurement and write ``<out_dir>/<date>-<arch>.json``; returns the result dictionary."""
    with tempfile.TemporaryDirectory(prefix="workshop-bench-") as tmp:
        workspace = Path(tmp)
        frame = bench_images(settings.images, workspace / "images")
        result: dict[str, Any] = {"settings": {k: v for k, v in settings.__dict__.items()}}
        result.update(bench_pipeline(settings, frame, workspace))
        result.update(bench_head(settings))
        result.update(bench_naive(settings, frame, workspace))
        result.update(bench_fingerprint(settings, frame, result["bottleneck_seconds"]))
        result.update(bench_data_check(frame, result["bottleneck_seconds"]))
        result.update(bench_finetune(settings, frame, result["bottleneck_seconds"]))
        if settings.memory_probe:
            result.update(bench_memory(settings, max(16, settings.images // 2), workspace))
    return _write_result(result, out_dir, settings.arch)


def _write_result(result: dict[str, Any], out_dir: Path | None, name: str) -> dict[str, Any]:
    """Add the machine and date, write ``<out_dir>/<date>-<name>.json`` atomically; the result with its ``path``."""
    result["machine"] = machine_info()
    result["date"] = _dt.datetime.now().isoformat(timespec="seconds")
    out_dir = Path(out_dir or REPO_ROOT / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{_dt.date.today().isoformat()}-{name}.json"
    tmp_path = path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    os.replace(tmp_path, path)
    result["path"] = str(path)
    return result


def markdown_table(result: dict[str, Any]) -> str:
    """The result as the README's Performance table."""
    def status(key: str) -> str:
        if key not in TARGETS or key not in result:
            return ""
        op, bound = TARGETS[key]
        ok = result[key] >= bound if op == "≥" else result[key] <= bound
        return f"{op} {bound:g} {'✅' if ok else '❌'}"

    m = result["machine"]
    rows = [
        ("bottleneck pipeline vs raw `model.predict`", "pipeline_vs_raw",
         f"{result['pipeline_images_per_second']:.1f} vs {result['raw_images_per_second']:.1f} images/s"),
        ("bottleneck pipeline vs bare forward pass (in-memory batches)", "pipeline_vs_forward",
         f"{result['pipeline_images_per_second']:.1f} vs {result['forward_images_per_second']:.1f} images/s"),
        ("cache reuse speed-up", "cache_speedup",
         f"{result['bottleneck_seconds']:.2f} s → {result['cache_reuse_seconds'] * 1000:.0f} ms"),
        (f"head training, {result['head_train_epochs']} epochs of 1,210 × 1,280, validation every epoch (s)",
         "head_train_seconds",
         f"Keras `fit` + `tf.data`; plain `fit` on arrays: {result['plain_fit_seconds']:.0f} s (timed over "
         f"{result['plain_fit_epochs_timed']} epochs, scaled); scikit-learn LogisticRegression: "
         f"{result['sklearn_seconds']:.2f} s"),
        (f"bottleneck-once vs naive Keras fit, E = {result['naive_epochs']}", "naive_vs_cached_speedup",
         f"{result['naive_seconds']:.0f} s vs {result['cached_seconds']:.1f} s"
         f"{' (naive timed over %d epochs, scaled)' % result['naive_epochs_run'] if result['naive_extrapolated'] else ''}; "
         f"accuracy {result['naive_accuracy']:.2f} vs {result['cached_accuracy']:.2f}"),
    ]
    if "finetune_vs_bottleneck" in result:
        rows.append((f"fine-tuning epoch vs frozen bottleneck pass, same {result['images']} images (07)",
                     "finetune_vs_bottleneck",
                     f"{result['finetune_epoch_seconds']:.1f} s per epoch ({result['finetune_images_per_second']:.1f} "
                     f"images/s, top {result['finetune_unfreeze']:.2g} unfrozen, batch {result['finetune_batch_size']}) "
                     f"vs {result['bottleneck_seconds']:.1f} s"))
    if "fingerprint_vs_decode" in result:
        kb, ms = result["fingerprint_mean_file_kb"], 1000
        rows.append((f"cache fingerprint: SHA-1 of the image bytes vs decoding them ({kb:.0f} kB files)",
                     "fingerprint_vs_decode",
                     f"{result['fingerprint_hash_seconds'] * ms:.0f} ms vs "
                     f"{result['fingerprint_decode_seconds'] * ms:.0f} ms; header check (pixel limit) "
                     f"{result['header_check_vs_decode']:.1%} of decoding; hash + header "
                     f"{result['fingerprint_vs_bottleneck']:.1%} of the bottleneck pass"))
    if "data_check_vs_bottleneck" in result:
        rows.append(("data-quality check (exact + near-duplicates) vs the bottleneck pass, same images",
                     "data_check_vs_bottleneck",
                     f"SHA-1 {result['data_check_hash_seconds'] * 1000:.0f} ms + thumbnails and all pairs "
                     f"{result['data_check_near_seconds'] * 1000:.0f} ms vs {result['bottleneck_seconds']:.1f} s"))
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {', '.join(m['gpus']) or 'none'}, "
             f"TensorFlow {m['tensorflow']}; {result['settings']['arch']}, {result['images']} images.", "",
             "| measure | value | target | details |", "|---|---|---|---|"]
    for title, key, details in rows:
        lines.append(f"| {title} | {result[key]:.2f} | {status(key)} | {details} |")
    if "rss_growth_explained" in result:
        mb = 2**20
        lines.append(
            f"| peak RSS growth, {result['rss'][0]['images']} → {result['rss'][1]['images']} images (MB) | "
            f"{result['rss_growth_small_bytes'] / mb:.0f} → {result['rss_growth_large_bytes'] / mb:.0f} | "
            f"explained by features {'✅' if result['rss_growth_explained'] else '❌'} | "
            f"feature matrix grows {result['feature_matrix_difference_bytes'] / mb:.1f} MB |")
    return "\n".join(lines)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds, dtype=np.float64) * 1000
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95))}


def _start_server_process(model_dir: Path, log_path: Path, timeout: float = 300.0) -> tuple[Any, str]:
    """``python -m workshop_utils serve MODEL --port 0`` in a child process: (process, its URL) once it answers."""
    import re

    import requests

    command = [sys.executable, "-m", "workshop_utils", "serve", str(model_dir), "--port", "0"]
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"The server exited with code {process.returncode}:\n{log_path.read_text()[-2000:]}")
        found = re.search(r"Web page: (http://\S+/)", log_path.read_text(encoding="utf-8"))
        if found:
            try:
                if requests.get(found.group(1) + "health", timeout=5).status_code == 200:
                    return process, found.group(1)
            except requests.ConnectionError:
                pass
        time.sleep(0.2)
    _stop_server_process(process)
    raise RuntimeError(f"The server did not answer within {timeout:g} s:\n{log_path.read_text()[-2000:]}")


def _stop_server_process(process: Any) -> None:
    import signal

    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # graceful, like Ctrl+C
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _health_during_big_form(url: str, form_bytes: int = 10 * 2**20, rounds: int = 5) -> dict[str, Any]:
    """/health latency while a form of ~200k one-byte fields (``form_bytes`` in all) is posted to /predict
    ``rounds`` times, next to /health alone; and what the form gets back. A server that parses such a form
    on its event loop freezes every request meanwhile; a bounded one refuses it after a few fields."""
    import threading

    import requests

    boundary = "bench-form-boundary"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n'.encode()
    parts = (form_bytes - 64) // len(part)
    body = part * parts + f"--{boundary}--\r\n".encode()
    answers: list[tuple[int, int]] = []

    def post_forms() -> None:
        with requests.Session() as poster:
            for _ in range(rounds):
                reply = poster.post(url + "predict", data=body, timeout=120,
                                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
                answers.append((reply.status_code, len(reply.content)))

    def health_seconds(session: requests.Session) -> float:
        t0 = time.perf_counter()
        session.get(url + "health", timeout=120).raise_for_status()
        return time.perf_counter() - t0

    with requests.Session() as session:
        alone = [health_seconds(session) for _ in range(20)]
        poster = threading.Thread(target=post_forms, name="bench-big-form")
        poster.start()
        during = [health_seconds(session)]
        while poster.is_alive():
            time.sleep(0.005)
            during.append(health_seconds(session))
        poster.join()
    return {
        "serve_form_parts": parts,
        "serve_form_bytes": len(body),
        "serve_form_status": answers[0][0] if answers else 0,
        "serve_form_answer_bytes": max((size for _, size in answers), default=0),
        "serve_health_alone_p50_ms": _percentiles(alone)["p50_ms"],
        "serve_health_during_form_p50_ms": _percentiles(during)["p50_ms"],
        "serve_health_during_form_max_ms": 1000 * max(during),
    }


def bench_serve(model_dir: Path | None = None, clients: int = 8, requests_total: int = 256, photos: int = 64,
                max_seconds: float = 300.0, rounds: int = 3) -> dict[str, Any]:
    """(serve) N concurrent clients against ``python -m workshop_utils serve`` on 127.0.0.1, next to in-process
    ``Classifier.predict_proba`` on the same photos (one at a time, and in batches of 32; median of ``rounds``).

    The server runs in its own process (as in production); clients are threads here, each with its own
    keep-alive connection. Stops after ``requests_total`` requests or ``max_seconds``. Every answer is
    checked against the in-process scores (label and largest score difference).
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import requests


    if model_dir is None:

        classifier = load_exported(config.setup())
        model_dir = classifier.directory
    else:
        classifier = Classifier.load(model_dir)
    train, validation = source_images()
    paths = list(pd.concat([train, validation])["image_path"])[:photos]
    blobs = [Path(p).read_bytes() for p in paths]
    names = [Path(p).name for p in paths]

    classifier.predict_proba(blobs[:32], names[:32])  # warm-up (tracing, buffers for a full batch)
    reference = [classifier.predict_proba([data], [name])[0] for data, name in zip(blobs, names)]
    single_seconds: list[float] = []
    single_totals, batch_totals = [], []
    for _ in range(rounds):  # interleaved, and the median kept: the CPU may be shared with other work
        started = time.perf_counter()
        for data, name in zip(blobs, names):
            t0 = time.perf_counter()
            classifier.predict_proba([data], [name])
            single_seconds.append(time.perf_counter() - t0)
        single_totals.append(time.perf_counter() - started)
        started = time.perf_counter()
        for i in range(0, len(blobs), 32):
            classifier.predict_proba(blobs[i: i + 32], names[i: i + 32])
        batch_totals.append(time.perf_counter() - started)
    single_total, batch_total = float(np.median(single_totals)), float(np.median(batch_totals))

    latencies: list[float] = []
    wrong, failed, worst = 0, 0, 0.0
    lock = threading.Lock()
    counter = iter(range(requests_total))
    with tempfile.TemporaryDirectory(prefix="workshop-bench-serve-") as tmp:
        process, url = _start_server_process(Path(model_dir), Path(tmp) / "serve.log")
        try:
            def client() -> None:
                nonlocal wrong, failed, worst
                session = requests.Session()
                try:
                    for _ in range(2):  # warm-up: open the connection
                        session.post(url + "predict", data=blobs[0], timeout=120).raise_for_status()
                except Exception:
                    barrier.abort()  # the other clients stop waiting
                    raise
                barrier.wait(timeout=600)
                while time.monotonic() < clock["deadline"]:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        break
                    k = i % len(blobs)
                    t0 = time.perf_counter()
                    response = session.post(url + "predict", files={"file": (names[k], blobs[k])}, timeout=120)
                    elapsed = time.perf_counter() - t0
                    with lock:
                        latencies.append(elapsed)
                        if response.status_code != 200:
                            failed += 1
                            continue
                        answer = response.json()
                        scores = np.array([answer["scores"][c] for c in classifier.labels])
                        worst = max(worst, float(np.max(np.abs(scores - reference[k]))))
                        wrong += answer["label"] != classifier.labels[int(np.argmax(reference[k]))]

            clock: dict[str, float] = {}

            def go() -> None:  # runs once every client is warm, just before they all start
                clock.update(started=time.perf_counter(), deadline=time.monotonic() + max_seconds)

            barrier = threading.Barrier(clients, action=go)
            with ThreadPoolExecutor(clients) as pool:
                for future in [pool.submit(client) for _ in range(clients)]:
                    future.result()
            served_total = time.perf_counter() - clock["started"]
            stats = requests.get(url + "health", timeout=30).json()["scored"]
            form_probe = _health_during_big_form(url)
        finally:
            _stop_server_process(process)
    n = len(latencies)
    served_ips = n / served_total
    single_ips = len(blobs) / single_total
    return {
        "serve_model": str(model_dir),
        "serve_arch": (classifier.card or {}).get("arch", classifier.model.name),
        "serve_clients": clients,
        "serve_requests": n,
        "serve_failed": failed,
        "serve_wrong_labels": int(wrong),
        "serve_max_score_difference": worst,
        "serve_images_per_second": served_ips,
        **{f"serve_{k}": v for k, v in _percentiles(latencies).items()},
        "serve_mean_batch": stats["images"] / max(stats["batches"], 1),
        "serve_largest_batch": stats["largest_batch"],
        "inprocess_single_images_per_second": single_ips,
        **{f"inprocess_single_{k}": v for k, v in _percentiles(single_seconds).items()},
        "inprocess_batch_images_per_second": len(blobs) / batch_total,
        "serve_vs_inprocess_single": served_ips / single_ips,
        "serve_vs_inprocess_batch": served_ips / (len(blobs) / batch_total),
        "photos": len(blobs),
        **form_probe,
    }


def serve_table(result: dict[str, Any]) -> str:
    """The --serve result as the README's table."""
    m = result["machine"]
    r = result
    return "\n".join([
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {', '.join(m['gpus']) or 'none'}, TensorFlow "
        f"{m['tensorflow']}; {r['serve_arch']}, {r['photos']} photos, {r['serve_clients']} concurrent clients, "
        f"{r['serve_requests']} requests.", "",
        "| scoring | images/s | p50 latency | p95 latency |", "|---|---|---|---|",
        f"| web API, {r['serve_clients']} concurrent clients (micro-batches: mean {r['serve_mean_batch']:.1f}, "
        f"largest {r['serve_largest_batch']}) | {r['serve_images_per_second']:.1f} | {r['serve_p50_ms']:.0f} ms | "
        f"{r['serve_p95_ms']:.0f} ms |",
        f"| in-process `predict_proba`, one photo per call | {r['inprocess_single_images_per_second']:.1f} | "
        f"{r['inprocess_single_p50_ms']:.0f} ms | {r['inprocess_single_p95_ms']:.0f} ms |",
        f"| in-process `predict_proba`, batches of 32 | {r['inprocess_batch_images_per_second']:.1f} | | |",
        "",
        f"Web API vs in-process throughput: {r['serve_vs_inprocess_single']:.2f}× one-per-call, "
        f"{r['serve_vs_inprocess_batch']:.2f}× batches of 32. Answers: {r['serve_failed']} failed, "
        f"{r['serve_wrong_labels']} wrong labels, largest score difference {r['serve_max_score_difference']:.1g}.",
        "",
        f"/health while a {r['serve_form_bytes'] / 2**20:.0f} MB form of {r['serve_form_parts']:,} fields is posted: "
        f"p50 {r['serve_health_during_form_p50_ms']:.0f} ms, max {r['serve_health_during_form_max_ms']:.0f} ms "
        f"(alone: p50 {r['serve_health_alone_p50_ms']:.0f} ms); the form gets HTTP {r['serve_form_status']} "
        f"({r['serve_form_answer_bytes']:,} bytes).",
    ])


def run_serve_benchmark(out_dir: Path | None = None, **kwargs: Any) -> dict[str, Any]:
    """:func:`bench_serve`, written to ``<out_dir>/<date>-serve.json``; returns the result dictionary."""
    return _write_result(bench_serve(**kwargs), out_dir, "serve")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m workshop_utils bench", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="EfficientNetLite0", help="backbone to measure (default EfficientNetLite0)")
    parser.add_argument("--images", type=int, default=None, help="images for the bottleneck measures (default 512; quick 96)")
    parser.add_argument("--quick", action="store_true", help="small settings, about 3 minutes on 2 CPU cores")
    parser.add_argument("--out", type=Path, default=None, help="result folder (default bench/results)")
    parser.add_argument("--serve", action="store_true",
                        help="measure the web API instead: concurrent clients vs in-process scoring")
    parser.add_argument("--model", type=Path, default=None,
                        help="--serve: the exported model (default: the profile's workspace/model, made if missing)")
    parser.add_argument("--clients", type=int, default=8, help="--serve: concurrent clients (default 8)")
    parser.add_argument("--requests", type=int, default=256, help="--serve: requests in all (default 256)")
    parser.add_argument("--_rss-probe", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_settings", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import_tensorflow()
    if args._rss_probe:
        extra = json.loads(args._settings)
        if extra.get("image_size"):
            extra["image_size"] = tuple(extra["image_size"])
        s = replace(BenchSettings(arch=args.arch), **extra)
        print(json.dumps(_rss_probe(s, args._rss_probe, args.out)))
        return 0
    if args.serve:
        result = run_serve_benchmark(args.out, model_dir=args.model, clients=args.clients, requests_total=args.requests)
        print(serve_table(result))
        print(f"\nResults written to {result['path']}")
        return 0
    settings = quick_settings(arch=args.arch) if args.quick else BenchSettings(arch=args.arch)
    if args.images:
        settings = replace(settings, images=args.images)
    result = run_benchmark(settings, args.out)
    print(markdown_table(result))
    print(f"\nResults written to {result['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
