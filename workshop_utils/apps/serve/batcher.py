"""Micro-batching for the web API: one worker thread scores the images that arrive together as one batch.

Like the pool of prediction engines in ML.NET's Web API sample, concurrent requests are safe and keep the
model busy, without a lock per request. The queue is bounded (``max_queue``): when it is full, ``submit``
refuses at once with :class:`QueueFullError` (the server answers 503), so memory cannot grow without limit.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from workshop_utils.core.errors import InvalidImageError, QueueFullError

logger = logging.getLogger(__name__)


DEFAULT_MAX_BATCH = 32


DEFAULT_MAX_WAIT_MS = 10.0


DEFAULT_MAX_QUEUE = 64
"""Images waiting for the worker at most (two full batches); more are refused with QueueFullError."""


@dataclass(frozen=True)
class BatchResult:
    """One image's scores (C,) and the size of the batch they were computed in."""

    scores: Any
    batch_size: int


@dataclass
class _Job:
    data: bytes
    name: str | None
    future: Future


_STOP = object()


class MicroBatcher:
    """One worker thread that scores queued images in batches: ``submit`` returns a Future per image.

    The worker takes what is queued, waits up to ``max_wait`` seconds for more (at most ``max_batch``),
    then calls ``score(list_of_bytes, names)`` once for the whole batch, so the model does the work of many
    requests in one call and no request holds a lock. When a batch fails on an invalid image it is scored
    again one by one, so only the bad image's request fails. At most ``max_queue`` images wait.
    """

    def __init__(
        self,
        score: Callable[[list[bytes], list[str | None]], Any],
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait: float = DEFAULT_MAX_WAIT_MS / 1000,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}.")
        if max_wait < 0:
            raise ValueError(f"max_wait must be 0 or more seconds, got {max_wait}.")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}.")
        self.score, self.max_batch, self.max_wait = score, int(max_batch), float(max_wait)
        self.max_queue = int(max_queue)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._accepting = False
        self.thread: threading.Thread | None = None  # the worker, while started
        self.images = 0  # images scored (for /health)
        self.batches = 0
        self.largest_batch = 0
        self.refused = 0  # submits refused because the queue was full

    @property
    def running(self) -> bool:
        """True while the worker thread runs and accepts images."""
        return self._accepting and self.thread is not None and self.thread.is_alive()

    @property
    def queued(self) -> int:
        """Images waiting for the worker (not counting the batch being scored)."""
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
        """Queue one image; the Future gives a :class:`BatchResult` or raises what scoring raised.

        Raises :class:`QueueFullError` when ``max_queue`` images are waiting already, and RuntimeError
        when the worker is not running.
        """
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
        stop = False
        while not stop:
            job = self._queue.get()
            if job is _STOP:
                break
            batch = [job]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    job = self._queue.get_nowait()  # first what is already waiting
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        job = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if job is _STOP:
                    stop = True
                    break
                batch.append(job)
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]  # skip cancelled requests
        if not live:
            return
        try:
            scores = self.score([job.data for job in live], [job.name for job in live])
        except InvalidImageError as exc:
            if len(live) == 1:
                live[0].future.set_exception(exc)
            else:  # one bad image fails the whole batch call: score one by one so only its request fails
                for job in live:
                    self._run_one(job)
            return
        except Exception as exc:  # not the images' fault: every request of the batch gets the error
            logger.exception("Scoring a batch of %d images failed", len(live))
            for job in live:
                job.future.set_exception(exc)
            return
        self._count(len(live))
        for job, row in zip(live, scores):
            job.future.set_result(BatchResult(row, len(live)))

    def _run_one(self, job: _Job) -> None:
        try:
            row = self.score([job.data], [job.name])[0]
        except Exception as exc:
            job.future.set_exception(exc)
            return
        self._count(1)
        job.future.set_result(BatchResult(row, 1))

    def _count(self, size: int) -> None:
        self.images += size
        self.batches += 1
        self.largest_batch = max(self.largest_batch, size)
