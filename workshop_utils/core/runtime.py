"""TensorFlow at run time: import it quietly, ask what it can decode, silence native stderr around a call."""
from __future__ import annotations

import functools
import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image


def import_tensorflow():
    """Import TensorFlow (and Keras) without its start-up banner: TF 2.21 writes oneDNN/CUDA notices straight to
    file descriptor 2 before ``TF_CPP_MIN_LOG_LEVEL`` applies, so fd 2 goes to /dev/null for the import only."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        with quiet_native_stderr():  # importing is this function's job: TF loads only where a module asks for it
            import keras  # noqa: F401  (imports TensorFlow as its backend)
            import tensorflow  # noqa: F401
    import absl.logging  # comes with TensorFlow, loaded by it

    absl.logging.set_verbosity(absl.logging.ERROR)
    sys.modules["tensorflow"].get_logger().setLevel("ERROR")
    return sys.modules["tensorflow"]


def import_keras():  # Keras 3, quietly: for modules that load it only when a function needs it
    import_tensorflow()
    return sys.modules["keras"]


def tf_version() -> str:  # for messages about what TensorFlow decodes (loads it)
    return str(import_tensorflow().__version__)


def in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


@functools.lru_cache(maxsize=None)
def tf_decodes(pillow_format: str) -> bool:
    """Whether this TensorFlow's ``decode_image`` reads a format (Pillow's name, e.g. "WEBP"), found by decoding
    a 4×4 image Pillow writes (not by version numbers); False when Pillow cannot write it either."""
    buffer = io.BytesIO()
    try:
        Image.new("RGB", (4, 4), (200, 30, 60)).save(buffer, format=pillow_format, lossless=True)
    except (KeyError, OSError, ValueError):
        return False
    tf = import_tensorflow()
    try:
        with quiet_native_stderr():
            pixels = tf.io.decode_image(buffer.getvalue(), channels=3, expand_animations=False).numpy()
    except (tf.errors.OpError, ValueError):
        return False
    return pixels.shape == (4, 4, 3) and abs(int(pixels[0, 0, 0]) - 200) <= 8


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what C libraries print on fd 2 meanwhile (libjpeg's "Improper call to JPEG library"); only around
    a short native call (one decode), since anything else written to the process's stderr is dropped too."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (some embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)  # fd 2 keeps /dev/null open after devnull closes
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
