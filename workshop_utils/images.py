"""Image decoding shared by the bottleneck pipeline and the exported end-to-end model.

One function, so the features a head is trained on and the pixels the saved model sees at serving
time are produced by exactly the same operations.
"""
from __future__ import annotations

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
