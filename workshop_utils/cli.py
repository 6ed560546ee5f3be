"""The workshop's command line: ``python -m workshop_utils run`` and ``python -m workshop_utils predict``.

``run`` does the whole lab in one go (load → bottleneck → train → evaluate → export) and prints the
same lines ML.NET's sample prints; ``predict`` classifies image files with an exported model. Bad input
gives one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import __version__

EXIT_USAGE = 2


class CommandError(Exception):
    """A problem the user can fix from the command line; printed as one line, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also documents every flag in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m workshop_utils",
        description="Car-damage image classification by transfer learning (ML.NET's Image Classification "
        "API, in TensorFlow/Keras).",
    )
    parser.add_argument("--version", action="version", version=f"workshop_utils {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="load the dataset, compute bottlenecks, train the head, evaluate and export the model",
        description="Runs the whole lab: load → bottleneck phase → training phase → evaluation → export. "
        "Defaults come from the profile (WORKSHOP_PROFILE=full|quick).",
    )
    run.add_argument(
        "--dataset",
        default=None,
        help="'sample' (bundled synthetic data, offline), 'car-damage', 'flowers', 'concrete-cracks', or a "
        "folder/CSV path (default: the profile's dataset)",
    )
    run.add_argument("--arch", default=None, help="backbone architecture, e.g. ResnetV250, MobilenetV2, "
                     "InceptionV3, ResnetV2101, EfficientNetLite0 (default: the profile's)")
    run.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (ML.NET: 200)")
    run.add_argument("--batch-size", type=_positive_int, default=None, help="training batch size (ML.NET: 10)")
    run.add_argument("--learning-rate", type=_positive_float, default=None,
                     help="initial learning rate (ML.NET: 0.01)")
    run.add_argument("--workspace", type=Path, default=None,
                     help="folder for caches and the exported model (default: $WORKSHOP_WORKSPACE or ./workspace)")
    run.add_argument("--reuse-cache", action="store_true",
                     help="reuse cached bottlenecks when their fingerprint still matches the images and model")
    run.add_argument("--weights", default=None,
                     help="backbone weights: 'imagenet', 'none' (random init) or a weights file path")
    run.add_argument("--image-size", type=_positive_int, default=None,
                     help="square input size in pixels (default: the architecture's own)")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--no-export", action="store_true", help="skip exporting the model")
    run.add_argument("--quiet", action="store_true", help="no per-image/per-epoch ML.NET lines")

    predict = commands.add_parser(
        "predict",
        help="classify image files with an exported model",
        description="Prints the predicted label and probability for each image, then the time of the first "
        "prediction and the steady-state time per image.",
    )
    predict.add_argument("model_dir", type=Path, help="folder written by `run` (workspace/model)")
    predict.add_argument("images", type=Path, nargs="+", help="image files (JPEG, PNG, GIF, BMP)")
    predict.add_argument("--json", action="store_true", help="print one JSON object per image")
    return parser


