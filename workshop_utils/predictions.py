"""What every scorer shares: untrusted-image checks, the label file and the ``Prediction`` result.

No TensorFlow here (only Pillow), so a command line or web handler can check uploads and catch
:class:`InvalidImageError` without loading TensorFlow. Used by ``model_io`` (the exported Keras
model) and ``frozen_graph`` (any frozen ``.pb``).
"""
from __future__ import annotations

import html
import io
import math
import os
import struct
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .image_data import BMP_SUPPORTED, bmp_problem, jpeg_missing_data, png_missing_data, webp_missing_data

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest image (width × height) accepted by default: 40 MP, checked from the header before decoding."""


@dataclass(frozen=True)
class ImageFormat:
    """One row of :data:`IMAGE_FORMATS`: the name messages use, Pillow's names for it, its file extensions."""

    name: str
    pillow_names: tuple[str, ...]
    extensions: tuple[str, ...]  # lower case, with the dot
    checked_at_run_time: bool = False  # decodable only where the installed TensorFlow's decode_image reads it


IMAGE_FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("JPEG", ("JPEG", "MPO"), (".jpg", ".jpeg", ".jpe", ".jfif")),  # MPO: a phone camera's JPEG
    ImageFormat("PNG", ("PNG",), (".png",)),
    ImageFormat("GIF", ("GIF",), (".gif",)),
    ImageFormat("BMP", ("BMP",), (".bmp",)),
    ImageFormat("WebP", ("WEBP",), (".webp",), checked_at_run_time=True),  # newer TF only: probed
)
"""The one list of image formats every reader uses (folder datasets, validate_images, scorers, bottlenecks)."""

SUPPORTED_FORMATS = "/".join(f.name for f in IMAGE_FORMATS)
"""What TensorFlow's ``decode_image`` (and so the exported model) can read, for messages: "JPEG/PNG/GIF/BMP/WebP"."""

IMAGE_EXTENSIONS: tuple[str, ...] = tuple(ext for f in IMAGE_FORMATS for ext in f.extensions)
"""File extensions (lower case) of :data:`IMAGE_FORMATS`: what a folder reader takes as an image."""

_BY_PILLOW_NAME = {pillow: f for f in IMAGE_FORMATS for pillow in f.pillow_names}
_BY_EXTENSION = {ext: f for f in IMAGE_FORMATS for ext in f.extensions}


def format_for_pillow(pillow_name: str | None) -> ImageFormat | None:
    """The table row of a format as Pillow names it (``Image.format``), or None when not in the table."""
    return _BY_PILLOW_NAME.get(str(pillow_name or "").upper())


def format_for_file_name(name: str | Path) -> ImageFormat | None:
    """The table row of a file name's extension (any case), or None when it is not an image extension."""
    return _BY_EXTENSION.get(os.path.splitext(str(name))[1].lower())


def decodable(fmt: ImageFormat) -> bool:
    """Whether the installed TensorFlow decodes this format; asked once, only for formats marked so (loads TF)."""
    if not fmt.checked_at_run_time:
        return True
    from . import images  # the probe decodes a tiny image, so it needs (and loads) the TF runtime

    return images.tf_decodes(fmt.pillow_names[0])


def not_decodable_reason(fmt: ImageFormat) -> str:
    """Why a format in the table is refused here: the installed TensorFlow cannot decode it."""
    from . import images

    return (f"the installed TensorFlow {images.tf_version()} cannot decode {fmt.name} images; convert it "
            "to JPEG or PNG, or upgrade TensorFlow")


class InvalidImageError(ValueError):
    """The bytes are not an image the model can decode (empty, not JPEG/PNG/GIF/BMP/WebP, truncated, corrupt)."""


class ImageTooLargeError(InvalidImageError):
    """The image header declares more pixels than the allowed limit (a decompression-bomb guard)."""


class TruncatedImageError(InvalidImageError):
    """The header is valid but the data ends before the pixels it declares (a cut download, a lying header)."""


class LabelsFileError(ValueError):
    """A labels file is missing, empty or does not match the model's number of outputs."""


