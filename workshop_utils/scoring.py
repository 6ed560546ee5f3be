"""Score photos with an exported model folder: :class:`Classifier` (one export, optional flip TTA),
:class:`Ensemble` (several exports averaged) and :func:`load_scorer` (what ``predict`` and ``serve`` use)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workshop_utils.core.errors import ConfigError, LabelsFileError, ModelFolderError
from workshop_utils.core.formats import DEFAULT_MAX_PIXELS, check_image_bytes, undecodable
from workshop_utils.core.images import decode_images
from workshop_utils.core.labels import load_labels
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.core.scorer import ImageScorer
from workshop_utils.export.card import (CARD_FILE, LABELS_FILE, MODEL_FILE, REQUIRED_FILES, check_keras_file,
                                        stored_classes)
from workshop_utils.export.graph import (DecodeImageBytes, build_end_to_end_model, float32_model, label_names,
                                         model_parts)

tf = import_tensorflow()
import keras  # noqa: E402


def _check_labels(folder: Path, labels: list[str], stored: list[str] | None, card: Any, outputs: int, fix: str) -> None:
    """labels.txt must list the classes in the order stored inside model.keras, else in the card's ``classes``;
    with neither (a plain Keras folder) it is trusted, without a warning, when its count fits (Classifier checks)."""
    if len(labels) != outputs:
        return  # Classifier() says "N labels but the model has M outputs"
    if stored is not None:
        if labels != stored:
            raise LabelsFileError(
                f"{folder / LABELS_FILE} lists the classes as {labels}, but {folder / MODEL_FILE} was trained with "
                f"{stored} (in this order, stored inside it): labels.txt was edited or belongs to another model, "
                f"and its names would be wrong. Restore labels.txt to that order (one name per line). {fix}")
        return
    classes = card.get("classes") if isinstance(card, dict) else None
    if isinstance(classes, list) and classes and [str(c) for c in classes] != labels:
        raise LabelsFileError(
            f"{folder / LABELS_FILE} lists the classes as {labels}, but {folder / CARD_FILE} says the model "
            f"({folder / MODEL_FILE}) was trained with {classes}: labels.txt was edited or belongs to another "
            f"model. Restore labels.txt to that order (one name per line). {fix}")


class Classifier(ImageScorer):
    """A loaded export: score untrusted image bytes, files or a frame of paths without the workshop's trainer.
    Each photo is turned upright (EXIF) before the model's own decoding; cut-short files are refused; float32.
    ``tta``: each photo is also scored mirrored and the two rows averaged (twice the model's work)."""

    def __init__(self, model: keras.Model, labels: Sequence[str], *, card: dict[str, Any] | None = None,
                 directory: Path | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS, tta: bool = False) -> None:
        parts = model_parts(float32_model(model))  # scored in float32, even a model trained in mixed precision
        self.model = parts.bytes_model  # a pixels-in model is wrapped with DecodeImageBytes
        self.pixels_model = parts.pixels  # RGB 0-255 -> probabilities: what the bytes reach after decoding
        self.labels = list(labels)
        if len(self.labels) != int(model.output_shape[-1]):
            raise LabelsFileError(f"{len(self.labels)} labels but the model has {model.output_shape[-1]} outputs"
                                  f"{f' in {directory}' if directory else ''}; the labels.txt does not belong to "
                                  "this model. Re-export the folder.")
        self.image_size, self.card, self.directory, self.max_pixels = parts.image_size, card, directory, max_pixels
        self.tta = bool(tta)
        self._model_name = str(model.name)  # as saved (a pixels-in model's wrapper is called "<name>_bytes")
        size, signature = self.image_size, [tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32)]

        def plain(images: Any, orientations: Any) -> Any:  # the model's own decoding, each photo upright first
            return self.pixels_model(decode_images(images, size, orientations), training=False)

        def mirrored(images: Any, orientations: Any) -> Any:  # photos and their mirrors in one model call
            pixels = decode_images(images, size, orientations)
            both = self.pixels_model(tf.concat([pixels, tf.reverse(pixels, axis=[2])], axis=0), training=False)
            n = tf.shape(pixels)[0]
            return (both[:n] + both[n:]) / 2.0

        self._serve = tf.function(plain, input_signature=signature, reduce_retracing=True)
        self._serve_tta = tf.function(mirrored, input_signature=signature, reduce_retracing=True)

    @classmethod
    def load(cls, model_dir: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, tta: bool | None = None
             ) -> "Classifier":
        """Load a model folder: model.keras (safe_mode=True) and labels.txt, plus model_card.json when present.
        A plain Keras folder (``model.save(...)`` bytes or pixels in, and labels.txt) loads too. ``tta``: average
        each photo with its mirror; None takes the card's ``"tta"`` (off when absent)."""
        folder = Path(model_dir).expanduser()
        fix = (f"Re-export it with workshop_utils.export.writer.export_model(trained, {str(folder)!r}) "
               "or `python -m workshop_utils run`.")
        if not folder.is_dir():
            raise ModelFolderError(f"Model folder {str(folder)!r} does not exist. {fix}")
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if missing:
            raise ModelFolderError(f"Model folder {str(folder)!r} is missing {', '.join(missing)}. {fix}")
        check_keras_file(folder / MODEL_FILE, fix)
        stored = stored_classes(folder / MODEL_FILE)
        try:
            model = keras.models.load_model(folder / MODEL_FILE, safe_mode=True,
                                            custom_objects={"DecodeImageBytes": DecodeImageBytes})
        except Exception as exc:
            raise ModelFolderError(f"Could not load {folder / MODEL_FILE}: {exc}. {fix}") from exc
        card = None
        if (folder / CARD_FILE).is_file():
            try:
                card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ModelFolderError(f"{folder / CARD_FILE} is not valid JSON ({exc}); fix or delete it. "
                                       f"{fix}") from exc
        labels = load_labels(folder / LABELS_FILE)
        _check_labels(folder, labels, stored, card, int(model.output_shape[-1]), fix)
        card = card if isinstance(card, dict) else None
        tta = bool(card and card.get("tta") is True) if tta is None else tta
        return cls(model, labels, card=card, directory=folder, max_pixels=max_pixels, tta=tta)

    @classmethod
    def from_model(cls, model: keras.Model, labels: Sequence[str],
                   max_pixels: int | None = DEFAULT_MAX_PIXELS, tta: bool = False) -> "Classifier":
        """An in-memory Classifier for any end-to-end model (bytes in, or RGB 0–255 pixels in), no files."""
        return cls(model, labels, max_pixels=max_pixels, tta=tta)

    @classmethod
    def from_trained(cls, trained: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS, tta: bool = False
                     ) -> "Classifier":
        """An in-memory Classifier for a just-trained head (same model export_model saves), no files."""
        return cls(build_end_to_end_model(trained), label_names(trained), max_pixels=max_pixels, tta=tta)

    def predict_proba(self, images: Sequence[bytes], names: Sequence[str | Path | None] | None = None,
                      *, tta: bool | None = None) -> np.ndarray:
        """Probabilities (N, C) for encoded images, each turned upright by its EXIF orientation first; ``tta``
        (None: the classifier's setting) averages each with its mirror. Bad bytes raise InvalidImageError."""
        names = list(names) if names is not None else [None] * len(images)
        if not len(images):
            return np.zeros((0, len(self.labels)))
        orientations = [check_image_bytes(data, name=name, max_pixels=self.max_pixels, complete=True).orientation
                        for data, name in zip(images, names)]
        score = self._serve_tta if (self.tta if tta is None else tta) else self._serve
        try:
            scores = score(tf.constant([bytes(b) for b in images]), tf.constant(orientations, tf.int32))
        except tf.errors.InvalidArgumentError as exc:  # truncated/corrupt data behind a valid header
            raise undecodable(names[0] if len(names) == 1 else None, exc, len(names)) from exc
        return np.asarray(scores, dtype=np.float64)

    def __repr__(self) -> str:
        where = f" from {str(self.directory)!r}" if self.directory else ""
        h, w = self.image_size
        return (f"Classifier({(self.card or {}).get('arch', self.model.name)}{where}, {len(self.labels)} classes, "
                f"image size {h}x{w}{', flip TTA' if self.tta else ''})")

    @property
    def name(self) -> str:
        """What messages and the web API call the model: the card's architecture, else the Keras model's name."""
        return str((self.card or {}).get("arch", self._model_name))