def _run(args: argparse.Namespace) -> int:
    from .config import get_profile, import_tensorflow, set_seeds, workspace_dir

    profile = get_profile()
    dataset = args.dataset or profile.dataset
    if dataset == "sample" and profile.name != "quick":
        profile = get_profile("quick")  # the sample is for offline runs: its settings come with it
        print(f"Dataset 'sample': defaults from the quick profile (arch {profile.arch}, {profile.epochs} epochs, "
              "offline weights); flags still override them.")
    weights: str | None = profile.weights
    if args.weights is not None:
        weights = None if args.weights.lower() in {"none", "random"} else args.weights
    arch = args.arch or profile.arch
    image_size = (args.image_size, args.image_size) if args.image_size else profile.image_size
    workspace = (args.workspace or workspace_dir()).expanduser().resolve()
    workspace.mkdir(parents=True, exist_ok=True)

    import_tensorflow()
    set_seeds(args.seed)
    from .architectures import get_architecture
    from .data import by_subset, load_dataset, split
    from .download import resolve_dataset
    from .metrics import evaluate
    from .trainer import EarlyStopping, ExponentialLRDecay, ImageClassificationTrainer, Options

    architecture = get_architecture(arch)
    if weights is None:
        print(f"Note: {architecture.name} with random weights: the features are untrained, expect low accuracy.")
    root = resolve_dataset(dataset)
    frame = load_dataset(root)
    subsets = set(frame["subset"])
    if {"train", "validation"} <= subsets:
        train_df, validation_df = by_subset(frame)
    else:
        train_df, validation_df, _test_df = split(frame, seed=args.seed)
    print(
        f"Dataset {dataset}: {len(frame)} images, {frame['label'].nunique()} classes "
        f"({len(train_df)} train, {len(validation_df)} validation)."
    )

    rate = args.learning_rate or profile.learning_rate
    options = Options(
        arch=architecture.name,
        epoch=args.epochs or profile.epochs,
        batch_size=args.batch_size or profile.batch_size,
        learning_rate=rate,
        learning_rate_scheduler=ExponentialLRDecay(learning_rate=rate),  # ML.NET's schedule, from this rate
        early_stopping=EarlyStopping(patience=profile.patience),
        reuse_train_set_bottleneck_cached_values=args.reuse_cache,
        reuse_validation_set_bottleneck_cached_values=args.reuse_cache,
        workspace_path=str(workspace),
        metrics_callback=None if args.quiet else print,
        seed=args.seed,
        weights=weights,
        image_size=image_size,
        bottleneck_batch_size=profile.bottleneck_batch_size,
    )
    started = time.perf_counter()
    trained = ImageClassificationTrainer(options).fit(train_df, validation_df)
    print(
        f"Trained in {time.perf_counter() - started:.1f} s: best epoch {trained.best_epoch}"
        f"{', stopped early' if trained.stopped_early else ''}."
    )

    validation = trained.validation_bottlenecks
    if validation is None or len(validation.features) == 0:
        print("No validation images: skipping evaluation.")
        metrics = None
    else:
        probabilities = trained.predict_proba(validation.features)
        metrics = evaluate(validation.labels, probabilities, trained.label_map,
                           name=f"{architecture.name} + softmax head")
        print(metrics)
        from .plots import print_prediction_listing, prediction_listing

        listing = prediction_listing(validation.image_paths, validation.labels, probabilities, trained.label_map)
        print_prediction_listing(listing, n=10, show_probability=True)

    if not args.no_export:
        from .model_io import export_model

        out_dir = export_model(trained, workspace / "model", metrics=metrics)
        print(f"Model exported to {out_dir} — try: python -m workshop_utils predict {out_dir} IMAGE")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .model_io import Classifier, InvalidImageError

    classifier = Classifier.load(args.model_dir)
    failures = 0
    timings: list[float] = []
    for path in args.images:
        started = time.perf_counter()
        try:
            prediction = classifier.predict_file(path)
        except (InvalidImageError, FileNotFoundError, IsADirectoryError) as exc:
            failures += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        timings.append(time.perf_counter() - started)
        if args.json:
            record = prediction.to_dict()
            record.pop("source", None)  # the same as "image"
            print(json.dumps({"image": str(path), **record}))
        else:
            print(f"Image: {path.name} | Predicted: {prediction.label} | Probability: {prediction.probability:.4f}")
    if timings and not args.json:
        line = f"First prediction took {timings[0] * 1000:.0f} ms"
        if len(timings) > 1:
            steady = sum(timings[1:]) / len(timings[1:])
            line += f"; then {steady * 1000:.1f} ms per image"
        print(line + ".")
    return 1 if failures else 0


_USER_ERRORS = (  # (module, class names): "fix your input" errors, shown as one line instead of a traceback
    ("config", ("ConfigError",)),
    ("data", ("DatasetError",)),
    ("download", ("DownloadError",)),
    ("architectures", ("WeightsUnavailableError", "UnknownArchitectureError")),
    ("bottleneck", ("BottleneckError",)),
    ("trainer", ("TrainerError",)),
    ("predictions", ("InvalidImageError", "LabelsFileError")),
    ("model_io", ("ModelFolderError",)),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The user-error classes of the modules loaded so far (a module not loaded cannot have raised)."""
    errors: list[type[BaseException]] = [CommandError, FileNotFoundError, NotADirectoryError]
    for module, names in _USER_ERRORS:
        mod = sys.modules.get(f"{__package__}.{module}")
        errors += [getattr(mod, name) for name in names if mod is not None]
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return _run(args) if args.command == "run" else _predict(args)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise
