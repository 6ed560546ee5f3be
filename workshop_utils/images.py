"""Image decoding shared by the bottleneck pipeline and the exported end-to-end model.

One function, so the features a head is trained on and the pixels the saved model sees at serving
time are produced by exactly the same operations. Also what the installed TensorFlow can decode
(asked at run time, once per format), which :mod:`workshop_utils.predictions`' format table consults.
"""
from __future__ import annotations

import functools
import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .config import import_tensorflow
from .predictions import SUPPORTED_FORMATS  # noqa: F401  (what decode_image reads, re-exported)

tf = import_tensorflow()


def decode_image(contents: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Encoded bytes (scalar string tensor) -> float32 RGB 0–255 of shape (H, W, 3), bilinear resize.

    Grayscale becomes 3 channels, alpha is dropped, an animated GIF gives its first frame. The resize is
    antialiased: shrinking a phone photo to 224 pixels otherwise aliases fine detail (scratches, cracks),
    and the EfficientNet-Lite0 port matches its reference ImageNet predictions only with it.
    """
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    image.set_shape((image_size[0], image_size[1], 3))
    return image


def tf_version() -> str:
    """The installed TensorFlow's version string (for messages about what it can decode)."""
    return str(tf.__version__)


@functools.lru_cache(maxsize=None)
def tf_decodes(pillow_format: str) -> bool:
    """Whether this TensorFlow's ``decode_image`` reads a format (Pillow's name, e.g. "WEBP"): decode a tiny one.

    Decided by trying, not by version numbers: a 4×4 image written by Pillow must decode to the right size
    and colour. False when Pillow cannot write the format either (then it cannot be identified anyway).
    """
    from PIL import Image

    buffer = io.BytesIO()
    try:
        Image.new("RGB", (4, 4), (200, 30, 60)).save(buffer, format=pillow_format, lossless=True)
    except (KeyError, OSError, ValueError):
        return False
    try:
        with quiet_native_stderr():
            pixels = tf.io.decode_image(buffer.getvalue(), channels=3, expand_animations=False).numpy()
    except (tf.errors.OpError, ValueError):
        return False
    return pixels.shape == (4, 4, 3) and abs(int(pixels[0, 0, 0]) - 200) <= 8


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what C libraries print on file descriptor 2 meanwhile (libjpeg's "Improper call to JPEG library").

    Python's own ``sys.stderr`` is flushed first; use it only around a short native call (a single decode),
    since anything else written to the process's stderr meanwhile is dropped too.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (some embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
