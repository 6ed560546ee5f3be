"""The bodies of ``run``, ``predict`` and ``serve``: parsed flags in, exit code out (cli.py parses the flags and
shows errors); bad input raises a WorkshopError before any long work."""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from workshop_utils import config, finetune_report
from workshop_utils.apps.serve import server
from workshop_utils.architectures import get_architecture
from workshop_utils.bottleneck import CACHE_FOLDER
from workshop_utils.core.errors import ConfigError, InvalidImageError, LabelsFileError
from workshop_utils.core.formats import read_image_file
from workshop_utils.core.fsutil import atomic_write
from workshop_utils.core.labels import LabelMap
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.course import MODEL_DIR, attach_test_bottlenecks, plan_run
from workshop_utils.export.writer import export_model
from workshop_utils.metrics import evaluate
from workshop_utils.plots import prediction_listing, print_prediction_listing
from workshop_utils.scoring import Classifier, Ensemble, load_scorer
from workshop_utils.trainer import ImageClassificationTrainer

import_tensorflow()  # quiet TensorFlow's start-up before Keras loads it
import keras  # noqa: E402

SKIPPED_CSV = "skipped.csv"


def _check_model_dirs(folders: list[Path]) -> None:
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"{folder} is {'a file' if folder.exists() else 'missing'}, not a model folder: pass a "
                              "folder `run` exported (workspace/model) or one with model.keras and labels.txt.")


def serve(args: argparse.Namespace) -> int:
    _check_model_dirs(args.ensemble)
    # every flag of `serve` is a keyword argument of server.serve
    return server.serve(**{name: value for name, value in vars(args).items() if name != "command"})


def _fine_tune(args: argparse.Namespace, trained, profile_name: str, workspace: Path) -> int:
    """Fine-tune with the head's class weighting (``--class-weight``, else by protocol, as for the head)."""
    flag, protocol = args.class_weight, args.protocol or config.get_profile(profile_name).protocol
    class_weight = None if flag == "none" or (flag is None and protocol == "mlnet") else "balanced"
    return finetune_report.cli_fine_tune(trained, profile_name, args.unfreeze, args.fine_tune_epochs, args.seed,
                                         None if args.no_export else workspace / "model", args.quiet,
                                         class_weight=class_weight)


def _report_skipped(trained, workspace: Path) -> None:
    """Print how many images training left out and list them in ``<workspace>/skipped.csv``."""
    parts = [b.skipped.assign(subset=subset)[["subset", "path", "reason"]]
             for subset, b in (("train", trained.train_bottlenecks), ("validation", trained.validation_bottlenecks),
                               ("test", trained.test_bottlenecks))
             if b is not None and len(b.skipped)]
    target = workspace / SKIPPED_CSV
    if not parts:
        target.unlink(missing_ok=True)  # a list from an earlier run would now be wrong
        return
    skipped = pd.concat(parts, ignore_index=True)
    atomic_write(target, skipped.to_csv(index=False))
    counts = ", ".join(f"{n} {subset}" for subset, n in skipped["subset"].value_counts(sort=False).items())
    print(f"Skipped {len(skipped)} image{'s' * (len(skipped) != 1)} that could not be used ({counts}); "
          f"the list with reasons: {target}")