class Ensemble(ImageScorer):
    """Several classifiers with the same classes, in the same order: their probabilities averaged.
    Same ``predict_*`` API as :class:`Classifier`; each member decodes and resizes the photo its own way (its
    own image size), so members with different backbones mix. The cost is the sum of the members'."""

    def __init__(self, members: Sequence[Classifier]) -> None:
        self.members = list(members)
        if len(self.members) < 2:
            raise ConfigError(f"An ensemble needs at least two classifiers, got {len(self.members)}.")
        first = self.members[0]
        for other in self.members[1:]:
            if list(other.labels) != list(first.labels):
                raise LabelsFileError(  # (a folder's path, else the model's name)
                    f"Cannot average {first.directory or repr(first.name)} (classes {first.labels}) with "
                    f"{other.directory or repr(other.name)} (classes {other.labels}): an ensemble needs the same "
                    "class names in the same order.")
        self.labels = list(first.labels)
        self.max_pixels = min((m.max_pixels for m in self.members if m.max_pixels is not None), default=None)
        self.image_size = first.image_size
        self.directory = first.directory
        self.card = {"arch": self.name, "ensemble": self.describe()}

    @classmethod
    def load(cls, model_dirs: Sequence[str | Path], max_pixels: int | None = DEFAULT_MAX_PIXELS,
             tta: bool | None = None) -> "Ensemble":
        """Each folder's :meth:`Classifier.load`; ``tta`` (None: the first folder's card says) is the same for all."""
        first = Classifier.load(model_dirs[0], max_pixels=max_pixels, tta=tta)
        rest = [Classifier.load(folder, max_pixels=max_pixels, tta=first.tta) for folder in model_dirs[1:]]
        return cls([first, *rest])

    @property
    def name(self) -> str:
        return " + ".join(m.name for m in self.members)

    @property
    def tta(self) -> bool:
        return all(m.tta for m in self.members)

    def describe(self) -> list[dict[str, Any]]:
        """One record per member for cards and /health: folder name (not its path), architecture, tta."""
        return [{"folder": None if m.directory is None else Path(m.directory).name, "arch": m.name, "tta": m.tta}
                for m in self.members]

    def member_proba(self, images: Sequence[bytes], names: Sequence[str | Path | None] | None = None,
                     *, tta: bool | None = None) -> list[np.ndarray]:
        """Each member's probabilities (N, C), in member order (to compare the members with their average)."""
        return [m.predict_proba(images, names, tta=tta) for m in self.members]

    def predict_proba(self, images: Sequence[bytes], names: Sequence[str | Path | None] | None = None,
                      *, tta: bool | None = None) -> np.ndarray:
        """The members' probabilities (N, C) averaged; bad bytes raise InvalidImageError as Classifier does."""
        return np.mean(self.member_proba(images, names, tta=tta), axis=0)

    def __repr__(self) -> str:
        return f"Ensemble({', '.join(repr(m) for m in self.members)})"


def load_scorer(model_dir: str | Path, ensemble: Sequence[str | Path] = (), *, tta: bool | None = None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Classifier | Ensemble:
    """What ``predict`` and ``serve`` score with: the folder's Classifier, or an Ensemble with the other folders."""
    if not ensemble:
        return Classifier.load(model_dir, max_pixels=max_pixels, tta=tta)
    return Ensemble.load([model_dir, *ensemble], max_pixels=max_pixels, tta=tta)
