"""The web API's benchmark: concurrent clients against ``python -m workshop_utils serve`` in its own process."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests

from workshop_utils import config
from workshop_utils.course import load_exported
from workshop_utils.scoring import Classifier
from workshop_utils.tooling.bench.cases import source_images


def _percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds, dtype=np.float64) * 1000
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95))}


def _start_server_process(model_dir: Path, log_path: Path, timeout: float = 300.0) -> tuple[Any, str]:
    """``python -m workshop_utils serve MODEL --port 0`` in a child process: (process, its URL) once it answers."""
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
        "serve_form_parts": parts, "serve_form_bytes": len(body), "serve_form_status": answers[0][0] if answers else 0,
        "serve_form_answer_bytes": max((size for _, size in answers), default=0),
        "serve_health_alone_p50_ms": _percentiles(alone)["p50_ms"],
        "serve_health_during_form_p50_ms": _percentiles(during)["p50_ms"],
        "serve_health_during_form_max_ms": 1000 * max(during),
    }


def bench_serve(model_dir: Path | None = None, clients: int = 8, requests_total: int = 256, photos: int = 64,
                max_seconds: float = 300.0, rounds: int = 3) -> dict[str, Any]:
    """(serve) N concurrent clients against ``python -m workshop_utils serve`` on 127.0.0.1, next to in-process
    ``Classifier.predict_proba`` on the same photos (one at a time, and in batches of 32; median of ``rounds``).
    The server has its own process; clients are threads with keep-alive connections, stopping after ``requests_total``
    requests or ``max_seconds``. Every answer is checked against the in-process scores."""
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
        "serve_model": str(model_dir), "serve_arch": (classifier.card or {}).get("arch", classifier.model.name),
        "serve_clients": clients, "serve_requests": n, "serve_failed": failed, "serve_wrong_labels": int(wrong),
        "serve_max_score_difference": worst, "serve_images_per_second": served_ips,
        **{f"serve_{k}": v for k, v in _percentiles(latencies).items()},
        "serve_mean_batch": stats["images"] / max(stats["batches"], 1), "serve_largest_batch": stats["largest_batch"],
        "inprocess_single_images_per_second": single_ips,
        **{f"inprocess_single_{k}": v for k, v in _percentiles(single_seconds).items()},
        "inprocess_batch_images_per_second": len(blobs) / batch_total,
        "serve_vs_inprocess_single": served_ips / single_ips,
        "serve_vs_inprocess_batch": served_ips / (len(blobs) / batch_total), "photos": len(blobs), **form_probe,
    }
