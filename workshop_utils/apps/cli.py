"""The workshop's command line: ``python -m workshop_utils run`` and ``python -m workshop_utils predict``.

``run`` does the whole lab in one go (load → bottleneck → train → evaluate → export) and prints the
same lines ML.NET's sample prints; ``predict`` classifies image files with an exported model; ``publish``
sets the course's public GitHub URL in the notebooks and the README. Bad input gives one line on stderr
(``error: ...``, what to do) and exit code 2, checked before any long work; Ctrl+C one line and exit code 130.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from workshop_utils import __version__
from workshop_utils.apps.serve.server import serve
from workshop_utils.architectures import get_architecture
from workshop_utils.bottleneck import CACHE_FOLDER
from workshop_utils.config import REPO_ROOT, WORKSPACE_ENV, check_workspace, get_profile, set_seeds
from workshop_utils.core.errors import ConfigError, InvalidImageError, LabelsFileError
from workshop_utils.core.formats import SUPPORTED_FORMATS, read_image_file
from workshop_utils.core.labels import LabelMap
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.course import MODEL_DIR, attach_test_bottlenecks, plan_run
from workshop_utils.data import PROTOCOLS
from workshop_utils.export.writer import export_model
from workshop_utils.finetune import cli_fine_tune
from workshop_utils.metrics import evaluate
from workshop_utils.plots import prediction_listing, print_prediction_listing
from workshop_utils.scoring import Classifier, Ensemble, load_scorer
from workshop_utils.tooling.publish import add_parser, run
from workshop_utils.trainer import ImageClassificationTrainer

EXIT_USAGE = 2


EXIT_INTERRUPTED = 130  # 128 + SIGINT: what shells report for a program stopped by Ctrl+C


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value}")
    return value


FLOAT32_MAX = 3.4028234663852886e38
"""The largest float32: TensorFlow stores learning rates and timeouts as float32, so larger ones overflow."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number above 0, got {text}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    if value > FLOAT32_MAX:
        raise argparse.ArgumentTypeError(f"expected a number up to {FLOAT32_MAX:.3g} (float32), got {text}")
    return value


MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024
"""--image-size bounds: no backbone takes less than 32 pixels; above 1024 a batch of images no longer fits in memory."""


def _image_size(text: str) -> int:
    value = _positive_int(text)
    if not MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(
            f"expected a size from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels (the backbones are trained at "
            f"224-299), got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {2**32 - 1} (NumPy's range), got {value}")
    return value


WEIGHTS_SUFFIXES = (".keras", ".h5", ".hdf5", ".weights.json")
"""The weights files Keras 3's ``load_weights`` reads (``.weights.h5`` ends in ``.h5``)."""


def _weights_value(text: str) -> str:
    if text.lower() in {"imagenet", "none", "random"} or text.lower().endswith(WEIGHTS_SUFFIXES):
        return text
    raise argparse.ArgumentTypeError(
        f"expected 'imagenet', 'none' or a Keras weights file ({', '.join(('.weights.h5',) + WEIGHTS_SUFFIXES)}), "
        f"got {text!r}")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (``error: ...`` and where to look), exit code 2, no usage block."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also documents every flag in ``--help``)."""
    parser = _Parser(
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
                     "InceptionV3, ResnetV2101, EfficientNetLite0, EfficientNetLite1, EfficientNetLite2 (default: the profile's)")
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
    run.add_argument("--weights", type=_weights_value, default=None,
                     help="backbone weights: 'imagenet', 'none' (random init) or a weights file path")
    run.add_argument("--image-size", type=_image_size, default=None,
                     help=f"square input size in pixels, {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} (default: the "
                     "architecture's own)")
    run.add_argument("--protocol", choices=PROTOCOLS, default=None,
                     help="honest (default): validation chooses the epoch, a test set never used for choosing is "
                     "reported; mlnet: ML.NET's lab, which chooses and reports on the same validation set")
    run.add_argument("--class-weight", choices=["balanced", "none"], default=None,
                     help="balanced (default under --protocol honest): every class weighs the same in the loss, as "
                     "macro accuracy does; none: every image the same (ML.NET, and --protocol mlnet)")
    run.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    run.add_argument("--no-export", action="store_true", help="skip exporting the model")
    run.add_argument("--tta", action="store_true",
                     help="also score the reported set end to end with flip test-time augmentation (each photo "
                     "averaged with its mirror, twice the cost); the export then uses it by default (card: tta)")
    run.add_argument("--ensemble", type=Path, action="append", default=[], metavar="MODEL2",
                     help="also score the reported set with this run's model averaged with an exported model "
                     "folder (same classes); repeat for more; recorded in the model card's evaluations")
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
    _add_scoring_flags(predict)
    _add_publish(commands)
    _add_serve(commands)
    return parser


