"""The one image-format table and the checks of untrusted images: header, pixel limit, data cut short. Pillow
only, no TensorFlow, so a command line or web handler checks uploads without loading it (only WebP asks
:func:`workshop_utils.core.runtime.tf_decodes`, once). Every reader and scorer uses these checks."""
from __future__ import annotations

import io
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, UnidentifiedImageError

from workshop_utils.core import runtime
from workshop_utils.core.errors import ImageTooLargeError, InvalidImageError

DEFAULT_MAX_PIXELS = 40_000_000  # largest width × height accepted by default (40 MP), read from the header
EXIF_ORIENTATION_TAG = 0x0112  # how to turn a photo upright: 1 = as stored, 2–8 = mirror and/or rotate
BMP_SUPPORTED = "uncompressed 24- and 32-bit BMPs and 8-bit grayscale ones"  # TF reads pixel bytes as they are


@dataclass(frozen=True)
class ImageFormat:
    """One row of :data:`IMAGE_FORMATS`: the name messages use, Pillow's names for it, its file extensions."""

    name: str
    pillow_names: tuple[str, ...]
    extensions: tuple[str, ...]  # lower case, with the dot
    checked_at_run_time: bool = False  # decodable only where the installed TensorFlow's decode_image reads it


IMAGE_FORMATS: tuple[ImageFormat, ...] = (  # the one list every reader uses (folders, checks, scorers, bottlenecks)
    ImageFormat("JPEG", ("JPEG", "MPO"), (".jpg", ".jpeg", ".jpe", ".jfif")),  # MPO: a phone camera's JPEG
    ImageFormat("PNG", ("PNG",), (".png",)),
    ImageFormat("GIF", ("GIF",), (".gif",)),
    ImageFormat("BMP", ("BMP",), (".bmp",)),
    ImageFormat("WebP", ("WEBP",), (".webp",), checked_at_run_time=True),  # newer TF only: probed
)
SUPPORTED_FORMATS = "/".join(f.name for f in IMAGE_FORMATS)  # for messages: "JPEG/PNG/GIF/BMP/WebP"
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(ext for f in IMAGE_FORMATS for ext in f.extensions)  # lower case
_BY_PILLOW_NAME = {pillow: f for f in IMAGE_FORMATS for pillow in f.pillow_names}
_BY_EXTENSION = {ext: f for f in IMAGE_FORMATS for ext in f.extensions}


def format_for_pillow(pillow_name: str | None) -> ImageFormat | None:
    return _BY_PILLOW_NAME.get(str(pillow_name or "").upper())


def format_for_file_name(name: str | Path) -> ImageFormat | None:
    return _BY_EXTENSION.get(os.path.splitext(str(name))[1].lower())


