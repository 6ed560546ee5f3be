"""Reading one upload for the web API within limits: bytes (413), seconds (408), form fields and files (400).
The body is counted as it arrives; a form is parsed as it arrives by Starlette's parser, with its limits, so a
second file or too many fields is refused at once. The photo stays in memory. Error bodies are at most 1 KB.
"""
import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import anyio
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workshop_utils.core.errors import UploadError

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 2**20  # largest upload (10 MB); larger bodies get HTTP 413
DEFAULT_BODY_TIMEOUT_S = 30.0  # seconds to send the whole body; slower clients get HTTP 408 and are cut off
DEFAULT_MAX_CONCURRENCY = 32  # uploads read or scored at once; more get HTTP 503 with Retry-After
DEFAULT_MAX_FIELDS = 16  # text fields a form may have besides the photo
MAX_FIELD_BYTES = 64 * 1024  # one text field of a form (the photo is a file part and may have max_bytes)
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers allowed on top of max_bytes
DRAIN_FACTOR = 4  # an over-limit body up to this many times the limit is read and dropped, so the client gets the 413
MAX_ERROR_BYTES = 1024  # an error response's JSON body at most
MAX_NAME_CHARS = 120  # a client's file name is shortened to this in answers and messages
RETRY_AFTER_S = 1  # the Retry-After of a 503


def busy_error(message: str) -> UploadError:
    return UploadError(503, f"{message} Try again in a moment.", headers={"Retry-After": str(RETRY_AFTER_S)})


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may cost: bytes, seconds to arrive, and text fields beside the photo in a form."""
    max_bytes: int = DEFAULT_MAX_BYTES
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S
    max_fields: int = DEFAULT_MAX_FIELDS

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {self.max_bytes}.")
        if not self.body_timeout > 0:
            raise ValueError(f"body_timeout must be above 0 seconds, got {self.body_timeout}.")
        if self.max_fields < 0:
            raise ValueError(f"max_fields must be 0 or more, got {self.max_fields}.")


class Gate:
    """Counts the uploads in flight and admits at most ``limit`` (used on the event loop only: no lock)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {limit}.")
        self.limit, self.in_flight, self.refused = int(limit), 0, 0

    def try_enter(self) -> bool:  # take a place if one is free; False (counted as refused) when none is
        if self.in_flight >= self.limit:
            self.refused += 1
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


def clip_message(message: str, limit: int = MAX_ERROR_BYTES) -> str:
    """``message`` shortened (ending in "…") so that its JSON error body is at most ``limit`` bytes."""
    while (excess := len(JSONResponse({"error": message}).body) - limit) > 0:
        message = message[: max(0, len(message) - excess - 2)] + "…"
    return message


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": clip_message(message)}, status_code=status, headers=headers)


class AnswerWhenCancelled:
    """ASGI middleware: a request cancelled by the graceful shutdown's timeout gets a 503 JSON answer (when nothing
    was sent yet) and ends quietly, not with a traceback and a bare 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except asyncio.CancelledError:  # only uvicorn's shutdown cancels a request: the task ends right here
            logger.warning("%s %s was cancelled: the server is shutting down.", scope["method"], scope["path"])
            if not started:
                response = error_response(503, "The server is shutting down; try again in a moment.",
                                          {"Connection": "close", "Retry-After": str(RETRY_AFTER_S)})
                try:
                    await response(scope, receive, send)
                except OSError as exc:  # the client is gone: nobody to tell
                    logger.info("The shutdown answer could not be sent (%s).", exc)


def short_name(name: str) -> str:
    """A client's file name without folders, shortened to MAX_NAME_CHARS (it is echoed in answers)."""
    name = Path(name).name
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 1] + "…"


def _too_large(size: int | str, max_bytes: int) -> UploadError:
    human = f"{max_bytes / 2**20:.1f} MB" if max_bytes >= 2**20 else (
        f"{max_bytes / 1024:.0f} KB" if max_bytes >= 1024 else f"{max_bytes} bytes")
    return UploadError(413, f"The upload is {size if isinstance(size, str) else f'{size:,} bytes'}, over this "
                            f"server's limit of {max_bytes:,} bytes ({human}); send a smaller photo "
                            "(downscale it) or start the server with a larger --max-bytes.")


@dataclass
class _Progress:
    received: int = 0  # bytes of the body so far