EXIF_ORIENTATION_TAG = 0x0112
"""The EXIF tag saying how a photo must be turned to be seen upright (1 = as stored; 2–8: mirror and/or rotate)."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: format (a name of :data:`IMAGE_FORMATS`), width and height in pixels as stored, and
    the EXIF orientation (1–8; 1 when absent) that :func:`workshop_utils.images.orient` applies."""

    format: str
    width: int
    height: int
    orientation: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height


def exif_orientation(image: Any) -> int:
    """The EXIF orientation (1–8) an open Pillow image's header records; 1 when it has none or an invalid one.

    Reads only what Pillow parsed while opening the file (``image.info["exif"]``: a JPEG's APP1, a WebP's or
    PNG's EXIF chunk before the pixels), never ``getexif()``, which decodes a whole PNG to look further.
    """
    from PIL import Image

    raw = image.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
        value = int(exif.get(EXIF_ORIENTATION_TAG, 1))
    except (ValueError, TypeError, SyntaxError, OSError, KeyError, IndexError, struct.error):
        return 1  # an unreadable EXIF block: decoders ignore it, and so does the orientation rule
    return value if 1 <= value <= 8 else 1


def describe_source(name: str | Path | None) -> str:
    """How messages start: ``"image 'car.jpg': "`` when the file name is known, else nothing (None or "")."""
    return f"image {str(name)!r}: " if name is not None and str(name) != "" else ""


def check_image_bytes(
    data: bytes | bytearray | memoryview, name: str | Path | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
    *, complete: bool = False,
) -> ImageInfo:
    """Check untrusted bytes from the header: a JPEG/PNG/GIF/BMP/WebP within ``max_pixels`` (None = no limit).

    Raises :class:`InvalidImageError` (or :class:`ImageTooLargeError`) naming the file. A GIF counts all its
    frames, since TensorFlow decodes every frame before keeping the first. With ``complete`` the body is
    walked too (not decoded): a JPEG or PNG whose data ends before its pixels do raises
    :class:`TruncatedImageError` (what every scorer and the bottleneck pass ask for; the header-only check
    is for a cheap first look, e.g. the web API's before it queues a photo). Other corrupt pixel data is
    caught when TensorFlow decodes it (the scorers turn that into :class:`InvalidImageError` too).
    """
    what = describe_source(name)
    if isinstance(data, str):
        raise TypeError(
            f"{what}got a str, expected the file's bytes; read it with open(path, 'rb').read() "
            "or use predict_file(path)."
        )
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what}expected the image's bytes, got {type(data).__name__}.")
    data = bytes(data)
    if not data:
        raise InvalidImageError(f"{what}the bytes are empty (0 bytes): not a decodable {SUPPORTED_FORMATS} image.")
    return _check_header(io.BytesIO(data), len(data), what, max_pixels, complete)


def check_image_file(
    file: str | os.PathLike | BinaryIO, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | Path | None = None,
    *, complete: bool = False,
) -> ImageInfo:
    """:func:`check_image_bytes` for a file (a path, or a binary file open at its start).

    ``name`` starts the messages (default: the path; "" for none). A missing file raises FileNotFoundError.
    The same limit and checks as the scorers, for readers that decode files themselves (training, validation);
    reads the header only, or with ``complete`` the whole file (JPEG, PNG) to refuse one whose data is cut.
    """
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as fh:
            return check_image_file(fh, max_pixels, name=file if name is None else name, complete=complete)
    what = describe_source(name)
    try:
        size = os.fstat(file.fileno()).st_size
    except (AttributeError, OSError, ValueError):  # an in-memory stream (io.BytesIO): measure it
        size = file.seek(0, os.SEEK_END)
        file.seek(0)
    if size == 0:
        raise InvalidImageError(f"{what}the file is empty (0 bytes): not a decodable {SUPPORTED_FORMATS} image.")
    return _check_header(file, size, what, max_pixels, complete)