def _add_publish(commands) -> None:

    add_parser(commands)


def _publish(args: argparse.Namespace) -> int:

    return run(args)


def _add_serve(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve an exported model: a web API (POST /predict) and a one-page web app",
        description="Loads the model once and serves POST /predict (image bytes or a multipart 'file'), "
        "GET /health and a web page at / until Ctrl+C or SIGTERM. Every resource is bounded: upload size "
        "(413), time to send it (408), uploads at once and images queued (503 with Retry-After).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("model_dir", type=Path, help="folder written by `run` (workspace/model)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port, 0 to 65535 (0: any free port)")
    serve.add_argument("--max-bytes", type=_positive_int, default=10 * 2**20,
                       help="largest upload in bytes (10 MB); larger ones get HTTP 413")
    serve.add_argument("--body-timeout", type=_positive_float, default=30.0,
                       help="seconds a client has to send its whole upload; slower ones get HTTP 408")
    serve.add_argument("--max-concurrency", type=_positive_int, default=32,
                       help="uploads read or scored at the same time; more get HTTP 503 with Retry-After")
    serve.add_argument("--max-queue", type=_positive_int, default=64,
                       help="images waiting for the model; more get HTTP 503 with Retry-After")
    serve.add_argument("--shutdown-timeout", type=_positive_float, default=10.0,
                       help="seconds Ctrl+C or SIGTERM waits for open requests before cancelling them")
    _add_scoring_flags(serve)


def _add_scoring_flags(command: argparse.ArgumentParser) -> None:
    """--tta/--no-tta and --ensemble, shared by predict and serve."""
    command.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                         help="flip test-time augmentation: average each photo with its mirror (twice the cost); "
                         "default: the model card's 'tta' (off)")
    command.add_argument("--ensemble", type=Path, action="append", default=[], metavar="MODEL2",
                         help="another model folder with the same classes: the probabilities are averaged "
                         "(repeat for more; the cost adds up)")


def _serve(args: argparse.Namespace) -> int:

    for folder in args.ensemble:
        _check_model_dir(folder)
    return serve(args.model_dir, host=args.host, port=args.port, max_bytes=args.max_bytes,
                 body_timeout=args.body_timeout, max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                 shutdown_timeout=args.shutdown_timeout, tta=args.tta, ensemble=args.ensemble)


def _add_fine_tune_flags(run: argparse.ArgumentParser) -> None:
    run.add_argument("--fine-tune", action="store_true",
                     help="after the head, fine-tune the top of the backbone on augmented images (notebook 07), "
                     "print before/after metrics and export the fine-tuned model")
    run.add_argument("--unfreeze", type=_unfreeze_value, default=None,
                     help="with --fine-tune: backbone layers to train, counted from the top (a whole number) or a "
                     "fraction of them (0 < N < 1); default: the profile's (full: 1/3)")
    run.add_argument("--fine-tune-epochs", type=_positive_int, default=None,
                     help="with --fine-tune: at most this many epochs (warm-up, cosine decay; early stopping on "
                     "the validation log-loss); the class weighting follows --class-weight")


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
    """Fine-tune with the head's class weighting: ``--class-weight`` when given, else balanced under the
    honest protocol and none under mlnet (as ``course.make_options`` decides for the head)."""

    flag = getattr(args, "class_weight", None)
    protocol = getattr(args, "protocol", None) or get_profile(profile_name).protocol
    class_weight = None if flag == "none" or (flag is None and protocol == "mlnet") else "balanced"
    return cli_fine_tune(trained, profile_name, args.unfreeze, args.fine_tune_epochs, args.seed,
                         None if args.no_export else workspace / "model", args.quiet, class_weight=class_weight)


def _formats() -> str:
    """The image formats the scorers read, from the one table in ``predictions`` (no TensorFlow import)."""

    return SUPPORTED_FORMATS


def _default_workspace() -> Path:
    """``<repo>/workspace``: config.workspace_dir()'s default when $WORKSHOP_WORKSPACE is not set."""

    return REPO_ROOT / "workspace"


SKIPPED_CSV = "skipped.csv"