def run(args: argparse.Namespace) -> int:
    if not args.fine_tune and (args.unfreeze is not None or args.fine_tune_epochs is not None):
        raise ConfigError("--unfreeze and --fine-tune-epochs only apply with --fine-tune: add --fine-tune, or drop "
                          "them.")
    if args.fine_tune and (args.tta or args.ensemble):
        raise ConfigError("--tta and --ensemble score the head-only model and do not combine with --fine-tune yet: "
                          "fine-tune, then score the export with `python -m workshop_utils predict MODEL IMAGES "
                          "--tta --ensemble MODEL2`.")
    _check_model_dirs(args.ensemble)

    profile = config.get_profile()
    if (args.dataset or profile.dataset) == "sample" and profile.name != "quick":
        profile = config.get_profile("quick")  # the sample is for offline runs: its settings come with it
        print(f"Dataset 'sample': defaults from the quick profile (arch {profile.arch}, {profile.epochs} epochs, "
              "offline weights); flags still override them.")
    # a read-only or misplaced workspace fails now, not after the bottleneck pass
    workspace = config.check_workspace(args.workspace, "--workspace" if args.workspace
                                       else f"--workspace or ${config.WORKSPACE_ENV}")
    overrides = {name: value for name, value in dict(
        arch=args.arch, epoch=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        image_size=(args.image_size, args.image_size) if args.image_size else None).items() if value is not None}
    if args.weights is not None:
        overrides["weights"] = None if args.weights.lower() in {"none", "random"} else args.weights
    if args.class_weight is not None:
        overrides["class_weight"] = None if args.class_weight == "none" else args.class_weight

    keras.utils.set_random_seed(args.seed)  # Python, NumPy and TensorFlow
    for name in [CACHE_FOLDER] + ([] if args.no_export else [MODEL_DIR]):  # found now, not after the bottlenecks
        if (workspace / name).exists() and not (workspace / name).is_dir():
            raise ConfigError(f"{workspace / name} is a file, but the run writes a folder of that name: move the file "
                              f"or choose another --workspace{', or pass --no-export' if name == MODEL_DIR else ''}.")
    architecture = get_architecture(overrides.get("arch", profile.arch))
    overrides["arch"] = architecture.name
    try:
        architecture.resolve_input_size(overrides.get("image_size"))  # its minimum, before the data is read
    except ValueError as error:
        raise ConfigError(f"--image-size: {error}") from error
    plan = plan_run(profile, args.dataset, workspace=workspace, image_dir=args.image_dir, seed=args.seed,
                    protocol=args.protocol, reuse_train_set_bottleneck_cached_values=args.reuse_cache,
                    reuse_validation_set_bottleneck_cached_values=args.reuse_cache,
                    metrics_callback=None if args.quiet else print, **overrides)
    options, frame = plan.options, plan.frame
    if len(plan.check.findings):
        print(plan.check.summary())
    if options.weights is None:
        print(f"Note: {architecture.name} with random weights: the features are untrained, expect low accuracy.")
    reported_name, _ = plan.reported
    partners = [Classifier.load(folder) for folder in args.ensemble]  # before the bottleneck pass: fails in seconds
    classes = LabelMap.from_labels([*plan.train["label"], *plan.validation["label"]]).names if partners else []
    for folder, partner in zip(args.ensemble, partners):
        if partner.labels != classes:
            raise LabelsFileError(f"--ensemble {folder} has the classes {partner.labels}, but this run trains "
                                  f"{classes}: an ensemble needs the same class names in the same order.")
    print(f"Dataset {plan.dataset}: {len(frame)} images, {frame['label'].nunique()} classes; protocol "
          f"{plan.protocol}: {len(plan.train)} train, {len(plan.validation)} validation (chooses the epoch), "
          + (f"{len(plan.test)} test (reported, never used for choosing)." if reported_name == "test"
             else "the validation set is also the one reported, as in ML.NET's lab."))
    started = time.perf_counter()
    trained = ImageClassificationTrainer(options).fit(plan.train, plan.validation)
    history = trained.history
    chosen = history[(history["epoch"] == trained.best_epoch) & (history["dataset"] == "Validation")]
    print(f"Trained in {time.perf_counter() - started:.1f} s: best epoch {trained.best_epoch}"
          f"{', stopped early' if trained.stopped_early else ''}; chosen on the validation set"
          + ("" if chosen.empty else f" (validation accuracy {chosen['accuracy'].iloc[0]:.3f}, log-loss "
             f"{chosen['cross_entropy'].iloc[0]:.3f})") + ".")
    if reported_name == "test":
        attach_test_bottlenecks(plan, trained, reuse=args.reuse_cache)
    _report_skipped(trained, workspace)

    reported = trained.test_bottlenecks if reported_name == "test" else trained.validation_bottlenecks
    metrics, evaluations = None, []
    if reported is None or len(reported.features) == 0:
        print(f"No {reported_name} images: skipping evaluation.")
    else:
        probabilities = trained.predict_proba(reported.features)
        metrics = evaluate(reported.labels, probabilities, trained.label_map,
                           name=f"{architecture.name} + softmax head", subset=reported_name)
        print(metrics)
        listing = prediction_listing(reported.image_paths, reported.labels, probabilities, trained.label_map)
        print_prediction_listing(listing, n=10, show_probability=True)
        if args.tta or partners:
            evaluations = _evaluate_end_to_end(trained, reported, reported_name, partners, args.tta)

    if args.fine_tune:  # notebook 07's step: fine-tune, compare before/after, export the fine-tuned model
        return _fine_tune(args, trained, profile.name, workspace)
    if not args.no_export:
        out_dir = export_model(trained, workspace / "model", metrics=metrics, tta=args.tta, evaluations=evaluations)
        print(f"Model exported to {out_dir} — try: python -m workshop_utils predict {out_dir} IMAGE")
    return 0


def _evaluate_end_to_end(trained, reported, subset: str, partners: list, tta: bool) -> list[dict]:
    """Score the reported photos bytes in, with flip TTA and/or as an ensemble with ``partners``; print each
    scorer's metrics and time per photo, then the last one's full block. Returns the model card's records."""
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


def predict(args: argparse.Namespace) -> int:
    model_dir, images = args.model_dir, args.images  # paths that cannot work fail in one line before the model loads
    if model_dir.exists() and not model_dir.is_dir():
        raise ConfigError(f"{model_dir} is a file, not a model folder: pass the folder `run` exported "
                          "(workspace/model), then the images.")
    bad = [f"{path} (a folder: pass its images, e.g. {path / '*.jpg'})" if path.is_dir() else f"{path} (does not exist)"
           for path in images if not path.is_file()] if model_dir.is_dir() else []  # else: Classifier.load says
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        verb = "is not a file" if len(bad) == 1 else "are not files"
        raise ConfigError(f"{len(bad)} of the {len(images)} image paths {verb}: {shown}. Check the paths.")
    _check_model_dirs(args.ensemble)

    classifier = load_scorer(model_dir, args.ensemble, tta=args.tta)
    if (classifier.tta or args.ensemble) and not args.json:
        print(f"Scoring with {classifier.name}{', flip test-time augmentation' if classifier.tta else ''}.")
    failures, timings = 0, []
    for path in images:
        started = time.perf_counter()
        try:
            prediction = classifier.predict_file(path)
        except (InvalidImageError, FileNotFoundError, IsADirectoryError) as exc:
            failures += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        timings.append(time.perf_counter() - started)
        if args.json:
            record = {key: value for key, value in prediction.to_dict().items() if key != "source"}  # = "image"
            print(json.dumps({"image": str(path), **record}))
        else:
            print(f"Image: {path.name} | Predicted: {prediction.label} | Probability: {prediction.probability:.4f}")
    if timings and not args.json:
        steady = f"; then {sum(timings[1:]) / len(timings[1:]) * 1000:.1f} ms per image" if len(timings) > 1 else ""
        print(f"First prediction took {timings[0] * 1000:.0f} ms{steady}.")
    return 1 if failures else 0
