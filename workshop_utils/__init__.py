"""Helper package for the car-damage transfer-learning workshop.

Modules by phase: ``config`` (paths, profile), ``data`` and ``download`` (the image index),
``sample`` (the bundled synthetic dataset), ``architectures`` (frozen ImageNet CNNs), ``bottleneck``
(cached features), ``trainer`` (the softmax head), ``metrics``, ``plots``, ``model_io`` (export and
scoring), ``widgets`` and ``cli`` (``python -m workshop_utils``). Importing the package itself is cheap:
TensorFlow loads only with the modules that need it.
"""
from __future__ import annotations

__version__ = "0.1.0"