async def _chunks(request: Request, limit: int, max_bytes: int, progress: _Progress) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, at most ``limit`` bytes in all (413 beyond, read no further than needed)."""
    declared = request.headers.get("content-length", "")
    async with aclosing(request.stream()) as stream:
        if declared.isdigit() and int(declared) > limit:
            if int(declared) <= DRAIN_FACTOR * limit:  # read and drop it, so the client is not cut off mid-send
                async for chunk in stream:
                    progress.received += len(chunk)
            raise _too_large(int(declared), max_bytes)
        async for chunk in stream:
            progress.received += len(chunk)
            if progress.received > limit:
                total = progress.received
                async for more in stream:
                    total += len(more)
                    if total > DRAIN_FACTOR * limit:
                        break
                raise _too_large(f"over {limit:,} bytes" if total > DRAIN_FACTOR * limit else total, max_bytes)
            yield chunk


def _form_error(exc: MultiPartException, limits: UploadLimits) -> UploadError:
    """Starlette's form-limit error as a message that names the rule and the fix."""
    message = exc.message
    if message.startswith("Too many files"):
        return UploadError(400, "The form has more than one file, and this API scores one photo per request: send each "
                                "photo in a request of its own, as the form field 'file' (curl -F file=@photo.jpg).")
    if message.startswith("Too many fields"):
        return UploadError(400, f"The form has more than {limits.max_fields} text fields besides the photo (this "
                                "server's limit); send the photo alone, as the form field 'file' "
                                "(curl -F file=@photo.jpg), or as the raw request body.")
    if message.startswith("Part exceeded"):
        return UploadError(413, f"A text field of the form is over {MAX_FIELD_BYTES // 1024} KB (this server's "
                                "limit for fields that are not files); send the photo as a file part "
                                "(curl -F file=@photo.jpg, with the @) or as the raw request body.")
    if message.startswith("Missing boundary"):
        return UploadError(400, "The multipart request has no boundary in its Content-Type header; let the "
                                "HTTP library build the form (e.g. requests' files= or curl -F).")
    detail = f"{message} {exc.__cause__}" if exc.__cause__ else message
    return UploadError(400, f"The multipart form could not be read ({detail}); send the photo as the raw body "
                            "or as a form field named 'file'.")


async def _read_form(request: Request, chunks: AsyncIterator[bytes], limits: UploadLimits) -> tuple[bytes, str]:
    """(bytes, file name) of the form's one file part, parsed as the chunks arrive."""
    parser = MultiPartParser(request.headers, chunks, max_files=1, max_fields=limits.max_fields,
                             max_part_size=MAX_FIELD_BYTES)
    parser.spool_max_size = limits.max_bytes + MULTIPART_OVERHEAD  # keep the photo in memory: no temp file
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise _form_error(exc, limits) from exc
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            fields = list(form.keys())
            if "file" in fields:
                raise UploadError(400, "The form's 'file' field is text, not a file (its Content-Disposition has "
                                       "no filename); send the photo as a file (curl -F file=@photo.jpg, with "
                                       "the @) or as the raw request body.")
            shown = ", ".join(repr(short_name(f)) for f in fields[:5]) + (", …" if len(fields) > 5 else "")
            raise UploadError(400, f"The form has no 'file' field (fields: {shown or 'none'}); send the photo as "
                                   "a form field named 'file' (curl -F file=@photo.jpg) or as the raw request body.")
        return await files[0].read(), short_name(files[0].filename or "")
    finally:
        await form.close()


async def read_upload(request: Request, limits: UploadLimits) -> tuple[bytes, str | None]:
    """(image bytes, file name or None) from a raw body or a multipart form's one file, within ``limits``;
    UploadError 400 (empty, bad form), 408 (too slow; with ``Connection: close``) or 413 (over ``max_bytes``)."""
    progress = _Progress()
    multipart = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
    limit = limits.max_bytes + (MULTIPART_OVERHEAD if multipart else 0)
    try:
        with anyio.fail_after(limits.body_timeout):
            async with aclosing(_chunks(request, limit, limits.max_bytes, progress)) as chunks:
                if multipart:
                    data, name = await _read_form(request, chunks, limits)
                else:
                    data, name = b"".join([chunk async for chunk in chunks]), None
    except TimeoutError as exc:
        declared = request.headers.get("content-length", "")
        of = f" of {int(declared):,}" if declared.isdigit() else ""
        raise UploadError(408, f"The upload did not arrive within {limits.body_timeout:g} s ({progress.received:,}"
                               f"{of} bytes received); send it over a faster connection, or start the server with "
                               "a larger --body-timeout.", headers={"Connection": "close"}) from exc
    except ClientDisconnect as exc:  # nobody reads the answer, but the request ends cleanly
        raise UploadError(400, f"The client closed the connection after {progress.received:,} bytes, before the "
                               "whole body arrived.") from exc
    if not data:
        what = f"The uploaded file {name!r} is empty" if name else "The request body is empty"
        raise UploadError(400, f"{what} (0 bytes); send the photo's bytes as the body (curl --data-binary "
                               "@photo.jpg) or as a form field named 'file' (curl -F file=@photo.jpg).")
    if len(data) > limits.max_bytes:
        raise _too_large(len(data), limits.max_bytes)
    return data, name or None
