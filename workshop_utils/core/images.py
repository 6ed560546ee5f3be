"""The one image decoding (bottlenecks, fine-tuning, Grad-CAM, scorers, the exported model): training and serving
see the same pixels. The header's EXIF orientation is applied by :func:`orient` after decoding, before the resize,
wherever Python hands images to a model; bytes fed straight into an exported model must be upright."""
from __future__ import annotations

import functools
import os

import numpy as np

from workshop_utils.core.formats import DEFAULT_MAX_PIXELS, check_image_file
from workshop_utils.core.runtime import import_tensorflow

tf = import_tensorflow()

# Bump when decoding or the checks change a file's pixels or which files are refused (the bottleneck cache's
# fingerprint records it). 2: EXIF orientation applied; JPEGs whose data is cut refused.
DECODE_VERSION = 2


def decode_image(contents: tf.Tensor, image_size: tuple[int, int], orientation: int | tf.Tensor | None = None
                 ) -> tf.Tensor:
    """Encoded bytes (scalar string) -> float32 RGB 0–255 (H, W, 3), a GIF's first frame, turned upright by
    ``orientation`` (EXIF 1–8; None: as stored). Antialiased resize: else shrinking a photo to 224 px aliases
    scratches and cracks, and the EfficientNet-Lite0 port misses its reference ImageNet predictions."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    if orientation is not None:
        image = orient(image, orientation)
    image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    image.set_shape((image_size[0], image_size[1], 3))
    return image


_ORIENT = (  # EXIF orientation 1..8 -> what makes the stored pixels upright (as Pillow's ImageOps.exif_transpose)
    lambda x: x,  # 1: as stored
    lambda x: tf.reverse(x, [1]),  # 2: mirrored left-right
    lambda x: tf.reverse(x, [0, 1]),  # 3: upside down
    lambda x: tf.reverse(x, [0]),  # 4: mirrored top-bottom
    tf.image.transpose,  # 5: mirrored along the main diagonal
    lambda x: tf.image.rot90(x, k=3),  # 6: turned a quarter anticlockwise: turn it clockwise (phones, portrait)
    lambda x: tf.reverse(tf.image.transpose(x), [0, 1]),  # 7: mirrored along the other diagonal
    lambda x: tf.image.rot90(x, k=1),  # 8: turned a quarter clockwise: turn it anticlockwise
)


def orient(image: tf.Tensor, orientation: int | tf.Tensor) -> tf.Tensor:
    """Decoded pixels (H, W, C) turned upright by their EXIF orientation (1–8; anything else: as stored), with
    TensorFlow ops so it runs inside ``tf.data`` maps and traced functions; the result of 5–8 is W×H."""
    if isinstance(orientation, (int, np.integer)):  # eager, known: no branch in the graph
        return _ORIENT[int(orientation) - 1 if 1 <= orientation <= 8 else 0](image)
    index = tf.cast(orientation, tf.int32) - 1
    index = tf.where((index < 0) | (index > 7), 0, index)
    return tf.switch_case(index, [functools.partial(fn, image) for fn in _ORIENT])


def decode_images(contents: tf.Tensor, image_size: tuple[int, int], orientations: tf.Tensor | None = None
                  ) -> tf.Tensor:
    """A batch of encoded images (string [N]) -> float32 [N, H, W, 3]; ``orientations`` (int [N]) or None: as stored."""
    h, w = int(image_size[0]), int(image_size[1])
    spec = tf.TensorSpec((h, w, 3), tf.float32)
    if orientations is None:
        return tf.map_fn(lambda c: decode_image(c, (h, w)), contents, fn_output_signature=spec)
    return tf.map_fn(lambda args: decode_image(args[0], (h, w), args[1]),
                     (contents, tf.cast(orientations, tf.int32)), fn_output_signature=spec)


def file_orientation(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> int:
    """A file's EXIF orientation (1 when none) from its header; no usable image: InvalidImageError naming it."""
    return check_image_file(path, max_pixels).orientation


def read_image(path: str | os.PathLike, image_size: tuple[int, int]) -> tf.Tensor:
    """A file's pixels as the model sees them: float32 RGB 0–255 (H, W, 3), upright, resized."""
    return decode_image(tf.io.read_file(str(path)), image_size, file_orientation(path))


def read_photo(path: str | os.PathLike) -> np.ndarray:
    """A photo's pixels at its own size (uint8 RGB), upright as it is meant to be seen (for overlays)."""
    image = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
    return orient(image, file_orientation(path)).numpy()
