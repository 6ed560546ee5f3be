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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests

from workshop_utils import config
from workshop_utils.course import load_exported
from workshop_utils.scoring import Classifier
from workshop_utils.tooling.bench.cases import seconds, source_images, timed


def _percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds, dtype=np.float64) * 1000
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95))}


@contextmanager
def _server_process(model_dir: Path, timeout: float = 300.0) -> Iterator[str]:
    """``python -m workshop_utils serve MODEL --port 0`` in a child process: its URL once /health answers (within
    ``timeout`` seconds); stopped afterwards with SIGINT, like Ctrl+C."""
    command = [sys.executable, "-m", "workshop_utils", "serve", str(model_dir), "--port", "0"]
    with tempfile.TemporaryDirectory(prefix="workshop-bench-serve-") as tmp:
        log_path = Path(tmp) / "serve.log"
        with open(log_path, "w", encoding="utf-8") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        try:
            while True:
                found = re.search(r"Web page: (http://\S+/)", log_path.read_text(encoding="utf-8"))
                try:
                    if found and requests.get(found[1] + "health", timeout=5).status_code == 200:
                        break
                except requests.RequestException:  # not listening yet, or a read timeout while uvicorn warms up
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    why = (f"exited with code {process.returncode}" if process.poll() is not None
                           else f"did not answer within {timeout:g} s")
                    raise RuntimeError(f"The server {why}:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.2)
            yield found[1]
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)


def _health_during_big_form(url: str, form_bytes: int = 10 * 2**20, rounds: int = 5) -> dict[str, Any]:
    """/health latency, alone and while a form of ~200k one-byte fields is posted to /predict ``rounds`` times, and
    what the form gets back: parsed on the event loop, it would freeze every request; a bounded parser refuses it."""
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
        return seconds(lambda: session.get(url + "health", timeout=120).raise_for_status())

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
    """(serve) N client threads (keep-alive) against ``python -m workshop_utils serve`` in its own process, until
    ``requests_total`` requests or ``max_seconds``, next to in-process ``predict_proba`` on the same photos (one at
    a time, and in batches of 32; median of ``rounds``). Every answer is checked against the in-process scores."""
    classifier = load_exported(config.setup()) if model_dir is None else Classifier.load(model_dir)
    labels = classifier.labels
    train, validation = source_images()
    paths = list(pd.concat([train, validation])["image_path"])[:photos]
    blobs = [Path(p).read_bytes() for p in paths]
    names = [Path(p).name for p in paths]

    classifier.predict_proba(blobs[:32], names[:32])  # warm-up (tracing, buffers for a full batch)
    reference = [classifier.predict_proba([data], [name])[0] for data, name in zip(blobs, names)]
    single_seconds: list[float] = []
    single_totals, batch_totals = [], []

    def one_at_a_time() -> None:
        single_seconds.extend(seconds(lambda: classifier.predict_proba([d], [n])) for d, n in zip(blobs, names))

    for _ in range(rounds):  # interleaved, and the median kept: the CPU may be shared with other work
        single_totals.append(seconds(one_at_a_time))
        batch_totals.append(seconds(lambda: [classifier.predict_proba(blobs[i: i + 32], names[i: i + 32])
                                              for i in range(0, len(blobs), 32)]))
    single_total, batch_total = float(np.median(single_totals)), float(np.median(batch_totals))

    answers: list[tuple[int, float, requests.Response]] = []  # (photo, seconds, response), checked afterwards
    counter = iter(range(requests_total))  # shared by the clients: next() on it is atomic
    clock: dict[str, float] = {}  # set once every client is warm, just before they all start
    barrier = threading.Barrier(clients, action=lambda: clock.update(
        started=time.perf_counter(), deadline=time.monotonic() + max_seconds))

    def client(url: str) -> None:
        session = requests.Session()
        try:
            for _ in range(2):  # warm-up: open the connection
                session.post(url + "predict", data=blobs[0], timeout=120).raise_for_status()
        except Exception:
            barrier.abort()  # the other clients stop waiting
            raise
        barrier.wait(timeout=600)
        while time.monotonic() < clock["deadline"] and (i := next(counter, None)) is not None:
            k = i % len(blobs)
            response, elapsed = timed(lambda: session.post(url + "predict", files={"file": (names[k], blobs[k])},
                                                           timeout=120))
            answers.append((k, elapsed, response))

    with _server_process(classifier.directory) as url, ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client, url) for _ in range(clients)]:
            future.result()
        served_total = time.perf_counter() - clock["started"]
        stats = requests.get(url + "health", timeout=30).json()["scored"]
        form_probe = _health_during_big_form(url)
    ok = [(k, response.json()) for k, _, response in answers if response.status_code == 200]
    worst = max((float(np.max(np.abs(np.array([a["scores"][c] for c in labels]) - reference[k]))) for k, a in ok),
                default=0.0)
    n = len(answers)
    served_ips = n / served_total
    single_ips = len(blobs) / single_total
    return {
        "serve_model": str(classifier.directory),
        "serve_arch": (classifier.card or {}).get("arch", classifier.model.name),
        "serve_clients": clients, "serve_requests": n, "serve_failed": n - len(ok),
        "serve_wrong_labels": sum(a["label"] != labels[int(np.argmax(reference[k]))] for k, a in ok),
        "serve_max_score_difference": worst, "serve_images_per_second": served_ips,
        **{f"serve_{k}": v for k, v in _percentiles([elapsed for _, elapsed, _ in answers]).items()},
        "serve_mean_batch": stats["images"] / max(stats["batches"], 1), "serve_largest_batch": stats["largest_batch"],
        "inprocess_single_images_per_second": single_ips,
        **{f"inprocess_single_{k}": v for k, v in _percentiles(single_seconds).items()},
        "inprocess_batch_images_per_second": len(blobs) / batch_total,
        "serve_vs_inprocess_single": served_ips / single_ips,
        "serve_vs_inprocess_batch": served_ips / (len(blobs) / batch_total), "photos": len(blobs), **form_probe,
    }
