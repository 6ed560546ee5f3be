"""ML.NET's metric lines: ``str()`` of an :class:`ImageClassificationMetrics` is .NET's ``ToString()``, so
``metrics_callback=print`` shows the .NET lab's text (float32 numbers as .NET Core 3.0+ prints them)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRAIN, VALIDATION = "Train", "Validation"  # ML.NET's dataset names in the metric lines
HISTORY_COLUMNS = ["epoch", "dataset", "accuracy", "cross_entropy", "learning_rate"]  # head.history_frame's rows


def format_dotnet_float(value: float) -> str:
    """A float32 as .NET Core 3.0+ ``float.ToString()``: shortest round-trip digits, fixed for decimal exponents
    −5 < e < max(9, digits) ("0.0001", "12.5"), else "1E-05", "1.2345679E+09"; "NaN", "Infinity", "-Infinity"."""
    x = np.float32(value)
    if np.isnan(x):
        return "NaN"
    if np.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "-0" if np.signbit(x) else "0"
    mantissa, exponent_text = np.format_float_scientific(x, unique=True, trim="-").split("e")
    exponent = int(exponent_text)
    digits = len(mantissa.lstrip("-").replace(".", ""))
    if -5 < exponent < max(digits, 9):
        return np.format_float_positional(x, unique=True, trim="-")
    return f"{mantissa}E{exponent:+03d}"


@dataclass
class BottleneckMetrics:
    """One image through the frozen CNN (ML.NET's ``BottleneckMetrics``); ``index`` is 1-based."""

    dataset_used: str = TRAIN
    index: int = 0

    def __str__(self) -> str:
        return f"Phase: Bottleneck Computation, Dataset used: {self.dataset_used:>10}, Image Index: {self.index:>3}"


@dataclass
class TrainMetrics:
    """One epoch on the train or validation set (ML.NET's ``TrainMetrics``; ``epoch`` 0-based): means of the
    per-batch means, and the rate of the epoch's last step (printed on the train line only, as ML.NET does)."""

    dataset_used: str = TRAIN
    batch_processed_count: int = 0
    epoch: int = 0
    accuracy: float = 0.0
    cross_entropy: float = 0.0
    learning_rate: float = 0.0

    def __str__(self) -> str:
        line = (f"Phase: Training, Dataset used: {self.dataset_used:>10}, Batch Processed Count: "
                f"{self.batch_processed_count:>3}, Epoch: {self.epoch:>3}, Accuracy: "
                f"{format_dotnet_float(self.accuracy):>10}, Cross-Entropy: "
                f"{format_dotnet_float(self.cross_entropy):>10}")
        if self.dataset_used == TRAIN:  # .NET's {x,10}: right-aligned, never truncated
            line += f", Learning Rate: {format_dotnet_float(self.learning_rate):>10}"
        return line


@dataclass
class ImageClassificationMetrics:
    """What the metrics callback receives: ``train`` during training, ``bottleneck`` while caching features."""

    train: TrainMetrics | None = None
    bottleneck: BottleneckMetrics | None = None

    def __str__(self) -> str:
        return str(self.train) if self.train is not None else str(self.bottleneck)
