"""The workshop's command line: ``python -m workshop_utils run`` and ``python -m workshop_utils predict``.

``run`` does the whole lab in one go (load → bottleneck → train → evaluate → export) and prints the
same lines ML.NET's sample prints; ``predict`` classifies image files with an exported model; ``publish``
sets the course's public GitHub URL in the notebooks and the README. Bad input gives one line on stderr and
exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
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
                     help="folder for caches, skipped.csv and the exported model (default: $WORKSHOP_WORKSPACE, "
                     f"else the repository's workspace folder, {_default_workspace()})")
    run.add_argument("--image-dir", type=Path, default=None,
                     help="folder holding the images of an index.csv dataset: each row's file name is looked up "
                     "there (default: paths relative to the CSV's folder)")
    run.add_argument("--reuse-cache", action="store_true",
                     help="reuse cached bottlenecks when their fingerprint still matches the images and model")
    run.add_argument("--weights", default=None,
                     help="backbone weights: 'imagenet', 'none' (random init) or a weights file path")
    run.add_argument("--image-size", type=_positive_int, default=None,
                     help="square input size in pixels (default: the architecture's own)")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--no-export", action="store_true", help="skip exporting the model")
    run.add_argument("--quiet", action="store_true", help="no per-image/per-epoch ML.NET lines")
    _add_fine_tune_flags(run)

    predict = commands.add_parser(
        "predict",
        help="classify image files with an exported model",
        description="Prints the predicted label and probability for each image, then the time of the first "
        "prediction and the steady-state time per image.",
    )
    predict.add_argument("model_dir", type=Path, help="folder written by `run` (workspace/model)")
    predict.add_argument("images", type=Path, nargs="+", help=f"image files ({_formats()})")
    predict.add_argument("--json", action="store_true", help="print one JSON object per image")
    _add_publish(commands)
    _add_serve(commands)
    return parser


def _add_publish(commands) -> None:
    from .publish import add_parser

    add_parser(commands)


def _publish(args: argparse.Namespace) -> int:
    from .publish import run

    return run(args)


def _add_serve(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve an exported model: a web API (POST /predict) and a one-page web app",
        description="Loads the model once and serves POST /predict (image bytes or a multipart 'file'), "
        "GET /health and a web page at / until Ctrl+C.",
    )
    serve.add_argument("model_dir", type=Path, help="folder written by `run` (workspace/model)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port)")
    serve.add_argument("--max-bytes", type=_positive_int, default=10 * 2**20,
                       help="largest upload in bytes (default 10485760 = 10 MB); larger ones get HTTP 413")


def _serve(args: argparse.Namespace) -> int:
    from .serve import serve

    return serve(args.model_dir, host=args.host, port=args.port, max_bytes=args.max_bytes)


def _add_fine_tune_flags(run: argparse.ArgumentParser) -> None:
    run.add_argument("--fine-tune", action="store_true",
                     help="after the head, fine-tune the top of the backbone on augmented images (notebook 07), "
                     "print before/after metrics and export the fine-tuned model")
    run.add_argument("--unfreeze", type=_unfreeze_value, default=None,
                     help="with --fine-tune: backbone layers to train, counted from the top (a whole number) or a "
                     "fraction of them (0 < N < 1); default: the profile's (full: 1/3)")
    run.add_argument("--fine-tune-epochs", type=_positive_int, default=None,
                     help="with --fine-tune: at most this many epochs (early stopping on validation log-loss)")


def _unfreeze_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a layer count or a fraction, got {text!r}") from None
    if not value >= 0 or (value >= 1 and value != int(value)):
        raise argparse.ArgumentTypeError(
            f"expected a whole number of layers >= 0 or a fraction between 0 and 1, got {text}")
    return int(value) if value >= 1 or value == 0 else value


def _fine_tune(args: argparse.Namespace, trained, profile_name: str, workspace: Path) -> int:
    from .finetune import cli_fine_tune

    return cli_fine_tune(trained, profile_name, args.unfreeze, args.fine_tune_epochs, args.seed,
                         None if args.no_export else workspace / "model", args.quiet)


def _formats() -> str:
    """The image formats the scorers read, from the one table in ``predictions`` (no TensorFlow import)."""
    from .predictions import SUPPORTED_FORMATS

    return SUPPORTED_FORMATS


def _default_workspace() -> Path:
    """``<repo>/workspace``: config.workspace_dir()'s default when $WORKSHOP_WORKSPACE is not set."""
    from .config import REPO_ROOT

    return REPO_ROOT / "workspace"


SKIPPED_CSV = "skipped.csv"


