"""Images that test the readers' rules (no TensorFlow): phone photos stored on their side with an EXIF
orientation, and images whose header lies about how much data follows. Shared by several test modules."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112
# How a camera stores an upright picture for each orientation: the inverse of what Pillow's exif_transpose does.
STORED_AS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def asymmetric_photo(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """An upright RGB picture that no turn or mirror maps onto itself: a bright block top left, a red bar at the
    bottom, a horizontal gradient, mild noise. Sides are multiples of 16, so JPEG blocks line up when turned."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 120, width)[None, :, None]
    photo = np.broadcast_to(x + 40, (height, width, 3)).astype(np.float64)
    photo = photo + rng.normal(0, 4, photo.shape)
    photo[: height // 3, : width // 4] = 250
    photo[-height // 6:, width // 3:] = (230, 30, 30)
    return np.clip(photo, 0, 255).astype(np.uint8)


def jpeg(photo: np.ndarray, orientation: int | None = None, **options) -> bytes:
    """Encode ``photo`` (upright) as a camera would: stored turned for ``orientation`` (3, 6, 8) with the EXIF tag
    saying how to turn it back. None: stored upright, no EXIF."""
    image = Image.fromarray(photo)
    if orientation is not None:
        image = image.transpose(STORED_AS[orientation])
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **options)
    return buffer.getvalue()


def lying_jpeg(width: int = 1000, height: int = 30000, stored_height: int = 128) -> bytes:
    """A JPEG whose frame header claims width x height but whose data holds only ``stored_height`` rows (about
    2 kB), then a proper end marker: libjpeg fills the rest with grey, and TensorFlow decodes it without a word."""
    small = Image.new("RGB", (width, stored_height), (120, 120, 120))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")  # SOF0: FF C0, length (2), precision (1), height (2), width (2)
    data[frame + 5:frame + 7] = height.to_bytes(2, "big")
    return bytes(data)


def bmp(mode: str, size: tuple[int, int] = (40, 30)) -> bytes:
    """A BMP as Pillow writes it: "1" is 1-bit, "P" 8-bit with a colour palette, "L" 8-bit grey, "RGB" 24-bit."""
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    image = image.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="BMP")
    return buffer.getvalue()