def _report_skipped(trained, workspace: Path) -> Path | None:
    """Print how many images training left out and write them all to ``<workspace>/skipped.csv`` (subset, path,
    reason); None (and an older list removed) when none was skipped."""
    import pandas as pd

    parts = [b.skipped.assign(subset=subset)[["subset", "path", "reason"]]
             for subset, b in (("train", trained.train_bottlenecks), ("validation", trained.validation_bottlenecks),
                               ("test", trained.test_bottlenecks))
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


def _check_no_file_in_the_way(workspace: Path, folders: list[str]) -> None:
    """The workspace's sub-folders the run writes must not be files: found now, not after the bottleneck pass."""

    for name in folders:
        if (workspace / name).exists() and not (workspace / name).is_dir():
            raise ConfigError(f"{workspace / name} is a file, but the run writes a folder of that name: move the file "
                               f"or choose another --workspace{', or pass --no-export' if name == MODEL_DIR else ''}.")


def _run(args: argparse.Namespace) -> int:

    if not args.fine_tune and (args.unfreeze is not None or args.fine_tune_epochs is not None):
        raise ConfigError("--unfreeze and --fine-tune-epochs only apply with --fine-tune: add --fine-tune, or drop "
                           "them.")
    if args.fine_tune and (args.tta or args.ensemble):
        raise ConfigError("--tta and --ensemble score the head-only model and do not combine with --fine-tune yet: "
                           "fine-tune, then score the export with `python -m workshop_utils predict MODEL IMAGES "
                           "--tta --ensemble MODEL2`.")
    for folder in args.ensemble:
        _check_model_dir(folder)

    profile = get_profile()
    if (args.dataset or profile.dataset) == "sample" and profile.name != "quick":
        profile = get_profile("quick")  # the sample is for offline runs: its settings come with it
        print(f"Dataset 'sample': defaults from the quick profile (arch {profile.arch}, {profile.epochs} epochs, "
              "offline weights); flags still override them.")
    # a read-only or misplaced workspace fails now, not after the bottleneck pass
    workspace = check_workspace(args.workspace, "--workspace" if args.workspace else f"--workspace or ${WORKSPACE_ENV}")
    overrides = {name: value for name, value in [
        ("arch", args.arch), ("epoch", args.epochs), ("batch_size", args.batch_size),
        ("learning_rate", args.learning_rate),
        ("image_size", (args.image_size, args.image_size) if args.image_size else None),
    ] if value is not None}
    if args.weights is not None:
        overrides["weights"] = None if args.weights.lower() in {"none", "random"} else args.weights
    if args.class_weight is not None:
        overrides["class_weight"] = None if args.class_weight == "none" else args.class_weight

    import_tensorflow()
    set_seeds(args.seed)

    _check_no_file_in_the_way(workspace, [CACHE_FOLDER] + ([] if args.no_export else [MODEL_DIR]))
    architecture = get_architecture(overrides.get("arch", profile.arch))
    overrides["arch"] = architecture.name
    try:
        architecture.resolve_input_size(overrides.get("image_size"))  # its minimum, before the data is read
    except ValueError as error:
        raise ConfigError(f"--image-size: {error}") from error
    plan = plan_run(profile, args.dataset, workspace=workspace, image_dir=getattr(args, "image_dir", None),
                    seed=args.seed, protocol=args.protocol, reuse_train_set_bottleneck_cached_values=args.reuse_cache,
                    reuse_validation_set_bottleneck_cached_values=args.reuse_cache,
                    metrics_callback=None if args.quiet else print, **overrides)
    options, frame = plan.options, plan.frame
    if len(plan.check.findings):
        print(plan.check.summary())
    if options.weights is None:
        print(f"Note: {architecture.name} with random weights: the features are untrained, expect low accuracy.")
    reported_name, _ = plan.reported
    partners = _load_partners(args.ensemble, plan)  # before the bottleneck pass: a wrong folder fails in seconds
    print(
        f"Dataset {plan.dataset}: {len(frame)} images, {frame['label'].nunique()} classes; protocol {plan.protocol}: "
        f"{len(plan.train)} train, {len(plan.validation)} validation (chooses the epoch), "
        + (f"{len(plan.test)} test (reported, never used for choosing)." if reported_name == "test"
           else "the validation set is also the one reported, as in ML.NET's lab.")
    )
    started = time.perf_counter()
    trained = ImageClassificationTrainer(options).fit(plan.train, plan.validation)
    print(
        f"Trained in {time.perf_counter() - started:.1f} s: best epoch {trained.best_epoch}"
        f"{', stopped early' if trained.stopped_early else ''}; chosen on the validation set"
        + _chosen_epoch_scores(trained) + "."
    )
    if reported_name == "test":
        attach_test_bottlenecks(plan, trained, reuse=args.reuse_cache)
    _report_skipped(trained, workspace)

    reported = trained.test_bottlenecks if reported_name == "test" else trained.validation_bottlenecks
    if reported is None or len(reported.features) == 0:
        print(f"No {reported_name} images: skipping evaluation.")
        metrics = None
    else:
        probabilities = trained.predict_proba(reported.features)
        metrics = evaluate(reported.labels, probabilities, trained.label_map,
                           name=f"{architecture.name} + softmax head", subset=reported_name)
        print(metrics)

        listing = prediction_listing(reported.image_paths, reported.labels, probabilities, trained.label_map)
        print_prediction_listing(listing, n=10, show_probability=True)
    evaluations = []
    if metrics is not None and (args.tta or partners):
        evaluations = _evaluate_end_to_end(trained, reported, reported_name, partners, args.tta)

    if args.fine_tune:  # notebook 07's step: fine-tune, compare before/after, export the fine-tuned model
        return _fine_tune(args, trained, profile.name, workspace)
    if not args.no_export:

        out_dir = export_model(trained, workspace / "model", metrics=metrics, tta=args.tta, evaluations=evaluations)
        print(f"Model exported to {out_dir} — try: python -m workshop_utils predict {out_dir} IMAGE")
    return 0


def _check_model_dir(folder: Path) -> None:
    """A model folder given on the command line must be a folder: said in one line before anything loads."""
    if not folder.is_dir():
        raise ConfigError(f"{folder} is {'a file' if folder.exists() else 'missing'}, not a model folder: pass a "
                           "folder `run` exported (workspace/model) or one with model.keras and labels.txt.")


def _load_partners(folders: list[Path], plan) -> list:
    """The --ensemble folders' Classifiers, checked against this run's classes (same names, same order)."""
    if not folders:
        return []

    classes = LabelMap.from_labels(list(plan.train["label"]) + list(plan.validation["label"])).names
    partners = [Classifier.load(folder) for folder in folders]
    for folder, partner in zip(folders, partners):
        if partner.labels != classes:
            raise LabelsFileError(f"--ensemble {folder} has the classes {partner.labels}, but this run trains "
                                  f"{classes}: an ensemble needs the same class names in the same order.")
    return partners


def _evaluate_end_to_end(trained, reported, subset: str, partners: list, tta: bool) -> list[dict]:
    """Score the reported photos through the exported pipeline (bytes in) without and with flip TTA and/or as an
    ensemble with ``partners``; print each scorer's macro accuracy, log-loss and time per photo, then the full
    block of the last one. Returns the records for the model card."""
    import numpy as np


    own = Classifier.from_trained(trained)
    ensemble = Ensemble([own, *partners]) if partners else None  # refuses members with other classes
    paths = list(reported.image_paths)

    def score(scorer, with_tta: bool) -> tuple[np.ndarray, float]:
        scorer.predict_proba([read_image_file(paths[0], scorer.max_pixels)], tta=with_tta)  # traced: not timed
        started, rows = time.perf_counter(), []
        for start in range(0, len(paths), 32):
            batch = paths[start:start + 32]
            rows.append(scorer.predict_proba([read_image_file(p, scorer.max_pixels) for p in batch], batch,
                                             tta=with_tta))
        return np.concatenate(rows), (time.perf_counter() - started) / len(paths) * 1000

    names = [f"{trained.arch} (this run)", *(f"{m.name} ({m.directory})" for m in partners)]
    runs = []  # (name, members, probabilities, ms per photo)
    for with_tta in ([False, True] if tta else [False]):
        suffix = ", flip TTA" if with_tta else ""
        scored = [(name + suffix, [str(m.directory or "this run")], *score(m, with_tta))
                  for name, m in zip(names, [own, *partners])]
        runs += scored
        if ensemble is not None:
            runs.append((f"average of the {len(scored)}{suffix}", [r[1][0] for r in scored],
                         np.mean([r[2] for r in scored], axis=0), sum(r[3] for r in scored)))
    print(f"Scored end to end on the {subset} set ({len(paths)} photos, bytes in, as predict and serve do):")
    width = max(len(r[0]) for r in runs)
    records = []
    for name, members, probabilities, ms in runs:
        result = evaluate(reported.labels, probabilities, trained.label_map, subset=subset, name=name)
        print(f"  {name:<{width}}  macro accuracy {result.macro_accuracy:.3f}  log-loss {result.log_loss:.3f}  "
              f"{ms:6.1f} ms per photo")
        records.append({"scorer": name, "tta": name.endswith("flip TTA"), "ensemble": members if len(members) > 1
                        else None, "subset": subset, "n_samples": len(paths), "macro_accuracy": result.macro_accuracy,
                        "micro_accuracy": result.micro_accuracy, "log_loss": result.log_loss,
                        "ms_per_photo": round(ms, 2)})
    print(result)
    return records


def _chosen_epoch_scores(trained) -> str:
    """' (validation accuracy 0.897, log-loss 0.31)' at the chosen epoch, from the training history."""
    rows = trained.history[(trained.history["epoch"] == trained.best_epoch) & (trained.history["dataset"] == "Validation")]
    if rows.empty:
        return ""
    return f" (validation accuracy {rows['accuracy'].iloc[0]:.3f}, log-loss {rows['cross_entropy'].iloc[0]:.3f})"


def _check_predict_paths(model_dir: Path, images: list[Path]) -> None:
    """Paths that cannot work fail in one line before the model is loaded (seconds), not one by one after it."""
    if model_dir.exists() and not model_dir.is_dir():
        raise ConfigError(f"{model_dir} is a file, not a model folder: pass the folder `run` exported "
                           "(workspace/model), then the images.")
    if not model_dir.is_dir():
        return  # Classifier.load says it is missing and how to export one
    bad = [f"{path} (a folder: pass its images, e.g. {path / '*.jpg'})" if path.is_dir() else f"{path} (does not exist)"
           for path in images if not path.is_file()]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        verb = "is not a file" if len(bad) == 1 else "are not files"
        raise ConfigError(f"{len(bad)} of the {len(images)} image paths {verb}: {shown}. Check the paths.")


def _predict(args: argparse.Namespace) -> int:
    _check_predict_paths(args.model_dir, args.images)
    for folder in args.ensemble:
        _check_model_dir(folder)

    classifier = load_scorer(args.model_dir, args.ensemble, tta=args.tta)
    if (classifier.tta or args.ensemble) and not args.json:
        print(f"Scoring with {classifier.name}{', flip test-time augmentation' if classifier.tta else ''}.")
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
    ("bottleneck", ("DatasetError",)),
    ("trainer", ("ConfigError",)),
    ("predictions", ("InvalidImageError", "LabelsFileError")),
    ("model_io", ("ModelFolderError", "ExportError")),
    ("finetune", ("ConfigError",)),
    ("publish", ("ToolingError",)),
    ("serve", ("ServeError",)),
)