def _report_skipped(trained, workspace: Path) -> Path | None:
    """Print how many images training left out and write them all to ``<workspace>/skipped.csv`` (subset, path,
    reason); None (and an older list removed) when none was skipped."""
    import pandas as pd

    parts = [b.skipped.assign(subset=subset)[["subset", "path", "reason"]]
             for subset, b in (("train", trained.train_bottlenecks), ("validation", trained.validation_bottlenecks))
             if b is not None and len(b.skipped)]
    target = workspace / SKIPPED_CSV
    if not parts:
        target.unlink(missing_ok=True)  # a list from an earlier run would now be wrong
        return None
    skipped = pd.concat(parts, ignore_index=True)
    tmp = target.with_name(f".{SKIPPED_CSV}.{os.getpid()}.tmp")
    skipped.to_csv(tmp, index=False)
    os.replace(tmp, target)
    counts = ", ".join(f"{n} {subset}" for subset, n in skipped["subset"].value_counts(sort=False).items())
    print(f"Skipped {len(skipped)} image{'s' * (len(skipped) != 1)} that could not be used ({counts}); "
          f"the list with reasons: {target}")
    return target


def _run(args: argparse.Namespace) -> int:
    from .config import get_profile, import_tensorflow, set_seeds, workspace_dir
    from .course import plan_run

    profile = get_profile()
    if (args.dataset or profile.dataset) == "sample" and profile.name != "quick":
        profile = get_profile("quick")  # the sample is for offline runs: its settings come with it
        print(f"Dataset 'sample': defaults from the quick profile (arch {profile.arch}, {profile.epochs} epochs, "
              "offline weights); flags still override them.")
    workspace = (args.workspace or workspace_dir()).expanduser().resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    overrides = {name: value for name, value in [
        ("arch", args.arch), ("epoch", args.epochs), ("batch_size", args.batch_size),
        ("learning_rate", args.learning_rate),
        ("image_size", (args.image_size, args.image_size) if args.image_size else None),
    ] if value is not None}
    if args.weights is not None:
        overrides["weights"] = None if args.weights.lower() in {"none", "random"} else args.weights

    import_tensorflow()
    set_seeds(args.seed)
    from .architectures import get_architecture
    from .metrics import evaluate
    from .trainer import ImageClassificationTrainer

    architecture = get_architecture(overrides.get("arch", profile.arch))
    overrides["arch"] = architecture.name
    plan = plan_run(profile, args.dataset, workspace=workspace, image_dir=getattr(args, "image_dir", None),
                    seed=args.seed, reuse_train_set_bottleneck_cached_values=args.reuse_cache,
                    reuse_validation_set_bottleneck_cached_values=args.reuse_cache,
                    metrics_callback=None if args.quiet else print, **overrides)
    options, frame, train_df, validation_df = plan.options, plan.frame, plan.train, plan.validation
    if options.weights is None:
        print(f"Note: {architecture.name} with random weights: the features are untrained, expect low accuracy.")
    print(
        f"Dataset {plan.dataset}: {len(frame)} images, {frame['label'].nunique()} classes "
        f"({len(train_df)} train, {len(validation_df)} validation)."
    )
    started = time.perf_counter()
    trained = ImageClassificationTrainer(options).fit(train_df, validation_df)
    print(
        f"Trained in {time.perf_counter() - started:.1f} s: best epoch {trained.best_epoch}"
        f"{', stopped early' if trained.stopped_early else ''}."
    )
    _report_skipped(trained, workspace)

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

    if args.fine_tune:  # notebook 07's step: fine-tune, compare before/after, export the fine-tuned model
        return _fine_tune(args, trained, profile.name, workspace)
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
    ("finetune", ("FineTuneError",)),
    ("publish", ("PublishError",)),
    ("serve", ("ServeError",)),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The user-error classes of the modules loaded so far (a module not loaded cannot have raised)."""
    errors: list[type[BaseException]] = [CommandError, FileNotFoundError, NotADirectoryError]
    for module, names in _USER_ERRORS:
        mod = sys.modules.get(f"{__package__}.{module}")
        errors += [getattr(mod, name) for name in names if mod is not None]
    return tuple(errors)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line: one line "warning: …", without Python's file, line number and source."""
    try:
        print(f"warning: {message}", file=file if file is not None else sys.stderr)
    except OSError:  # stderr closed: nowhere to show it
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    with warnings.catch_warnings():  # restores the caller's warning display when main() returns
        warnings.showwarning = _show_warning
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command; user errors become one line on stderr and exit code 2."""
    try:
        if args.command == "publish":
            return _publish(args)
        if args.command == "serve":
            return _serve(args)
        return _run(args) if args.command == "run" else _predict(args)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise
