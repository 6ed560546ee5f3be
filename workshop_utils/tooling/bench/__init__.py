"""Benchmark: how fast each phase is, next to its physical limit and to what a learner would write instead.
``python -m workshop_utils bench`` writes ``bench/results/<date>-<arch>.json`` and prints a markdown table;
``--serve`` measures the web API. Targets are reported, never asserted."""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from workshop_utils.config import REPO_ROOT, environment_report
from workshop_utils.core.fsutil import atomic_json
from workshop_utils.tooling.bench.cases import (BenchSettings, bench_data_check, bench_finetune, bench_fingerprint,
                                                bench_head, bench_images, bench_memory, bench_naive, bench_pipeline)
from workshop_utils.tooling.bench.serve import bench_serve

TARGETS = {"pipeline_vs_raw": ("≥", 0.9), "pipeline_vs_forward": ("≥", 0.9), "cache_speedup": ("≥", 50.0),
           "head_train_seconds": ("≤", 15.0), "naive_vs_cached_speedup": ("≥", 10.0),
           "fingerprint_vs_decode": ("≤", 0.05), "data_check_vs_bottleneck": ("≤", 0.10)}


def machine_info() -> dict[str, Any]:
    """CPU model, cores, GPUs and library versions, so a result file says where it was measured."""
    env = environment_report()
    try:
        found = re.search(r"^model name\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M | re.I)
    except OSError:
        found = None
    cpu = found[1].strip() if found else platform.processor() or platform.machine()
    keys = ("gpus", "tensorflow", "keras", "python", "platform")
    return {"cpu": cpu, "cores": os.cpu_count(), **{k: env[k] for k in keys}}


def run_benchmark(settings: BenchSettings, out_dir: Path | None = None) -> dict[str, Any]:
    """Run every measurement and write ``<out_dir>/<date>-<arch>.json``; returns the result dictionary."""
    with tempfile.TemporaryDirectory(prefix="workshop-bench-") as tmp:
        workspace = Path(tmp)
        frame = bench_images(settings.images, workspace / "images")
        result: dict[str, Any] = {"settings": dict(vars(settings))}
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
    path = Path(out_dir or REPO_ROOT / "bench" / "results") / f"{_dt.date.today().isoformat()}-{name}.json"
    atomic_json(path, result, default=str)
    result["path"] = str(path)
    return result


def _machine(m: dict[str, Any]) -> str:
    gpus = ", ".join(m["gpus"]) or "none"
    return f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {gpus}, TensorFlow {m['tensorflow']}; "


def markdown_table(r: dict[str, Any]) -> str:
    """The result as the README's Performance table."""
    def status(key: str) -> str:
        op, bound = TARGETS.get(key, ("", None))
        if bound is None:
            return ""
        ok = r[key] >= bound if op == "≥" else r[key] <= bound
        return f"{op} {bound:g} {'✅' if ok else '❌'}"

    scaled = f" (naive timed over {r['naive_epochs_run']} epochs, scaled)" if r["naive_extrapolated"] else ""
    rows = [
        ("bottleneck pipeline vs raw `model.predict`", "pipeline_vs_raw",
         f"{r['pipeline_images_per_second']:.1f} vs {r['raw_images_per_second']:.1f} images/s"),
        ("bottleneck pipeline vs bare forward pass (in-memory batches)", "pipeline_vs_forward",
         f"{r['pipeline_images_per_second']:.1f} vs {r['forward_images_per_second']:.1f} images/s"),
        ("cache reuse speed-up", "cache_speedup",
         f"{r['bottleneck_seconds']:.2f} s → {r['cache_reuse_seconds'] * 1000:.0f} ms"),
        (f"head training, {r['head_train_epochs']} epochs of 1,210 × 1,280, validation every epoch (s)",
         "head_train_seconds", f"Keras `fit` + `tf.data`; plain `fit` on arrays: {r['plain_fit_seconds']:.0f} s "
         f"(timed over {r['plain_fit_epochs_timed']} epochs, scaled); scikit-learn LogisticRegression: "
         f"{r['sklearn_seconds']:.2f} s"),
        (f"bottleneck-once vs naive Keras fit, E = {r['naive_epochs']}", "naive_vs_cached_speedup",
         f"{r['naive_seconds']:.0f} s vs {r['cached_seconds']:.1f} s{scaled}; "
         f"accuracy {r['naive_accuracy']:.2f} vs {r['cached_accuracy']:.2f}"),
        (f"fine-tuning epoch vs frozen bottleneck pass, same {r['images']} images (07)", "finetune_vs_bottleneck",
         f"{r['finetune_epoch_seconds']:.1f} s per epoch ({r['finetune_images_per_second']:.1f} images/s, top "
         f"{r['finetune_unfreeze']:.2g} unfrozen, batch {r['finetune_batch_size']}) vs "
         f"{r['bottleneck_seconds']:.1f} s"),
        (f"cache fingerprint: SHA-1 of the image bytes vs decoding them ({r['fingerprint_mean_file_kb']:.0f} kB files)",
         "fingerprint_vs_decode", f"{r['fingerprint_hash_seconds'] * 1000:.0f} ms vs "
         f"{r['fingerprint_decode_seconds'] * 1000:.0f} ms; header check (pixel limit) "
         f"{r['header_check_vs_decode']:.1%} of decoding; hash + header "
         f"{r['fingerprint_vs_bottleneck']:.1%} of the bottleneck pass"),
        ("data-quality check (exact + near-duplicates) vs the bottleneck pass, same images", "data_check_vs_bottleneck",
         f"SHA-1 {r['data_check_hash_seconds'] * 1000:.0f} ms + thumbnails and all pairs "
         f"{r['data_check_near_seconds'] * 1000:.0f} ms vs {r['bottleneck_seconds']:.1f} s"),
    ]
    lines = [_machine(r["machine"]) + f"{r['settings']['arch']}, {r['images']} images.", "",
             "| measure | value | target | details |", "|---|---|---|---|"]
    lines += [f"| {title} | {r[key]:.2f} | {status(key)} | {details} |" for title, key, details in rows]
    if "rss_growth_explained" in r:
        mb = 2**20
        lines.append(
            f"| peak RSS growth, {r['rss'][0]['images']} → {r['rss'][1]['images']} images (MB) | "
            f"{r['rss_growth_small_bytes'] / mb:.0f} → {r['rss_growth_large_bytes'] / mb:.0f} | "
            f"explained by features {'✅' if r['rss_growth_explained'] else '❌'} | "
            f"feature matrix grows {r['feature_matrix_difference_bytes'] / mb:.1f} MB |")
    return "\n".join(lines)


def serve_table(r: dict[str, Any]) -> str:
    """The --serve result as the README's table."""
    return "\n".join([
        _machine(r["machine"]) + f"{r['serve_arch']}, {r['photos']} photos, {r['serve_clients']} concurrent clients, "
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
    parser = argparse.ArgumentParser(prog="python -m workshop_utils bench", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--arch", default="EfficientNetLite0", help="backbone to measure (default EfficientNetLite0)")
    add("--images", type=int, help="images for the bottleneck measures (default 512; quick 96)")
    add("--quick", action="store_true", help="small settings, about 3 minutes on 2 CPU cores")
    add("--out", type=Path, help="result folder (default bench/results)")
    add("--serve", action="store_true", help="measure the web API instead: concurrent clients vs in-process scoring")
    add("--model", type=Path, help="--serve: the exported model (default: the profile's workspace/model, made if "
        "missing)")
    add("--clients", type=int, default=8, help="--serve: concurrent clients (default 8)")
    add("--requests", type=int, default=256, help="--serve: requests in all (default 256)")
    args = parser.parse_args(argv)
    if args.serve:
        result = run_serve_benchmark(args.out, model_dir=args.model, clients=args.clients, requests_total=args.requests)
        table = serve_table(result)
    else:  # --quick: fewer images, the naive recipe timed over 2 epochs and scaled to E = 20
        settings = BenchSettings(arch=args.arch, **(dict(images=96, naive_epochs_run=2) if args.quick else {}))
        result = run_benchmark(replace(settings, images=args.images) if args.images else settings, args.out)
        table = markdown_table(result)
    print(f"{table}\n\nResults written to {result['path']}")
    return 0
