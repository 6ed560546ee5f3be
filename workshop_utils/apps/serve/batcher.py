"""Micro-batching for the web API (as ML.NET's pool of prediction engines): one worker thread scores the images
that arrive together as one batch. The queue is bounded: a full one refuses at once (QueueFullError, HTTP 503)."""
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, NamedTuple

from workshop_utils.core.errors import InvalidImageError, QueueFullError

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 10.0
DEFAULT_MAX_QUEUE = 64  # images waiting for the worker at most (two full batches)

BatchResult = NamedTuple("BatchResult", [("scores", Any), ("batch_size", int)])  # one image's (C,) scores
_Job = NamedTuple("_Job", [("data", bytes), ("name", "str | None"), ("future", Future)])
_STOP = object()


class MicroBatcher:
    """One worker thread: takes what is queued, waits up to ``max_wait`` s for more (at most ``max_batch``), then
    calls ``score(list_of_bytes, names)`` once. A batch failing on an invalid image is rescored one by one, so only
    the bad image's request fails. ``submit`` returns a Future per image; at most ``max_queue`` images wait."""

    def __init__(self, score: Callable[[list[bytes], list[str | None]], Any], max_batch: int = DEFAULT_MAX_BATCH,
                 max_wait: float = DEFAULT_MAX_WAIT_MS / 1000, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}.")
        if max_wait < 0:
            raise ValueError(f"max_wait must be 0 or more seconds, got {max_wait}.")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}.")
        self.score, self.max_batch, self.max_wait = score, int(max_batch), float(max_wait)
        self.max_queue, self._queue, self._lock = int(max_queue), queue.SimpleQueue(), threading.Lock()
        self._accepting = False
        self.thread: threading.Thread | None = None  # the worker, while started
        self.images = self.batches = self.largest_batch = self.refused = 0  # for /health (refused: queue full)

    @property
    def running(self) -> bool:  # the worker thread runs and accepts images
        return self._accepting and self.thread is not None and self.thread.is_alive()

    @property
    def queued(self) -> int:  # images waiting for the worker (not the batch being scored)
        return self._queue.qsize()

    def start(self) -> "MicroBatcher":
        """Start the worker thread (a daemon: it never keeps the process alive)."""
        with self._lock:
            if self.thread is not None and self.thread.is_alive():
                return self
            self._queue = queue.SimpleQueue()
            self.thread = threading.Thread(target=self._loop, name="workshop-serve-batcher", daemon=True)
            self._accepting = True
            self.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the images already queued, then end the worker thread."""
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
            self._queue.put(_STOP)
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                logger.warning("The scoring worker did not finish within %g s; it ends with the process.", timeout)

    def submit(self, data: bytes, name: str | None = None) -> Future:
        """Queue one image; the Future gives a BatchResult or raises what scoring raised. QueueFullError when
        ``max_queue`` images wait already, RuntimeError when the worker is not running."""
        job = _Job(bytes(data), name, Future())
        with self._lock:  # producers hold the lock, the worker only takes: the size cannot pass max_queue
            if not self.running:
                raise RuntimeError("The scoring worker is not running (the server is starting or shutting down).")
            if self._queue.qsize() >= self.max_queue:
                self.refused += 1
                raise QueueFullError(f"The scoring queue is full: {self.max_queue} images wait for the model (the "
                                     "server's --max-queue).")
            self._queue.put(job)
        return job.future

    def _loop(self) -> None:
        job = None
        while job is not _STOP:
            job = self._queue.get()
            batch, deadline = [], time.monotonic() + self.max_wait
            while job is not _STOP:
                batch.append(job)
                if len(batch) >= self.max_batch:
                    break
                try:  # what is already waiting, else what arrives before the deadline
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]  # skip cancelled requests
            if live:
                self._score(live)

    def _score(self, jobs: list[_Job]) -> None:
        try:
            scores = self.score([job.data for job in jobs], [job.name for job in jobs])
        except Exception as exc:
            bad_image = isinstance(exc, InvalidImageError)
            if bad_image and len(jobs) > 1:  # one bad image fails the batch call: only its request may fail
                for job in jobs:
                    self._score([job])
                return
            if not bad_image:  # not the images' fault: every request of the batch gets the error
                logger.exception("Scoring a batch of %d images failed", len(jobs))
            for job in jobs:
                job.future.set_exception(exc)
            return
        self.images += len(jobs)
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        for job, row in zip(jobs, scores):
            job.future.set_result(BatchResult(row, len(jobs)))
