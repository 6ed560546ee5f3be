"""Serve an exported model over HTTP: ``POST /predict``, ``GET /health`` and a one-page web app at ``/``.

``python -m workshop_utils serve MODEL_DIR [--host 127.0.0.1] [--port 8000] [--max-bytes N]`` loads the
export once (:class:`model_io.Classifier`) and scores uploads in memory, never through temp files. Like
the pool of prediction engines in ML.NET's Web API sample, concurrent requests are safe and keep the model
busy: a :class:`MicroBatcher` thread scores the images that arrive together as one batch. Bad uploads get
a 4xx JSON ``{"error": "..."}`` and the server keeps serving. :class:`BackgroundServer` runs the same app in
a thread of the current process (a notebook kernel), with a clean ``stop()``.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import queue
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    try:
        from python_multipart.multipart import MultipartParser, parse_options_header
    except ImportError:  # python-multipart before 0.0.13 named its module "multipart"
        from multipart.multipart import MultipartParser, parse_options_header  # type: ignore[no-redef]
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"Serving needs FastAPI, uvicorn and python-multipart ({_exc}); install them with "
        "`pip install -r requirements.txt` (or `pip install fastapi uvicorn python-multipart`)."
    ) from _exc

from .predictions import ImageTooLargeError, InvalidImageError, Prediction, check_image_bytes

if TYPE_CHECKING:
    from .model_io import Classifier

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 2**20
"""Largest upload accepted by default (10 MB); larger bodies get HTTP 413."""
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 10.0
DEFAULT_TIMEOUT_S = 120.0
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers allowed on top of max_bytes
DRAIN_FACTOR = 4  # an over-limit body up to this many times max_bytes is read and dropped, so the client gets the 413


class ServeError(OSError):
    """The server cannot start (port taken, bad host); the message names the address and the fix."""


class UploadError(Exception):
    """A request the server cannot score; becomes an HTTP ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- micro-batching ---------------------------------------------------------------------------------------
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
    again one by one, so only the bad image's request fails.
    """

    def __init__(
        self,
        score: Callable[[list[bytes], list[str | None]], Any],
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait: float = DEFAULT_MAX_WAIT_MS / 1000,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}.")
        if max_wait < 0:
            raise ValueError(f"max_wait must be 0 or more seconds, got {max_wait}.")
        self.score, self.max_batch, self.max_wait = score, int(max_batch), float(max_wait)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._accepting = False
        self.thread: threading.Thread | None = None  # the worker, while started
        self.images = 0  # images scored (for /health)
        self.batches = 0
        self.largest_batch = 0

    @property
    def running(self) -> bool:
        """True while the worker thread runs and accepts images."""
        return self._accepting and self.thread is not None and self.thread.is_alive()

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
        """Queue one image; the Future gives a :class:`BatchResult` or raises what scoring raised."""
        job = _Job(bytes(data), name, Future())
        with self._lock:
            if not self.running:
                raise RuntimeError("The scoring worker is not running (the server is starting or shutting down).")
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


# -- reading uploads --------------------------------------------------------------------------------------
def _human(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"


def _too_large(size: int | str, max_bytes: int) -> UploadError:
    return UploadError(
        413,
        f"The upload is {size if isinstance(size, str) else f'{size:,} bytes'}, over this server's limit of "
        f"{max_bytes:,} bytes ({_human(max_bytes)}); send a smaller photo (downscale it) or start the server "
        "with a larger --max-bytes.",
    )


async def _read_body(request: Request, limit: int, max_bytes: int) -> bytes:
    """The request body in memory, at most ``limit`` bytes (413 beyond, read no further than needed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        if int(declared) <= DRAIN_FACTOR * limit:  # read and drop it, so the client is not cut off mid-send
            async for _ in request.stream():
                pass
        raise _too_large(int(declared), max_bytes)
    body = bytearray()
    stream = request.stream()
    async for chunk in stream:
        body += chunk
        if len(body) > limit:
            total = len(body)
            async for more in stream:
                total += len(more)
                if total > DRAIN_FACTOR * limit:
                    break
            raise _too_large(f"over {limit:,} bytes" if total > DRAIN_FACTOR * limit else total, max_bytes)
    return bytes(body)


def parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/form-data body, in memory: (lower-cased headers, data) per part."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "The multipart request has no boundary in its Content-Type header; let the "
                               "HTTP library build the form (e.g. requests' files= or curl -F).")
    parts: list[tuple[dict[str, str], bytearray]] = []
    field, value = bytearray(), bytearray()

    def header_end() -> None:
        parts[-1][0][field.decode("latin-1").strip().lower()] = value.decode("utf-8", "replace").strip()
        field.clear()
        value.clear()

    callbacks = {
        "on_part_begin": lambda: parts.append(({}, bytearray())),
        "on_header_field": lambda data, start, end: field.extend(data[start:end]),
        "on_header_value": lambda data, start, end: value.extend(data[start:end]),
        "on_header_end": header_end,
        "on_part_data": lambda data, start, end: parts[-1][1].extend(data[start:end]),
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except ValueError as exc:  # python-multipart's parse errors are ValueErrors
        raise UploadError(400, f"The multipart form could not be read ({exc}); send the photo as the raw body "
                               "or as a form field named 'file'.") from exc
    return [(headers, bytes(data)) for headers, data in parts]


def _disposition(headers: dict[str, str]) -> tuple[str | None, str | None]:
    """(field name, file name) from a part's Content-Disposition header."""
    _, params = parse_options_header(headers.get("content-disposition", ""))
    name, filename = params.get(b"name"), params.get(b"filename")
    return (None if name is None else name.decode("utf-8", "replace"),
            None if filename is None else Path(filename.decode("utf-8", "replace")).name)


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str | None]:
    """(image bytes, file name or None) from a raw body or a multipart form's ``file`` field."""
    content_type = request.headers.get("content-type", "")
    multipart = content_type.lower().startswith("multipart/form-data")
    body = await _read_body(request, max_bytes + (MULTIPART_OVERHEAD if multipart else 0), max_bytes)
    name = None
    if multipart and body:
        parts = [(*_disposition(headers), data) for headers, data in parse_multipart(body, content_type)]
        chosen = [p for p in parts if p[0] == "file"] or [p for p in parts if p[1] is not None]
        if not chosen:
            fields = ", ".join(repr(p[0]) for p in parts) or "none"
            raise UploadError(400, f"The form has no 'file' field (fields: {fields}); send the photo as a form "
                                   "field named 'file' (curl -F file=@photo.jpg) or as the raw request body.")
        _, name, body = chosen[0]
    if not body:
        what = f"The uploaded file {name!r} is empty" if name else "The request body is empty"
        raise UploadError(400, f"{what} (0 bytes); send the photo's bytes as the body (curl --data-binary "
                               "@photo.jpg) or as a form field named 'file' (curl -F file=@photo.jpg).")
    if len(body) > max_bytes:
        raise _too_large(len(body), max_bytes)
    return body, name


