"""The web API's FastAPI app: ``POST /predict``, ``GET /health`` and the page at ``/``. A full server answers 503
before reading; an upload is read within its limits (uploads.py), its header checked, then queued (batcher.py)."""
import asyncio
import contextlib
import time
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from workshop_utils.apps.serve.batcher import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_MS, MicroBatcher
from workshop_utils.apps.serve.uploads import (DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BYTES, DEFAULT_MAX_CONCURRENCY,
                                               DEFAULT_MAX_FIELDS, AnswerWhenCancelled, Gate, UploadLimits, busy_error,
                                               error_response, read_upload)
from workshop_utils.core.errors import ImageTooLargeError, InvalidImageError, UploadError
from workshop_utils.core.formats import check_image_bytes
from workshop_utils.core.scorer import Prediction
from workshop_utils.export.writer import probe_image
from workshop_utils.scoring import Classifier, Ensemble

DEFAULT_TIMEOUT_S = 120.0  # seconds a request waits for the model before it gets 503


def model_info(classifier: Classifier | Ensemble) -> dict[str, Any]:
    """What responses say about the model; the folder's name only (/health is public: no path of the machine)."""
    card = classifier.card or {}
    model = getattr(classifier, "model", None)  # an Ensemble has members instead
    name = model.name if model is not None else classifier.name
    info = {"name": name, "folder": None if classifier.directory is None else Path(classifier.directory).name,
            "arch": card.get("arch", name), "image_size": list(classifier.image_size),
            "classes": list(classifier.labels), "created": card.get("created"),
            "tta": bool(getattr(classifier, "tta", False))}  # tta: each photo averaged with its mirror
    if card.get("ensemble"):
        info["ensemble"] = card["ensemble"]  # the members' folder names and architectures
    return info


def create_app(classifier: Classifier | Ensemble | str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
               max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
               timeout: float = DEFAULT_TIMEOUT_S, warm_up: bool = True, body_timeout: float = DEFAULT_BODY_TIMEOUT_S,
               max_concurrency: int = DEFAULT_MAX_CONCURRENCY, max_queue: int = DEFAULT_MAX_QUEUE,
               max_fields: int = DEFAULT_MAX_FIELDS) -> FastAPI:
    """The app scoring with ``classifier`` (a loaded scorer, or an export folder loaded now); the limits are the
    serve command's flags. The batcher runs during the app's lifespan (uvicorn's, or ``with TestClient(app):``)."""
    limits = UploadLimits(max_bytes=max_bytes, body_timeout=body_timeout, max_fields=max_fields)
    gate = Gate(max_concurrency)
    model = Classifier.load(classifier) if isinstance(classifier, (str, Path)) else classifier
    info = model_info(model)
    batcher = MicroBatcher(model.predict_proba, max_batch=max_batch, max_wait=max_wait_ms / 1000, max_queue=max_queue)
    page_html = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")  # package data
    started_at: list[float] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if warm_up:  # score one generated image so the first request does not pay for tracing the model
            await run_in_threadpool(model.predict_proba, [probe_image(tuple(model.image_size))], ["warm-up"])
        batcher.start()
        started_at.append(time.time())
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)

    app = FastAPI(title="Car-damage classifier", summary=f"{info['arch']}: {', '.join(info['classes'])}",
                  lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.classifier, app.state.batcher, app.state.max_bytes = model, batcher, max_bytes
    app.add_middleware(AnswerWhenCancelled)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"No page at {request.url.path!r}: the API has POST /predict, GET /health and the page GET /."
        elif exc.status_code == 405:
            message = (f"{request.method} is not allowed on {request.url.path!r}: send the photo with POST "
                       "/predict (GET /health checks the server, GET / is the web page).")
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/health")
    async def health() -> JSONResponse:
        """Whether the model is loaded and the scoring worker runs; the classes, the limits and the load."""
        ok = batcher.running
        return JSONResponse({
            "status": "ok" if ok else "unavailable", "model_loaded": True, "model": info, "classes": info["classes"],
            "max_bytes": max_bytes, "max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1000,
            "body_timeout_s": limits.body_timeout, "max_concurrency": gate.limit, "max_queue": batcher.max_queue,
            "max_form_fields": limits.max_fields, "in_flight": gate.in_flight, "queued": batcher.queued,
            "refused": {"busy": gate.refused, "queue_full": batcher.refused},
            "scored": {"images": batcher.images, "batches": batcher.batches, "largest_batch": batcher.largest_batch},
            "uptime_s": round(time.time() - started_at[-1], 1) if started_at else 0.0,
        }, status_code=200 if ok else 503)

    async def score(request: Request) -> JSONResponse:
        started = time.perf_counter()
        data, name = await read_upload(request, limits)
        try:  # the header only (format, size): cheap, and keeps bad images out of the batches
            image = await run_in_threadpool(check_image_bytes, data, name, model.max_pixels)
        except ImageTooLargeError as exc:
            raise UploadError(422, str(exc)) from exc
        except InvalidImageError as exc:
            raise UploadError(415, str(exc)) from exc
        try:
            future = batcher.submit(data, name)
        except RuntimeError as exc:  # QueueFullError, or the worker is stopping
            raise busy_error(str(exc)) from exc
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except InvalidImageError as exc:  # the header was fine but TensorFlow could not decode the pixels
            raise UploadError(422, str(exc)) from exc
        except asyncio.TimeoutError as exc:
            raise busy_error(f"The model did not answer within {timeout:g} s (the server is overloaded).") from exc
        prediction = Prediction.from_scores(result.scores, info["classes"], source=name)
        return JSONResponse({
            "label": prediction.label, "probability": prediction.probability, "scores": dict(prediction.scores),
            "filename": name,
            "image": {"format": image.format, "width": image.width, "height": image.height, "bytes": len(data)},
            "model": {"name": info["name"], "arch": info["arch"]}, "batch_size": result.batch_size,
            "time_ms": round((time.perf_counter() - started) * 1000, 2),
        })

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        """Score one photo: the raw body or a multipart form's one file (JPEG/PNG/GIF/BMP)."""
        if not gate.try_enter():  # refused before reading the body: a full server costs nothing more
            raise busy_error(f"The server is busy: {gate.limit} uploads are being read or scored (its "
                             "--max-concurrency).")
        try:
            return await score(request)
        finally:
            gate.leave()

    return app
