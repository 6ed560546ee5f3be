"""TensorFlow at run time: import it quietly, ask what it can decode, silence native stderr around a call."""
from __future__ import annotations

import functools
import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ and Python log noise; call before ``import tensorflow``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        sys.modules["tensorflow"].get_logger().setLevel("ERROR")
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # absl comes with TensorFlow; without it there is nothing to quiet
        pass


def import_tensorflow():
    """Import TensorFlow (and Keras) without its start-up banner reaching notebook cells or the terminal.

    TF 2.21 writes oneDNN/CUDA notices straight to file descriptor 2 before its logging is set up, so
    ``TF_CPP_MIN_LOG_LEVEL`` alone does not hide them: stderr is pointed at /dev/null for the import only.
    """
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            import keras  # noqa: F401  (imports TensorFlow as its backend)
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
    quiet_tensorflow()
    return sys.modules["tensorflow"]


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def tf_version() -> str:
    """The installed TensorFlow's version string (for messages about what it can decode)."""
    return str(import_tensorflow().__version__)


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
    tf = import_tensorflow()
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