# -- the app ----------------------------------------------------------------------------------------------
def model_info(classifier: "Classifier") -> dict[str, Any]:
    """What responses say about the model: its name, architecture, image size and classes (from the card)."""
    card = classifier.card or {}
    return {
        "name": classifier.model.name,
        "arch": card.get("arch", classifier.model.name),
        "image_size": list(classifier.image_size),
        "classes": list(classifier.labels),
        "created": card.get("created"),
        "directory": None if classifier.directory is None else str(classifier.directory),
    }


def _warm_up(classifier: "Classifier") -> None:
    """Score one generated image so the first request does not pay for tracing the model."""
    from .model_io import probe_image

    classifier.predict_proba([probe_image(tuple(classifier.image_size))], ["warm-up"])


def create_app(
    classifier: "Classifier | str | Path",
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    timeout: float = DEFAULT_TIMEOUT_S,
    warm_up: bool = True,
) -> FastAPI:
    """The FastAPI app scoring with ``classifier`` (a loaded Classifier or an export folder, loaded now).

    The micro-batching worker runs while the app runs (its lifespan): uvicorn starts and stops it, and
    so does ``with fastapi.testclient.TestClient(app):``.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes}.")
    if not isinstance(classifier, (str, Path)):
        model = classifier
    else:
        from .model_io import Classifier

        model = Classifier.load(classifier)
    info = model_info(model)
    batcher = MicroBatcher(model.predict_proba, max_batch=max_batch, max_wait=max_wait_ms / 1000)
    started_at: list[float] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if warm_up:
            await run_in_threadpool(_warm_up, model)
        batcher.start()
        started_at.append(time.time())
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)

    app = FastAPI(title="Car-damage classifier", summary=f"{info['arch']}: {', '.join(info['classes'])}",
                  lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.classifier, app.state.batcher, app.state.max_bytes = model, batcher, max_bytes

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"No page at {request.url.path!r}: the API has POST /predict, GET /health and the page GET /."
        elif exc.status_code == 405:
            message = (f"{request.method} is not allowed on {request.url.path!r}: send the photo with POST "
                       "/predict (GET /health checks the server, GET / is the web page).")
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE_HTML)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/health")
    async def health() -> JSONResponse:
        """Whether the model is loaded and the scoring worker runs; the classes and limits."""
        ok = batcher.running
        body = {
            "status": "ok" if ok else "unavailable",
            "model_loaded": True,
            "model": info,
            "classes": info["classes"],
            "max_bytes": max_bytes,
            "max_batch": batcher.max_batch,
            "max_wait_ms": batcher.max_wait * 1000,
            "scored": {"images": batcher.images, "batches": batcher.batches, "largest_batch": batcher.largest_batch},
            "uptime_s": round(time.time() - started_at[-1], 1) if started_at else 0.0,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        """Score one photo: the raw body or a multipart ``file`` field (JPEG/PNG/GIF/BMP)."""
        started = time.perf_counter()
        data, name = await read_upload(request, max_bytes)
        try:  # the header only (format, size): cheap, and keeps bad images out of the batches
            image = await run_in_threadpool(check_image_bytes, data, name, model.max_pixels)
        except ImageTooLargeError as exc:
            raise UploadError(422, str(exc)) from exc
        except InvalidImageError as exc:
            raise UploadError(415, str(exc)) from exc
        try:
            future = batcher.submit(data, name)
        except RuntimeError as exc:
            raise UploadError(503, f"{exc} Try again in a moment.") from exc
        try:
            result: BatchResult = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except InvalidImageError as exc:  # the header was fine but TensorFlow could not decode the pixels
            raise UploadError(422, str(exc)) from exc
        except asyncio.TimeoutError as exc:
            raise UploadError(503, f"The model did not answer within {timeout:g} s (the server is overloaded); "
                                   "try again later.") from exc
        prediction = Prediction.from_scores(result.scores, info["classes"], source=name)
        return JSONResponse({
            "label": prediction.label,
            "probability": prediction.probability,
            "scores": dict(prediction.scores),
            "filename": name,
            "image": {"format": image.format, "width": image.width, "height": image.height, "bytes": len(data)},
            "model": {"name": info["name"], "arch": info["arch"]},
            "batch_size": result.batch_size,
            "time_ms": round((time.perf_counter() - started) * 1000, 2),
        })

    return app


# -- running it -------------------------------------------------------------------------------------------
def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free port, read it back with ``getsockname()``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP proto: asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = "choose another --port (or --port 0 for any free one)" if port else "check --host"
        raise ServeError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}); {hint}.") from exc
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    return f"http://{shown}:{port}/"


_RUNNING: "weakref.WeakSet[BackgroundServer]" = weakref.WeakSet()


class BackgroundServer:
    """The app served by uvicorn in a daemon thread of this process (e.g. a notebook kernel).

    ``start()`` returns once the server answers (or raises why it could not start); ``stop()`` shuts it
    down gracefully and closes the port. The thread dies with the process, and servers still running at
    interpreter exit are stopped, so nothing is left behind when a kernel stops.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.app, self.host, self.requested_port, self.log_level = app, host, int(port), log_level
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``http://host:port/`` of the running server."""
        if self.port is None:
            raise RuntimeError("The server is not started; call start() first.")
        return _url(self.host, self.port)

    @property
    def running(self) -> bool:
        """True while the server thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 120.0) -> "BackgroundServer":
        """Bind the port, start the server thread and wait until it serves (at most ``timeout`` seconds)."""
        if self.running:
            return self
        sock = bind_socket(self.host, self.requested_port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=self.log_level, access_log=False, lifespan="on",
                                timeout_graceful_shutdown=5)
        self._server = server = uvicorn.Server(config)
        self._error = None

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # SystemExit when the app fails to start: report it from start()
                self._error = exc
            finally:
                sock.close()

        self._thread = threading.Thread(target=run, name=f"workshop-serve-{self.port}", daemon=True)
        self._thread.start()
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                raise ServeError(f"The server on port {self.port} stopped while starting"
                                 + (f": {self._error!r}" if self._error else "; see the log above."))
            if time.monotonic() > deadline:
                self.stop()
                raise ServeError(f"The server on port {self.port} did not start within {timeout:g} s.")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Shut down gracefully (finish requests, stop the batcher), wait for the thread, close the port."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(5)
            if self._thread.is_alive():
                raise ServeError(f"The server thread on port {self.port} did not stop within {timeout:g} s.")
        _RUNNING.discard(self)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running at {self.url}" if self.running else "stopped"
        return f"BackgroundServer({state})"


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop(timeout=5)


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def serve(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    log_level: str = "info",
) -> int:
    """``python -m workshop_utils serve``: load the export once and serve it until Ctrl+C; exit code 0."""
    sock = bind_socket(host, port)  # first: a taken port fails at once, not after loading the model
    try:
        from .model_io import Classifier

        classifier = Classifier.load(model_dir)
        app = create_app(classifier, max_bytes=max_bytes, max_batch=max_batch, max_wait_ms=max_wait_ms)
        url = _url(host, sock.getsockname()[1])
        info = model_info(classifier)
        print(f"Serving {info['arch']} ({len(info['classes'])} classes: {', '.join(info['classes'])}) "
              f"from {model_dir}")
        print(f"Web page: {url}   API: POST {url}predict   health: {url}health   (Ctrl+C to stop)", flush=True)
        if host in ("0.0.0.0", "::"):
            print("Note: listening on all interfaces, so other machines on the network can reach it.")
        try:
            uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on")).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the Ctrl+C it caught
            pass
    finally:
        sock.close()
    print("Server stopped.")
    return 0


def colab_url(port: int) -> str | None:
    """The address of ``port`` through Colab's proxy (for the learner's browser), or None outside Colab."""
    if "google.colab" not in sys.modules:
        return None
    from google.colab.output import eval_js  # type: ignore[import-not-found]

    return str(eval_js(f"google.colab.kernel.proxyPort({int(port)})"))


# -- the page ---------------------------------------------------------------------------------------------
PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Car-damage classifier</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.5rem; margin-bottom: .2rem; }
  #model { color: #666; margin-top: 0; }
  #drop { border: 2px dashed #999; border-radius: .6rem; padding: 1.5rem; text-align: center; cursor: pointer; }
  #drop.over { border-color: #1a73e8; background: #eef4fd; }
  #preview { max-width: 100%; max-height: 18rem; margin-top: 1rem; display: none; border-radius: .4rem; }
  #error { display: none; background: #fdecea; color: #8a1c12; border-left: 4px solid #d93025;
           padding: .6rem .8rem; margin-top: 1rem; border-radius: .3rem; }
  #result { display: none; margin-top: 1rem; }
  #label { font-size: 1.4rem; font-weight: 600; }
  .bar-row { display: grid; grid-template-columns: 10rem 1fr 4rem; gap: .5rem; align-items: center; margin: .25rem 0; }
  .bar { background: #e8eaed; height: 1rem; border-radius: .2rem; overflow: hidden; }
  .bar > div { background: #1a73e8; height: 100%; }
  .bar-row.top .bar > div { background: #188038; }
  .num { text-align: right; font-variant-numeric: tabular-nums; }
  #busy { color: #666; display: none; }
</style>
</head>
<body>
<h1>Car-damage classifier</h1>
<p id="model">Loading the model's description…</p>
<form id="upload-form" action="predict" method="post" enctype="multipart/form-data">
  <label id="drop" for="file">
    <strong>Choose a photo</strong> or drop it here (JPEG, PNG, GIF or BMP)<br>
    <input id="file" name="file" type="file" accept="image/*">
  </label>
  <noscript><p><button type="submit">Classify</button> (without JavaScript the answer is shown as JSON)</p></noscript>
</form>
<img id="preview" alt="the photo you chose">
<p id="busy">Classifying…</p>
<div id="error" role="alert"></div>
<div id="result" aria-live="polite">
  <p>Predicted: <span id="label"></span> (<span id="probability"></span>)
     <small id="timing"></small></p>
  <div id="bars"></div>
</div>
<script>
"use strict";
const PREDICT_URL = "predict";   // relative, so it also works behind a proxy (Colab)
let maxBytes = null;
const $ = (id) => document.getElementById(id);

function showError(message) {
  $("busy").style.display = "none";
  $("result").style.display = "none";
  $("error").textContent = message;
  $("error").style.display = "block";
}

function showResult(answer) {
  $("busy").style.display = "none";
  $("error").style.display = "none";
  $("label").textContent = answer.label;
  $("probability").textContent = (100 * answer.probability).toFixed(1) + " %";
  $("timing").textContent = "in " + answer.time_ms.toFixed(0) + " ms";
  const bars = $("bars");
  bars.replaceChildren();
  const rows = Object.entries(answer.scores).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of rows) {
    const row = document.createElement("div");
    row.className = "bar-row" + (name === answer.label ? " top" : "");
    const label = document.createElement("span");
    label.textContent = name;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.style.width = (100 * p).toFixed(1) + "%";
    bar.appendChild(fill);
    const value = document.createElement("span");
    value.className = "num";
    value.textContent = (100 * p).toFixed(1) + " %";
    row.append(label, bar, value);
    bars.appendChild(row);
  }
  $("result").style.display = "block";
}

async function classify(file) {
  if (!file) return;
  const preview = $("preview");
  preview.onerror = () => { preview.style.display = "none"; };   // not something the browser can show
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.style.display = "block";
  if (maxBytes !== null && file.size > maxBytes) {
    showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB, over this server's limit of ` +
              `${(maxBytes / 1048576).toFixed(1)} MB: choose a smaller photo.`);
    return;
  }
  $("busy").style.display = "block";
  $("error").style.display = "none";
  const form = new FormData();
  form.append("file", file, file.name);
  let response;
  try {
    response = await fetch(PREDICT_URL, { method: "POST", body: form });
  } catch (err) {
    showError("The server did not answer (" + err.message + "). Is it still running?");
    return;
  }
  let answer = null;
  try { answer = await response.json(); } catch (err) { answer = null; }
  if (!response.ok || answer === null || answer.error) {
    showError((answer && answer.error) || `The server answered ${response.status} ${response.statusText}.`);
    return;
  }
  showResult(answer);
}

$("file").addEventListener("change", (event) => classify(event.target.files[0]));
const drop = $("drop");
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  if (event.dataTransfer.files.length) classify(event.dataTransfer.files[0]);
});
document.getElementById("upload-form").addEventListener("submit", (event) => event.preventDefault());
// a photo dropped next to the box must not make the browser leave the page to display it
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

fetch("health").then((r) => r.json()).then((health) => {
  maxBytes = health.max_bytes;
  const m = health.model;
  $("model").textContent = `${m.arch} · ${m.classes.length} classes: ${m.classes.join(", ")}`;
}).catch(() => { $("model").textContent = "Could not read the model's description from /health."; });
</script>
</body>
</html>
"""
