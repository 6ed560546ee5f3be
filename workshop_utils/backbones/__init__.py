"""The backbones the lesson builds on (EfficientNet-Lite, the PyTorch-weights reader); they import only core."""