def not_decodable_reason(fmt: ImageFormat) -> str | None:
    """Why the installed TensorFlow cannot decode a format of the table (asked once, loading TF), or None."""
    if not fmt.checked_at_run_time or runtime.tf_decodes(fmt.pillow_names[0]):
        return None
    return (f"the installed TensorFlow {runtime.tf_version()} cannot decode {fmt.name} images; "
            "convert it to JPEG or PNG, or upgrade TensorFlow")


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: format (an :data:`IMAGE_FORMATS` name), stored size, EXIF orientation (1–8; 1: none)."""

    format: str
    width: int
    height: int
    orientation: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height


def exif_orientation(image: Any) -> int:
    """The EXIF orientation (1–8) in an open Pillow image's header, else 1: only what Pillow parsed while opening
    (``image.info["exif"]``), never ``getexif()``, which decodes a whole PNG to look further."""
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


def check_image_bytes(data: bytes | bytearray | memoryview, name: str | Path | None = None,
                      max_pixels: int | None = DEFAULT_MAX_PIXELS, *, complete: bool = False) -> ImageInfo:
    """Check untrusted bytes: a JPEG/PNG/GIF/BMP/WebP within ``max_pixels`` (None: no limit; a GIF counts every
    frame), else InvalidImageError/ImageTooLargeError naming the file. Reads the header; ``complete`` (scorers,
    bottlenecks) also walks a JPEG's or PNG's body, undecoded, to refuse data cut short."""
    what = describe_source(name)
    if isinstance(data, str):
        raise TypeError(f"{what}got a str, expected the file's bytes; read it with open(path, 'rb').read() "
                        "or use predict_file(path).")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what}expected the image's bytes, got {type(data).__name__}.")
    data = bytes(data)
    if not data:
        raise InvalidImageError(f"{what}the bytes are empty (0 bytes): not a decodable {SUPPORTED_FORMATS} image.")
    return _check_header(io.BytesIO(data), len(data), what, max_pixels, complete)


def check_image_file(file: str | os.PathLike | BinaryIO, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     name: str | Path | None = None, *, complete: bool = False) -> ImageInfo:
    """:func:`check_image_bytes` for a path or a binary file open at its start, for readers that decode files
    themselves; ``name`` starts messages (default: the path; "" for none). A missing file: FileNotFoundError."""
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as fh:
            return check_image_file(fh, max_pixels, name=file if name is None else name, complete=complete)
    what = describe_source(name)
    size = file.seek(0, os.SEEK_END)  # a file on disk or in memory (io.BytesIO) alike
    file.seek(0)
    if size == 0:
        raise InvalidImageError(f"{what}the file is empty (0 bytes): not a decodable {SUPPORTED_FORMATS} image.")
    return _check_header(file, size, what, max_pixels, complete)


def _check_header(stream: BinaryIO, size: int, what: str, max_pixels: int | None, complete: bool) -> ImageInfo:
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
        declared = int.from_bytes(start[4:8], "little") + 8  # a WebP's RIFF header declares its size
        if start[:4] == b"RIFF" and start[8:12] == b"WEBP" and declared > size:
            raise truncated_image(what, f"its RIFF header declares {declared:,} bytes but there are {size:,}") from exc
        # Pillow's own text for unknown bytes names an in-memory object address: of no use to a reader.
        detail = "" if isinstance(exc, UnidentifiedImageError) else f" ({exc})"
        raise InvalidImageError(f"{what}the bytes ({size} bytes, starting {start[:8]!r}) are not a decodable "
                                f"{SUPPORTED_FORMATS} image{detail}. Check that the file is a photo and was fully "
                                "downloaded.") from exc
    fmt = format_for_pillow(pil_format)
    if fmt is None:
        raise InvalidImageError(f"{what}the bytes are a {pil_format} image, not a decodable {SUPPORTED_FORMATS} "
                                "image; convert it to JPEG or PNG.")
    if reason := not_decodable_reason(fmt):
        raise InvalidImageError(f"{what}the bytes are a {fmt.name} image, but {reason}.")
    if width < 1 or height < 1:
        raise InvalidImageError(f"{what}the header declares a {width}x{height} size: not a decodable "
                                f"{SUPPORTED_FORMATS} image.")
    total = width * height * frames
    if max_pixels is not None and total > max_pixels:
        dims = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
        raise ImageTooLargeError(f"{what}the image is {dims} = {total / 1e6:.3g} MP, over the limit of "
                                 f"{max_pixels / 1e6:g} MP (max_pixels={max_pixels}); downscale it or pass a larger "
                                 "max_pixels.")
    problem = None
    if fmt.name == "BMP":
        stream.seek(0)
        unsupported, problem = bmp_problem(stream.read(66), size, mode)
        if unsupported is not None:
            raise InvalidImageError(f"{what}the bytes are {unsupported}, which TensorFlow's decoder (and so the model) "
                                    f"cannot read right: it reads {BMP_SUPPORTED}. Convert it to PNG or JPEG, e.g. "
                                    "PIL.Image.open(path).convert('RGB').save('photo.png').")
    elif complete and fmt.name == "JPEG":
        stream.seek(0)
        problem = jpeg_missing_data(stream.read())
    elif complete and fmt.name == "PNG":
        problem = png_missing_data(stream, size)
    if complete and problem is not None:
        raise truncated_image(what, problem)
    return ImageInfo(fmt.name, width, height, orientation)


def truncated_image(what: str, detail: str) -> InvalidImageError:
    """The error for data that ends before its pixels do (or is corrupt); ``what``: :func:`describe_source`'s."""
    return InvalidImageError(f"{what}the bytes are not a decodable {SUPPORTED_FORMATS} image (truncated or corrupt: "
                             f"{detail}). Re-download or re-save the file.")


