"""The workshop's command line, ``python -m workshop_utils run|predict|serve|publish``: flags and errors here, the
commands' bodies in commands.py. Bad input: one line on stderr (``error: ...``, what to do) and exit code 2, checked
before any long work; Ctrl+C: one line and exit code 130."""
import argparse
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from workshop_utils import __version__, config
from workshop_utils.apps import commands
from workshop_utils.apps.serve.batcher import DEFAULT_MAX_QUEUE
from workshop_utils.apps.serve.server import DEFAULT_SHUTDOWN_TIMEOUT_S
from workshop_utils.apps.serve.uploads import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BYTES, DEFAULT_MAX_CONCURRENCY
from workshop_utils.core.errors import WorkshopError
from workshop_utils.core.formats import SUPPORTED_FORMATS
from workshop_utils.data import PROTOCOLS
from workshop_utils.tooling import publish

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what shells report for a program stopped by Ctrl+C
FLOAT32_MAX = 3.4028234663852886e38  # TensorFlow keeps learning rates and timeouts as float32: larger ones overflow
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024  # no backbone takes less; above 1024 a batch no longer fits in memory
WEIGHTS_SUFFIXES = (".keras", ".h5", ".hdf5", ".weights.json")  # what Keras 3's load_weights reads


def _parsed(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _positive_int(text: str) -> int:
    if (value := _parsed(text, int, "a whole number")) <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _parsed(text, float, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number above 0, got {text}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    if value > FLOAT32_MAX:
        raise argparse.ArgumentTypeError(f"expected a number up to {FLOAT32_MAX:.3g} (float32), got {text}")
    return value


def _image_size(text: str) -> int:
    if not MIN_IMAGE_SIZE <= (value := _positive_int(text)) <= MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"expected a size from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels (the "
                                         f"backbones are trained at 224-299), got {value}")
    return value


def _seed(text: str) -> int:
    if not 0 <= (value := _parsed(text, int, "a whole number")) < 2**32:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {2**32 - 1} (NumPy's range), got {value}")
    return value


def _weights_value(text: str) -> str:
    if text.lower() in {"imagenet", "none", "random"} or text.lower().endswith(WEIGHTS_SUFFIXES):
        return text
    raise argparse.ArgumentTypeError(f"expected 'imagenet', 'none' or a Keras weights file "
                                     f"({', '.join(('.weights.h5',) + WEIGHTS_SUFFIXES)}), got {text!r}")


def _unfreeze_value(text: str) -> float:
    value = _parsed(text, float, "a layer count or a fraction")
    if not value >= 0 or (value >= 1 and value != int(value)):
        raise argparse.ArgumentTypeError(
            f"expected a whole number of layers >= 0 or a fraction between 0 and 1, got {text}")
    return int(value) if value >= 1 or value == 0 else value


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (``error: ...`` and where to look), exit code 2, no usage block."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m workshop_utils", description="Car-damage image classification by transfer "
                     "learning (ML.NET's Image Classification API, in TensorFlow/Keras).")
    parser.add_argument("--version", action="version", version=f"workshop_utils {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = subparsers.add_parser(
        "run", help="load the dataset, compute bottlenecks, train the head, evaluate and export the model",
        description="Runs the whole lab: load → bottleneck phase → training phase → evaluation → export. "
        "Defaults come from the profile (WORKSHOP_PROFILE=full|quick).")
    run.add_argument("--dataset", default=None, help="'sample' (bundled synthetic data, offline), 'car-damage', "
                     "'flowers', 'concrete-cracks', or a folder/CSV path (default: the profile's dataset)")
    run.add_argument("--arch", default=None, help="backbone architecture, e.g. ResnetV250, MobilenetV2, InceptionV3, "
                     "ResnetV2101, EfficientNetLite0, EfficientNetLite1, EfficientNetLite2 (default: the profile's)")
    run.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (ML.NET: 200)")
    run.add_argument("--batch-size", type=_positive_int, default=None, help="training batch size (ML.NET: 10)")
    run.add_argument("--learning-rate", type=_positive_float, default=None, help="initial learning rate (ML.NET: 0.01)")
    run.add_argument("--workspace", type=Path, help="folder for caches, skipped.csv and the exported model (default: "
                     f"$WORKSHOP_WORKSPACE, else the repository's workspace folder, {config.REPO_ROOT / 'workspace'})")
    run.add_argument("--image-dir", type=Path, help="folder holding the images of an index.csv dataset: each row's "
                     "file name is looked up there (default: paths relative to the CSV's folder)")
    run.add_argument("--reuse-cache", action="store_true",
                     help="reuse cached bottlenecks when their fingerprint still matches the images and model")
    run.add_argument("--weights", type=_weights_value, default=None,
                     help="backbone weights: 'imagenet', 'none' (random init) or a weights file path")
    run.add_argument("--image-size", type=_image_size, default=None, help=f"square input size in pixels, "
                     f"{MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} (default: the architecture's own)")
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
    run.add_argument("--fine-tune", action="store_true", help="after the head, fine-tune the top of the backbone on "
                     "augmented images (notebook 07), print before/after metrics and export the fine-tuned model")
    run.add_argument("--unfreeze", type=_unfreeze_value, default=None,
                     help="with --fine-tune: backbone layers to train, counted from the top (a whole number) or a "
                     "fraction of them (0 < N < 1); default: the profile's (full: 1/3)")
    run.add_argument("--fine-tune-epochs", type=_positive_int, default=None,
                     help="with --fine-tune: at most this many epochs (warm-up, cosine decay; early stopping on "
                     "the validation log-loss); the class weighting follows --class-weight")

    predict = subparsers.add_parser("predict", help="classify image files with an exported model", description=(
        "Prints the predicted label and probability for each image, then the time of the first prediction and the "
        "steady-state time per image."))
    predict.add_argument("model_dir", type=Path, help="folder written by `run` (workspace/model)")
    predict.add_argument("images", type=Path, nargs="+", help=f"image files ({SUPPORTED_FORMATS})")
    predict.add_argument("--json", action="store_true", help="print one JSON object per image")
    publish.add_parser(subparsers)

    serve = subparsers.add_parser(
        "serve", help="serve an exported model: a web API (POST /predict) and a one-page web app",
        description="Loads the model once and serves POST /predict (image bytes or a multipart 'file'), "
        "GET /health and a web page at / until Ctrl+C or SIGTERM. Every resource is bounded: upload size "
        "(413), time to send it (408), uploads at once and images queued (503 with Retry-After).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    serve.add_argument("model_dir", type=Path, help="folder written by `run` (workspace/model)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port, 0 to 65535 (0: any free port)")
    serve.add_argument("--max-bytes", type=_positive_int, default=DEFAULT_MAX_BYTES,
                       help="largest upload in bytes (10 MB); larger ones get HTTP 413")
    serve.add_argument("--body-timeout", type=_positive_float, default=DEFAULT_BODY_TIMEOUT_S,
                       help="seconds a client has to send its whole upload; slower ones get HTTP 408")
    serve.add_argument("--max-concurrency", type=_positive_int, default=DEFAULT_MAX_CONCURRENCY,
                       help="uploads read or scored at the same time; more get HTTP 503 with Retry-After")
    serve.add_argument("--max-queue", type=_positive_int, default=DEFAULT_MAX_QUEUE,
                       help="images waiting for the model; more get HTTP 503 with Retry-After")
    serve.add_argument("--shutdown-timeout", type=_positive_float, default=DEFAULT_SHUTDOWN_TIMEOUT_S,
                       help="seconds Ctrl+C or SIGTERM waits for open requests before cancelling them")
    for command in (predict, serve):
        command.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                             help="flip test-time augmentation: average each photo with its mirror (twice the "
                             "cost); default: the model card's 'tta' (off)")
        command.add_argument("--ensemble", type=Path, action="append", default=[], metavar="MODEL2",
                             help="another model folder with the same classes: the probabilities are averaged "
                             "(repeat for more; the cost adds up)")
    return parser


_PATH_ERRORS = {  # Python's own errors about a path the user gave: what to do about each
    FileNotFoundError: "does not exist; check the path",
    NotADirectoryError: "a file is in the way where a folder is expected; move it or choose another path",
    FileExistsError: "a file is in the way where a folder is expected; move it or choose another path",
    IsADirectoryError: "is a folder where a file is expected; give a file",
    PermissionError: "permission denied; choose a path you can read and write, or change its permissions",
}
_USER_ERRORS = (WorkshopError, *_PATH_ERRORS)  # "fix your input": one line instead of a traceback


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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    # Ctrl+C is also noted in interrupts: TensorFlow's C++ code can turn the KeyboardInterrupt into another exception
    interrupts: list[int] = []
    watch = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler  # only it gets signals; a custom one stays

    def note(signum, frame):  # remember the Ctrl+C, then raise KeyboardInterrupt as usual
        interrupts.append(signum)
        signal.default_int_handler(signum, frame)

    if watch:
        signal.signal(signal.SIGINT, note)
    try:
        with warnings.catch_warnings():  # restores the caller's warning display when main() returns
            warnings.showwarning = _show_warning
            return {"run": commands.run, "predict": commands.predict, "serve": commands.serve,
                    "publish": publish.run}[args.command](args)
    except (KeyboardInterrupt, Exception) as exc:
        if interrupts or isinstance(exc, KeyboardInterrupt):  # a Ctrl+C, maybe surfaced as another exception
            print("Interrupted.", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(exc, _USER_ERRORS):
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        raise
    finally:
        if watch:
            signal.signal(signal.SIGINT, signal.default_int_handler)
