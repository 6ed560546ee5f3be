"""``run --fine-tune``'s step: before/after metrics on the test set, printed, then the export.
:func:`compare` and :func:`one_image_macro` are also notebook 07's before/after table and its noise scale."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workshop_utils.export.writer import export_model
from workshop_utils.finetune import FineTuned, FineTuneOptions, default_options, fine_tune, reported_set
from workshop_utils.metrics import evaluate


def compare(before: Any, after: Any) -> pd.DataFrame:
    """ML.NET's scalar metrics and per-class log-loss of two evaluations side by side, with the change."""
    rows: dict[str, tuple[float, float]] = {
        "MicroAccuracy": (before.micro_accuracy, after.micro_accuracy),
        "MacroAccuracy": (before.macro_accuracy, after.macro_accuracy),
        "LogLoss": (before.log_loss, after.log_loss),
        "LogLossReduction": (before.log_loss_reduction, after.log_loss_reduction),
    }
    for name, b, a in zip(before.class_names, before.per_class_log_loss, after.per_class_log_loss):
        rows[f"LogLoss ({name})"] = (b, a)
    frame = pd.DataFrame(rows, index=[before.name or "before", after.name or "after"]).T
    frame["change"] = frame.iloc[:, 1] - frame.iloc[:, 0]
    return frame


def one_image_macro(metrics: Any) -> float:
    """How much macro accuracy one image can move: 1 / (classes × images of the smallest class)."""
    support = np.asarray(metrics.support)
    present = support[support > 0]
    return float(1.0 / (len(present) * present.min()))


def describe(options: FineTuneOptions) -> str:
    """One line: depth, epochs, batch, schedule, smoothing, class weights, augmentation (what the run uses)."""
    depth = f"top {options.unfreeze:.0%} of the backbone's layers" if options.unfreeze < 1 else \
        f"top {int(options.unfreeze)} backbone layers"
    weights = "custom" if isinstance(options.class_weight, dict) else options.class_weight
    warmup = f"{options.warmup_epochs:g} epoch{'' if options.warmup_epochs == 1 else 's'}"
    return (f"{depth}, up to {options.epochs} epochs, batch {options.batch_size}, Adam peak lr "
            f"{options.learning_rate:g} (warm-up {warmup}, cosine to "
            f"{options.final_lr_fraction:g} × peak), label smoothing {options.label_smoothing:g}, class weights "
            f"{weights}, augmentation {options.augmentation:g}{', mixed precision' if options.mixed_precision else ''}")


def run_fine_tune(trained: Any, options: FineTuneOptions, export_dir: Path | None = None,
                  quiet: bool = False) -> tuple[FineTuned, Any, Any]:
    """The command line's fine-tuning step: fine-tune (validation chooses), print before/after metrics on the
    test set (the validation set, named, when there is none), export with those metrics; (result, before, after)."""
    subset, reported = reported_set(trained)
    before = evaluate(reported.label_indices(trained.label_map), trained.predict_proba(reported.features),
                      trained.label_map, name="head only", subset=subset)
    print(f"Fine-tuning {trained.arch}: {describe(options)}.")
    result = fine_tune(trained, options, progress=not quiet)
    name, labels, probabilities = result.reported()
    after = evaluate(labels, probabilities, trained.label_map, name="fine-tuned", subset=name)
    counts = result.layers
    print(f"Fine-tuned the top {counts.top} of {counts.layers} backbone layers: {counts.trainable} with weights "
          f"train, {counts.batchnorm_frozen} BatchNorm kept frozen, {counts.weightless} without weights; "
          f"in {result.seconds:.0f} s, {result.seconds_per_epoch:.1f} s per epoch; best epoch {result.best_epoch} "
          f"of {len(result.history)} chosen on the validation log-loss ({result.start_loss:.4f} at the start)"
          f"{' (the head-only weights were kept)' if result.best_epoch == 0 else ''}.")
    if not quiet:
        print(after)
    note = "never used for choosing" if name == "test" else \
        "no test set: the validation set, which also chose the epoch, is reported (as in ML.NET's lab)"
    print(f"Before/after on the {name} set ({note}):")
    print(compare(before, after).round(4).to_string())
    if export_dir is not None:
        out = export_model(trained, export_dir, metrics=after, model=result.scoring_model,
                           fine_tuning={**asdict(options), "best_epoch": result.best_epoch})
        print(f"Fine-tuned model exported to {out} — try: python -m workshop_utils predict {out} IMAGE")
    return result, before, after


def cli_fine_tune(trained: Any, profile: str, unfreeze: float | None, epochs: int | None, seed: int,
                  export_dir: Path | None, quiet: bool = False,
                  class_weight: str | dict[str, float] | None = "balanced") -> int:
    """``run --fine-tune``: the profile's (and device's) defaults with the flags on top; returns the exit code."""
    options = default_options(profile, unfreeze=unfreeze, epochs=epochs, seed=seed, class_weight=class_weight)
    run_fine_tune(trained, options, export_dir=export_dir, quiet=quiet)
    return 0
