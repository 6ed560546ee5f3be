"""Does an image file hold every pixel its header declares? Walked from the bytes, never decoded (no TensorFlow).

A valid header over a cut body is what a broken download or a lying file looks like; libjpeg fills the
missing part of a JPEG with grey when an end marker follows, and TensorFlow then scores filler pixels.
:func:`workshop_utils.predictions.check_image_bytes` (``complete=True``) turns these reasons into errors.
Also which BMPs TensorFlow's decoder reads right.
"""
from __future__ import annotations

import re
from typing import BinaryIO

_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0–SOF15 (C4 DHT, C8 JPG, CC DAC are not)
_JPEG_DCT_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC9, 0xCA})  # baseline, extended, progressive; Huffman or arithmetic
_JPEG_HUFFMAN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})  # every block's DC coefficient costs at least one bit
_JPEG_SCAN_END = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")  # a marker: not stuffing (FF 00), a restart or fill
_JPEG_RESTART = re.compile(rb"\xff[\xd0-\xd7]")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def jpeg_missing_data(data: bytes) -> str | None:
    """Why a JPEG's data cannot hold every pixel its header declares, or None when it can. No decoding.

    Walks the segments and the compressed scans to the end-of-image marker (the first one: an MPO's second
    picture is not needed). Refused: no end marker (a cut download); a colour component without a scan;
    fewer restart markers than the scan's blocks need; and, for Huffman-coded JPEGs, fewer bytes of
    compressed data than one bit per 8×8 block (every block codes its DC value with at least one bit).
    A cut body with an end marker appended (libjpeg fills the rest with grey, and TensorFlow accepts it)
    is caught by the last two when the file has restart markers (cameras often write them) or holds less
    than that bound; any other such cut only a full decode can tell. Cost: one scan of the bytes for
    markers (about 2 ms per MB), a small part of decoding.
    """
    n, pos = len(data), 2
    frame: tuple[int, int, int, dict[int, tuple[int, int]]] | None = None
    restart = entropy = scans = 0
    scanned: set[int] = set()
    stops = f"the data stops after {n:,} bytes, before the JPEG end-of-image marker"
    while True:
        pos = data.find(b"\xff", pos)  # the next marker (libjpeg skips stray bytes before one too)
        if pos < 0:
            return stops
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            return stops
        marker = data[pos]
        pos += 1
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
            segment = data[pos:end.start()]
            pos = end.start()
            scans += 1
            entropy += len(segment)
            if frame is None or not body:
                return None  # a scan before the frame header: the decoder says what is wrong
            ids = [body[1 + 2 * i] for i in range(body[0]) if 1 + 2 * i < len(body)]
            scanned.update(ids)
            if restart and frame[0] in _JPEG_DCT_FRAMES and frame[1] > 0:
                mcus = _jpeg_scan_mcus(frame, ids)
                expected, found = _ceil_div(mcus, restart) - 1, len(_JPEG_RESTART.findall(segment))
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
        blocks = sum(_ceil_div(c, 8) * _ceil_div(r, 8) for c, r in _jpeg_component_sizes(frame))
        need = _ceil_div(blocks, 8)
        if entropy < need:
            return (f"the header declares {width}x{height} pixels, whose {blocks:,} blocks take at least {need:,} "
                    f"bytes of compressed data, but the file holds {entropy:,}")
    return None


def _jpeg_component_sizes(frame: tuple[int, int, int, dict[int, tuple[int, int]]]) -> list[tuple[int, int]]:
    """Each colour component's size in samples (columns, rows), after chroma subsampling."""
    _, height, width, sampling = frame
    hmax, vmax = max(h for h, _ in sampling.values()), max(v for _, v in sampling.values())
    return [(_ceil_div(width * h, hmax), _ceil_div(height * v, vmax)) for h, v in sampling.values()]


def _jpeg_scan_mcus(frame: tuple[int, int, int, dict[int, tuple[int, int]]], ids: list[int]) -> int:
    """How many MCUs (the units restart intervals count) a scan of components ``ids`` codes."""
    _, height, width, sampling = frame
    if len(ids) == 1 and ids[0] in sampling:  # non-interleaved: one block per MCU
        columns, rows = _jpeg_component_sizes(frame)[list(sampling).index(ids[0])]
        return _ceil_div(columns, 8) * _ceil_div(rows, 8)
    hmax, vmax = max(h for h, _ in sampling.values()), max(v for _, v in sampling.values())
    return _ceil_div(width, 8 * hmax) * _ceil_div(height, 8 * vmax)


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


def webp_missing_data(start: bytes, size: int) -> str | None:
    """For bytes Pillow could not open: a WebP whose RIFF header declares more bytes than there are, else None."""
    if len(start) < 12 or start[:4] != b"RIFF" or start[8:12] != b"WEBP":
        return None
    declared = int.from_bytes(start[4:8], "little") + 8
    return None if declared <= size else f"its RIFF header declares {declared:,} bytes but there are {size:,}"


BMP_SUPPORTED = "uncompressed 24- and 32-bit BMPs and 8-bit grayscale ones"
"""The BMPs TensorFlow's decoder reads right: it takes the pixel bytes as they are (no palette, no RLE)."""


def bmp_problem(header: bytes, size: int, mode: str) -> tuple[str | None, str | None]:
    """(why TensorFlow cannot read this BMP right, why its data is cut), each None when fine.

    ``header``: the file's first 66 bytes; ``mode``: Pillow's (an 8-bit BMP is grayscale only as "L").
    TensorFlow reads the pixel bytes as they are and wants exactly the size the header declares.
    """
    if len(header) < 34:
        return None, f"the data stops after {size:,} bytes, inside the BMP header"
    offset, dib = int.from_bytes(header[10:14], "little"), int.from_bytes(header[14:18], "little")
    if dib < 40:
        return "an OS/2 BMP (a 12-byte header)", None
    width = int.from_bytes(header[18:22], "little", signed=True)
    height = abs(int.from_bytes(header[22:26], "little", signed=True))
    bits, compression = int.from_bytes(header[28:30], "little"), int.from_bytes(header[30:34], "little")
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