_PATH_ERRORS = {  # Python's own errors about a path the user gave: what to do about each
    FileNotFoundError: "does not exist; check the path",
    NotADirectoryError: "a file is in the way where a folder is expected; move it or choose another path",
    FileExistsError: "a file is in the way where a folder is expected; move it or choose another path",
    IsADirectoryError: "is a folder where a file is expected; give a file",
    PermissionError: "permission denied; choose a path you can read and write, or change its permissions",
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """The user-error classes of the modules loaded so far (a module not loaded cannot have raised)."""
    errors: list[type[BaseException]] = [ConfigError, *_PATH_ERRORS]
    for module, names in _USER_ERRORS:
        mod = sys.modules.get(f"{__package__}.{module}")
        errors += [getattr(mod, name) for name in names if mod is not None]
    return tuple(errors)


def _one_line(error: BaseException) -> str:
    """The error as one line: ours carry their fix; Python's path errors get the path and what to do."""
    if type(error) in _PATH_ERRORS and getattr(error, "filename", None):
        text = f"{error.filename}: {error.strerror or type(error).__name__} ({_PATH_ERRORS[type(error)]})"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


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


@contextmanager
def _noting_interrupts():
    """Ctrl+C raises KeyboardInterrupt as usual and is also remembered (the list gets an entry): TensorFlow can
    turn a KeyboardInterrupt raised inside its C++ code into another exception, such as a bare TypeError."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield seen  # signals go to the main thread only; a custom or ignored SIGINT is left alone
        return

    def note(signum, frame):
        seen.append(signum)
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, note)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command; user errors become one line on stderr and exit code 2, Ctrl+C one line and 130."""
    with _noting_interrupts() as interrupts:
        try:
            if args.command == "publish":
                return _publish(args)
            if args.command == "serve":
                return _serve(args)
            return _run(args) if args.command == "run" else _predict(args)
        except KeyboardInterrupt:
            print("Interrupted.", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as exc:
            if interrupts:  # the Ctrl+C surfaced as another exception (see _noting_interrupts)
                print("Interrupted.", file=sys.stderr)
                return EXIT_INTERRUPTED
            if isinstance(exc, _user_errors()):
                print(f"error: {_one_line(exc)}", file=sys.stderr)
                return EXIT_USAGE
            raise