def _check_header(stream: BinaryIO, size: int, what: str, max_pixels: int | None, complete: bool) -> ImageInfo:
    """The checks of :func:`check_image_bytes` on a seekable stream at its start (Pillow reads the header only)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit below
            with Image.open(stream) as image:  # reads the header only (a GIF's frames are skipped, not decoded)
                pil_format = image.format or "?"
                width, height = image.size
                frames = int(getattr(image, "n_frames", 1)) if pil_format == "GIF" else 1
                orientation = exif_orientation(image)
                mode = image.mode
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{what}the image is too large to decode safely ({exc}); downscale it.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        stream.seek(0)
        start = stream.read(12)
        riff = webp_missing_data(start, size)
        if riff is not None:
            raise truncated_image(what, riff) from exc
        # Pillow's own text for unknown bytes names an in-memory object address: of no use to a reader.
        detail = "" if isinstance(exc, UnidentifiedImageError) else f" ({exc})"
        raise InvalidImageError(
            f"{what}the bytes ({size} bytes, starting {start[:8]!r}) are not a decodable {SUPPORTED_FORMATS} "
            f"image{detail}. Check that the file is a photo and was fully downloaded."
        ) from exc
    fmt = format_for_pillow(pil_format)
    if fmt is None:
        raise InvalidImageError(
            f"{what}the bytes are a {pil_format} image, not a decodable {SUPPORTED_FORMATS} image; "
            "convert it to JPEG or PNG."
        )
    if not decodable(fmt):
        raise InvalidImageError(f"{what}the bytes are a {fmt.name} image, but {not_decodable_reason(fmt)}.")
    if width < 1 or height < 1:
        raise InvalidImageError(
            f"{what}the header declares a {width}x{height} size: not a decodable {SUPPORTED_FORMATS} image."
        )
    total = width * height * frames
    if max_pixels is not None and total > max_pixels:
        dims = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
        raise ImageTooLargeError(
            f"{what}the image is {dims} = {total / 1e6:.3g} MP, over the limit of {max_pixels / 1e6:g} MP "
            f"(max_pixels={max_pixels}); downscale it or pass a larger max_pixels."
        )
    if fmt.name == "BMP":
        stream.seek(0)
        unsupported, cut = bmp_problem(stream.read(66), size, mode)
        if unsupported is not None:
            raise InvalidImageError(
                f"{what}the bytes are {unsupported}, which TensorFlow's decoder (and so the model) cannot read "
                f"right: it reads {BMP_SUPPORTED}. Convert it to PNG or JPEG, e.g. "
                "PIL.Image.open(path).convert('RGB').save('photo.png')."
            )
        if cut is not None and complete:
            raise truncated_image(what, cut)
    elif complete and fmt.name == "JPEG":
        stream.seek(0)
        problem = jpeg_missing_data(stream.read())
        if problem is not None:
            raise truncated_image(what, problem)
    elif complete and fmt.name == "PNG":
        problem = png_missing_data(stream, size)
        if problem is not None:
            raise truncated_image(what, problem)
    return ImageInfo(fmt.name, width, height, orientation)


def _cut_or_corrupt(what: str, detail: str) -> str:
    return (f"{what}the bytes are not a decodable {SUPPORTED_FORMATS} image (truncated or corrupt: {detail}). "
            "Re-download or re-save the file.")


def truncated_image(what: str, detail: str) -> TruncatedImageError:
    """The error for data that ends before its pixels do; ``what`` is :func:`describe_source`'s prefix."""
    return TruncatedImageError(_cut_or_corrupt(what, detail))


def read_image_file(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> bytes:
    """A file's bytes after :func:`check_image_bytes`; a missing file raises FileNotFoundError naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Image file {str(path)!r} does not exist (or is not a file); check the path.")
    data = path.read_bytes()
    check_image_bytes(data, name=path, max_pixels=max_pixels)
    return data


def tf_decode_reason(exc: BaseException) -> str:
    """The useful first line of a TensorFlow decode error (without its ``{{function_node …}}`` noise)."""
    text = getattr(exc, "message", None) or str(exc)
    if "}}" in text:
        text = text.split("}}", 1)[1]
    text = text.split("\n", 1)[0].split(" [[", 1)[0].strip()
    return text or type(exc).__name__


def undecodable(name: str | Path | None, exc: BaseException, batch_size: int = 1) -> InvalidImageError:
    """The InvalidImageError for bytes whose header looked fine but TensorFlow could not decode."""
    if batch_size == 1:
        what = describe_source(name)
    else:
        what = f"one of {batch_size} images (score them one by one to find it): "
    return InvalidImageError(_cut_or_corrupt(what, tf_decode_reason(exc)))


def load_labels(labels: str | Path | Iterable[str]) -> list[str]:
    """Class names from a list or a ``labels.txt`` path (one per line, UTF-8, blank lines ignored)."""
    if isinstance(labels, (str, Path)):
        path = Path(labels).expanduser()
        if not path.is_file():
            raise LabelsFileError(
                f"Labels file {str(path)!r} does not exist; pass the labels as a list or the path of a labels.txt."
            )
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        if not names:
            raise LabelsFileError(f"Labels file {str(path)!r} is empty; it needs one class name per line.")
        return names
    names = [str(n) for n in labels]
    if not names:
        raise LabelsFileError("The labels list is empty; pass one class name per model output.")
    return names


def write_labels(names: Iterable[str], path: str | Path) -> Path:
    """Write class names one per line (UTF-8), the format :func:`load_labels` and ML.NET samples read."""
    path = Path(path)
    names = [str(n) for n in names]
    bad = [n for n in names if not n or "\n" in n or "\r" in n or n != n.strip()]
    if bad:
        raise LabelsFileError(
            f"Class names {bad!r} cannot be written one per line; rename them (no line breaks or outer spaces)."
        )
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Prediction:
    """One image's result: the top label, its probability and every class's score (same order as the model)."""

    label: str
    probability: float
    scores: Mapping[str, float] = field(repr=False)
    source: str | None = None  # the file name, when scored from a file

    @classmethod
    def from_scores(cls, scores: Iterable[float], labels: list[str], source: str | Path | None = None) -> "Prediction":
        """Build from one row of probabilities; ties go to the lower class index (like ``argmax``)."""
        values = [float(s) for s in scores]
        if len(values) != len(labels):
            raise LabelsFileError(
                f"The model returned {len(values)} scores but there are {len(labels)} labels; "
                "use the labels file exported with this model."
            )
        best = max(range(len(values)), key=lambda i: (values[i], -i))
        return cls(labels[best], values[best], dict(zip(labels, values)), None if source is None else str(source))

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The k most likely classes with their probabilities, best first."""
        return sorted(self.scores.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (for ``--json`` output and web responses)."""
        return {
            "source": self.source, "label": self.label, "probability": self.probability, "scores": dict(self.scores)
        }

    def __str__(self) -> str:
        head = f"{self.source}: " if self.source else ""
        others = ", ".join(f"{name} {p:.1%}" for name, p in self.top(3)[1:] if not math.isnan(p))
        return f"{head}{self.label} ({self.probability:.1%})" + (f"   next: {others}" if others else "")

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td style='text-align:right'>{p:.1%}</td></tr>"
            for name, p in self.top(len(self.scores))
        )
        title = html.escape(f"{self.source}: ") if self.source else ""
        return f"<b>{title}{html.escape(self.label)}</b> ({self.probability:.1%})<table>{rows}</table>"


class UnscoredImagesWarning(UserWarning):
    """Some rows of a frame could not be scored; their ``error`` column says why."""


def score_frame(
    df: "pandas.DataFrame",  # noqa: F821
    predict_proba: Any,
    labels: list[str],
    *,
    path_column: str = "image_path",
    batch_size: int = 32,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> "pandas.DataFrame":  # noqa: F821
    """Score each row's image file in batches; bad images are reported per row, never dropped silently.

    Returns a copy of ``df`` (same index and columns) plus ``predicted`` (label or None), ``probability``,
    one ``score_<class>`` column per class, and ``error`` (None, or why the row could not be scored: missing
    file, not a JPEG/PNG/GIF/BMP/WebP image, too large, truncated). A warning counts the failed rows.
    ``predict_proba(list_of_bytes, names)`` returns an (N, C) array and raises InvalidImageError on bad images.
    """
    import numpy as np
    import pandas as pd

    if path_column not in df.columns:
        raise KeyError(f"The frame has no {path_column!r} column (columns: {list(df.columns)}); pass path_column=...")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    paths = [str(p) for p in df[path_column].tolist()]
    n, width = len(paths), len(labels)
    scores = np.full((n, width), np.nan)
    errors: list[str | None] = [None] * n
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="Scoring", unit="batch")
    for start in starts:
        rows, blobs = [], []
        for i in range(start, min(n, start + batch_size)):
            try:
                blobs.append(read_image_file(paths[i], max_pixels=max_pixels))
                rows.append(i)
            except (OSError, InvalidImageError) as exc:
                errors[i] = str(exc)
        if not rows:
            continue
        try:
            scores[rows] = predict_proba(blobs, [paths[i] for i in rows])
        except InvalidImageError:  # one bad image fails its whole batch: find it by scoring one by one
            for i, data in zip(rows, blobs):
                try:
                    scores[i] = predict_proba([data], [paths[i]])[0]
                except InvalidImageError as exc:
                    errors[i] = str(exc)
    ok = np.array([e is None for e in errors], dtype=bool)
    best = np.argmax(np.nan_to_num(scores, nan=-np.inf), axis=1) if width else np.zeros(n, dtype=int)
    out = df.copy()
    predicted = [labels[b] if good else None for b, good in zip(best, ok)]
    out["predicted"] = pd.Series(predicted, index=df.index, dtype=object)
    out["probability"] = np.where(ok, scores[np.arange(n), best] if n else np.array([]), np.nan)
    for j, name in enumerate(labels):
        out[f"score_{name}"] = scores[:, j]
    out["error"] = pd.Series(errors, index=df.index, dtype=object)
    failed = int((~ok).sum())
    if failed:
        first = next(e for e in errors if e is not None)
        warnings.warn(
            f"{failed} of {n} images could not be scored (first: {first}); see the 'error' column.",
            UnscoredImagesWarning,
            stacklevel=3,  # the caller of predict_frame
        )
    return out


class ImageScorer:
    """What every scorer offers on top of its own ``predict_proba``: one image's bytes, a file, a frame.

    Subclasses set ``labels`` (class names, or None when unknown) and ``max_pixels``.
    """

    labels: list[str] | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def predict_proba(self, images: Any, names: Any = None) -> Any:  # (N, C) probabilities
        raise NotImplementedError

    def _labels_for(self, width: int) -> list[str]:
        return self.labels if self.labels is not None else [f"class_{i}" for i in range(width)]

    def predict_bytes(self, data: bytes, name: str | Path | None = None) -> Prediction:
        """Score one encoded image (e.g. an upload); ``name`` only labels messages and the result."""
        scores = self.predict_proba([data], [name])[0]
        return Prediction.from_scores(scores, self._labels_for(len(scores)), source=name)

    def predict_file(self, path: str | Path) -> Prediction:
        """Score one image file."""
        return self.predict_bytes(read_image_file(path, max_pixels=self.max_pixels), name=path)

    def predict_frame(
        self,
        df: Any,  # pandas.DataFrame
        path_column: str = "image_path",
        batch_size: int = 32,
        progress: bool = False,
    ) -> Any:  # pandas.DataFrame
        """Score every row's image file in batches.

        Returns a copy of ``df`` plus ``predicted``, ``probability``, ``score_<class>`` columns and ``error``:
        bad images stay in the frame with predicted=None, probability NaN and the reason in ``error``
        (an UnscoredImagesWarning counts them), so row order and index always match the input.
        """
        if self.labels is None:
            raise LabelsFileError("predict_frame needs labels; pass labels=[...] or a labels.txt path.")
        return score_frame(df, self.predict_proba, self.labels, path_column=path_column, batch_size=batch_size,
                           max_pixels=self.max_pixels, progress=progress)