def read_image_file(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> bytes:
    """A file's bytes after :func:`check_image_bytes`; a missing file raises FileNotFoundError naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Image file {str(path)!r} does not exist (or is not a file); check the path.")
    data = path.read_bytes()
    check_image_bytes(data, name=path, max_pixels=max_pixels)
    return data


def undecodable(name: str | Path | None, exc: BaseException, batch_size: int = 1) -> InvalidImageError:
    """The InvalidImageError for bytes whose header looked fine but TensorFlow could not decode."""
    text = getattr(exc, "message", None) or str(exc)  # TF's first line, without its {{function_node …}} noise
    text = text.split("}}", 1)[-1].split("\n", 1)[0].split(" [[", 1)[0].strip()
    what = (describe_source(name) if batch_size == 1
            else f"one of {batch_size} images (score them one by one to find it): ")
    return truncated_image(what, text or type(exc).__name__)


_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0–SOF15 (C4 DHT, C8 JPG, CC DAC are not)
_JPEG_DCT_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC9, 0xCA})  # baseline, extended, progressive; Huffman or arithmetic
_JPEG_HUFFMAN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})  # every block's DC coefficient costs at least one bit
_JPEG_SCAN_END = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")  # a marker: not stuffing (FF 00), a restart or fill
_JPEG_RESTART = re.compile(rb"\xff[\xd0-\xd7]")
_JPEG_MARKER = re.compile(rb"\xff+([\x00-\xfe])")  # fill bytes (FF) then the marker's code


def jpeg_missing_data(data: bytes) -> str | None:
    """Why a JPEG's data cannot hold every pixel its header declares, or None. Walks segments and scans (no
    decoding, ~2 ms/MB) to the first end marker: refused when there is none, a colour component has no scan,
    restart markers are fewer than the blocks need, or (Huffman) there is less than one bit per 8×8 block.
    The last two catch a cut body with an end marker appended, which libjpeg fills with grey."""
    n, pos = len(data), 2
    frame: tuple[int, int, int, dict[int, tuple[int, int]]] | None = None
    restart = entropy = scans = 0
    scanned: set[int] = set()
    stops = f"the data stops after {n:,} bytes, before the JPEG end-of-image marker"
    while True:
        found = _JPEG_MARKER.search(data, pos)  # the next marker (libjpeg skips stray bytes before one too)
        if found is None:
            return stops
        marker, pos = found.group(1)[0], found.end()
        if marker == 0xD9:
            break
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD8:  # no length: stuffing, TEM, RSTn, SOI
            continue
        length = int.from_bytes(data[pos:pos + 2], "big")
        if pos + 2 > n or length < 2 or pos + length > n:
            return f"the data stops inside a header segment (marker 0x{marker:02X}), before the pixels"
        body = data[pos + 2:pos + length]
        pos += length
        if marker in _JPEG_FRAMES and frame is None:
            count = body[5] if len(body) > 5 else 0
            if len(body) < 6 + 3 * count or count == 0:
                return None  # a broken frame header: the decoder says what is wrong
            sampling = {body[6 + 3 * i]: (body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(count)}
            if not all(1 <= h <= 4 and 1 <= v <= 4 for h, v in sampling.values()):
                return None
            frame = (marker, int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), sampling)
        elif marker == 0xDD and len(body) >= 2:
            restart = int.from_bytes(body[:2], "big")
        elif marker == 0xDA:
            end = _JPEG_SCAN_END.search(data, pos)
            if end is None:
                return stops
            segment, pos = data[pos:end.start()], end.start()
            scans, entropy = scans + 1, entropy + len(segment)
            if frame is None or not body:
                return None  # a scan before the frame header: the decoder says what is wrong
            ids = [body[1 + 2 * i] for i in range(body[0]) if 1 + 2 * i < len(body)]
            scanned.update(ids)
            if restart and frame[0] in _JPEG_DCT_FRAMES and frame[1] > 0:
                mcus = _jpeg_scan_mcus(frame, ids)
                expected, found = math.ceil(mcus / restart) - 1, len(_JPEG_RESTART.findall(segment))
                if found < expected:
                    return (f"scan {scans} of the {frame[2]}x{frame[1]} picture holds {found} of the {expected} "
                            f"restart markers its {mcus:,} coding units need: its data stops early")
    if frame is None:
        return None  # no frame header: Pillow has refused it already
    marker, height, width, sampling = frame
    if not scans:
        return "the JPEG holds no compressed pixel data (no scan before its end marker)"
    missing = sorted(set(sampling) - scanned)
    if missing and marker in _JPEG_DCT_FRAMES:
        return f"colour component {missing[0]} of the {width}x{height} picture has no data"
    if marker in _JPEG_HUFFMAN_FRAMES and height > 0:
        blocks = sum(math.ceil(c / 8) * math.ceil(r / 8) for c, r in _jpeg_component_sizes(frame))
        need = math.ceil(blocks / 8)
        if entropy < need:
            return (f"the header declares {width}x{height} pixels, whose {blocks:,} blocks take at least {need:,} "
                    f"bytes of compressed data, but the file holds {entropy:,}")
    return None


def _jpeg_component_sizes(frame: tuple[int, int, int, dict[int, tuple[int, int]]]) -> list[tuple[int, int]]:
    """Each colour component's size in samples (columns, rows), after chroma subsampling."""
    _, height, width, sampling = frame
    hmax, vmax = max(h for h, _ in sampling.values()), max(v for _, v in sampling.values())
    return [(math.ceil(width * h / hmax), math.ceil(height * v / vmax)) for h, v in sampling.values()]


def _jpeg_scan_mcus(frame: tuple[int, int, int, dict[int, tuple[int, int]]], ids: list[int]) -> int:
    """How many MCUs (the units restart intervals count) a scan of components ``ids`` codes."""
    _, height, width, sampling = frame
    if len(ids) == 1 and ids[0] in sampling:  # non-interleaved: one block per MCU
        columns, rows = _jpeg_component_sizes(frame)[list(sampling).index(ids[0])]
        return math.ceil(columns / 8) * math.ceil(rows / 8)
    hmax, vmax = max(h for h, _ in sampling.values()), max(v for _, v in sampling.values())
    return math.ceil(width / (8 * hmax)) * math.ceil(height / (8 * vmax))


def png_missing_data(stream: BinaryIO, size: int) -> str | None:
    """Why a PNG's chunks stop before its IEND end chunk, or None: walks the chunk lengths (no decompression)."""
    pos = 8
    while True:
        stream.seek(pos)
        head = stream.read(8)
        if len(head) < 8:
            return f"the data stops after {size:,} bytes, before the PNG's IEND end chunk"
        end = pos + 12 + int.from_bytes(head[:4], "big")
        kind = head[4:8].decode("latin-1")
        if end > size:
            return (f"the data stops inside the PNG's {kind!r} chunk ({size:,} of the {end:,} bytes it needs), "
                    "before its IEND end chunk")
        if kind == "IEND":
            return None
        pos = end


def bmp_problem(header: bytes, size: int, mode: str) -> tuple[str | None, str | None]:
    """(why TensorFlow, which takes the pixel bytes as they are and wants the declared size, cannot read this BMP
    right; why its data is cut), each None when fine. ``header``: the first 66 bytes; ``mode``: Pillow's."""
    if len(header) < 34:
        return None, f"the data stops after {size:,} bytes, inside the BMP header"
    offset, dib, width, height, _, bits, compression = struct.unpack_from("<IIiiHHI", header, 10)
    if dib < 40:
        return "an OS/2 BMP (a 12-byte header)", None
    height = abs(height)
    masks = tuple(int.from_bytes(header[54 + 4 * i:58 + 4 * i], "little") for i in range(3))
    if compression == 3 and not (bits == 32 and masks == (0xFF0000, 0xFF00, 0xFF)):
        return f"a {bits}-bit BMP with its own colour masks", None
    if compression not in (0, 3):
        return {1: "an RLE-compressed 8-bit BMP", 2: "an RLE-compressed 4-bit BMP", 4: "a BMP holding a JPEG",
                5: "a BMP holding a PNG"}.get(compression, f"a BMP compressed with method {compression}"), None
    if bits not in (8, 24, 32):
        return f"a {bits}-bit BMP" + {1: " (black and white)", 4: " with a colour palette"}.get(bits, ""), None
    if bits == 8 and mode != "L":
        return "an 8-bit BMP with a colour palette (TensorFlow would read its colour numbers as grey levels)", None
    need = offset + (bits * width + 31) // 32 * 4 * height
    if size > need:
        return (f"a BMP with {size - need:,} bytes after its {width}x{height} pixels (TensorFlow's decoder wants "
                "the exact size)"), None
    if size < need:
        return None, (f"the header declares {width}x{height} pixels at {bits} bits, {need:,} bytes, but the file "
                      f"holds {size:,}")
    return None, None
