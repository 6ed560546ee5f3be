"""Save a trained classifier as a model an application can use without the workshop, and load it back.

:func:`export_model` writes one folder (atomically: built in a temp folder beside it, verified, renamed)::

    model.keras       end-to-end Keras model: encoded image bytes (string, shape [None]) -> probabilities
    saved_model/      TF SavedModel; signature "serving_default": image_bytes (string [None]) ->
                      {"scores": float32 [None, C], "label": string [None]}
    model.pb          frozen GraphDef for ML.NET / TF runtimes, tensors by name:
                        image_bytes:0  string  [None]          input: encoded JPEG/PNG/GIF/BMP bytes
                        pixels:0       float32 [None, H, W, 3] decoded RGB 0-255 (may be fed instead)
                        scores:0       float32 [None, C]       softmax probabilities, classes in labels.txt order
                        label:0        string  [None]          the top class name
    labels.txt        class names, one per line, in score order
    model_card.json   arch, classes, input/output spec, metrics, training options, date, versions, tta

Every form decodes the bytes as stored and so expects upright images: EXIF orientation is read and applied
by :class:`Classifier` (and ``predict``/``serve``), not inside the graph. Every form computes in float32: a
model trained in mixed precision is exported as its float32 copy (:func:`float32_model`).

The ordered class names are also stored inside ``model.keras`` (an extra zip entry, ``workshop_classes.json``,
that Keras' loader ignores), so an edited ``labels.txt`` cannot silently relabel the scores. With
``export_model(..., model=m)`` the model ``m`` is exported as trained (bytes in, or RGB pixels in and wrapped
with :class:`DecodeImageBytes`); without it the model is built from the trained head on the frozen backbone.

:class:`Classifier` loads the folder (``model.keras`` with ``safe_mode=True``; the card is optional, so a plain
``model.save`` + ``labels.txt`` folder loads too) and scores untrusted images; bad bytes raise
:class:`InvalidImageError` (a ``ValueError``). ``tta=True`` averages each photo with its horizontal mirror;
:class:`Ensemble` averages the probabilities of several exports with the same classes (:func:`load_scorer`).
:func:`export_tflite` adds ``model.tflite``.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workshop_utils.architectures import feature_extractor
from workshop_utils.core.errors import ExportError, InteropError
from workshop_utils.core.images import decode_image
from workshop_utils.core.labels import write_labels
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.export.card import (
    CARD_FILE,
    CLASSES_ENTRY,
    FROZEN_GRAPH_FILE,
    LABELS_FILE,
    MODEL_FILE,
    SAVED_MODEL_DIR,
    TFLITE_FILE,
    _check_keras_file,
    _jsonable,
    _model_card,
    _store_classes,
    stored_classes,
)
from workshop_utils.export.graph import (
    INPUT_TENSOR,
    LABEL_TENSOR,
    PIXELS_TENSOR,
    SCORES_TENSOR,
    ModelParts,
    _label_names,
    _serving_functions,
    build_end_to_end_model,
    float32_model,
    model_parts,
    pixels_model,
)
from workshop_utils.interop.frozen_graph import (
    FrozenGraphScorer,
    freeze_concrete_function,
)
from workshop_utils.scoring import Classifier

tf = import_tensorflow()
import keras  # noqa: E402

VERIFY_TOLERANCE = 1e-5


# -- exporting -------------------------------------------------------------------------------------------
def probe_image(image_size: tuple[int, int]) -> bytes:
    """A deterministic PNG (smooth colour gradients) used to check that every exported form agrees."""
    from PIL import Image

    h, w = image_size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 100 * np.sin(x / 5.0 + y / 7.0)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _check_close(what: str, got: Any, expected: np.ndarray) -> None:
    got = np.asarray(got, dtype=np.float64)
    if got.shape != expected.shape or not np.allclose(got, expected, atol=VERIFY_TOLERANCE, rtol=0):
        diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("nan")
        raise ExportError(
            f"Export check failed: {what} gives scores {got.shape} that differ from the in-memory model by {diff:g} "
            f"(tolerance {VERIFY_TOLERANCE:g}). Nothing was written to the destination; please report this."
        )


def _in_memory_scores(model: keras.Model, parts: ModelParts, probe: bytes) -> np.ndarray:
    """What the model handed to the export says about the probe, computed the way it was built to be fed."""
    if parts.bytes_model is model:
        scores = model(tf.constant([probe]), training=False)
    else:  # pixels in: decode exactly as the DecodeImageBytes layer will
        scores = model(decode_image(tf.constant(probe), parts.image_size)[None], training=False)
    return np.asarray(tf.cast(scores, tf.float32), dtype=np.float64)


def _verify(folder: Path, model: keras.Model, parts: ModelParts, trained: Any, labels: list[str],
            built_from_head: bool) -> None:
    """Reload every written form and compare its scores on a probe image with the in-memory model.

    ``model`` is the model as handed to :func:`export_model` (or the one built from the head); when it was
    built from the head, the head on the backbone's features is checked too.
    """
    size = parts.image_size
    probe = probe_image(size)
    expected = _in_memory_scores(model, parts, probe)
    if built_from_head:
        features = feature_extractor(trained.arch, trained.backbone_weights, size)(
            decode_image(tf.constant(probe), size)[None], training=False
        )
        if hasattr(trained, "predict_proba"):
            reference = np.asarray(trained.predict_proba(np.asarray(features)), dtype=np.float64)
        else:
            kernel, bias = np.asarray(trained.kernel, np.float64), np.asarray(trained.bias, np.float64)
            logits = np.asarray(features, np.float64) @ kernel + bias
            reference = np.exp(logits - logits.max(axis=1, keepdims=True))
            reference /= reference.sum(axis=1, keepdims=True)
        _check_close("the trained head on backbone features", expected, reference)
    if parts.bytes_model is not model:
        _check_close("the model wrapped with DecodeImageBytes", parts.bytes_model(tf.constant([probe])), expected)
    _check_keras_file(folder / MODEL_FILE, "Please report this.")
    if stored_classes(folder / MODEL_FILE) != labels:
        raise ExportError(f"Export check failed: {MODEL_FILE} does not carry the class names; please report this.")
    reloaded = keras.models.load_model(folder / MODEL_FILE, safe_mode=True)
    _check_close(MODEL_FILE, reloaded(tf.constant([probe]), training=False), expected)
    served = tf.saved_model.load(str(folder / SAVED_MODEL_DIR)).signatures["serving_default"](
        image_bytes=tf.constant([probe])
    )
    _check_close(f"{SAVED_MODEL_DIR} (serving_default)", served["scores"], expected)
    try:
        graph = FrozenGraphScorer(folder / FROZEN_GRAPH_FILE, INPUT_TENSOR, SCORES_TENSOR, None, labels)
        FrozenGraphScorer(folder / FROZEN_GRAPH_FILE, PIXELS_TENSOR, LABEL_TENSOR, size, labels)  # names exist
    except InteropError as exc:
        raise ExportError(f"Export check failed: the frozen graph lacks its documented tensors: {exc}") from exc
    _check_close(FROZEN_GRAPH_FILE, graph.predict_proba([probe]), expected)


def _model_to_export(trained: Any, model: keras.Model | None) -> tuple[keras.Model, ModelParts]:
    """The model handed over (checked against the class names), or the one built from the trained head."""
    labels = _label_names(trained)
    if model is None:
        built = build_end_to_end_model(trained)
        return built, model_parts(built, ExportError)
    model = float32_model(model)  # a mixed-precision model is exported as its float32 copy
    parts = model_parts(model, ExportError)
    if parts.num_classes != len(labels):
        raise ExportError(
            f"Model {model.name!r} outputs {parts.num_classes} scores but the trained classifier has {len(labels)} "
            f"classes ({', '.join(labels)}); pass the model trained for these classes."
        )
    return model, parts


def _write_export(folder: Path, trained: Any, metrics: Any, verify: bool, model: keras.Model | None = None,
                  scoring: dict[str, Any] | None = None) -> None:
    labels = _label_names(trained)
    source, parts = _model_to_export(trained, model)
    size = parts.image_size
    parts.bytes_model.save(folder / MODEL_FILE)
    _store_classes(folder / MODEL_FILE, labels)
    write_labels(labels, folder / LABELS_FILE)

    (serve, spec), frozen = _serving_functions(parts, labels)
    archive = keras.export.ExportArchive()
    archive.track(parts.bytes_model)
    archive.add_endpoint("serve", serve, input_signature=[spec])
    archive.write_out(str(folder / SAVED_MODEL_DIR), verbose=False)

    graph_def, outputs = freeze_concrete_function(frozen.get_concrete_function())
    if sorted(outputs) != sorted([LABEL_TENSOR, SCORES_TENSOR]):
        raise ExportError(
            f"Freezing named the outputs {outputs}, not {SCORES_TENSOR} and {LABEL_TENSOR}; please report this."
        )
    (folder / FROZEN_GRAPH_FILE).write_bytes(graph_def.SerializeToString())

    if verify:
        _verify(folder, source, parts, trained, labels, built_from_head=model is None)
    # The card goes last: a folder with a model card is a complete export.
    card = _model_card(trained, labels, size, metrics)
    card["source"] = ("built from the trained head on the frozen backbone" if model is None else
                      f"the Keras model {model.name!r} as trained (its own weights), "
                      f"{'bytes' if parts.bytes_model is source else 'pixels'} in"
                      + ("; trained in mixed precision, exported as its float32 copy" if source is not model else ""))
    card["files"][MODEL_FILE] += f"; the ordered class names are stored inside it ({CLASSES_ENTRY})"
    card.update(_jsonable(scoring or {}))  # "tta" (Classifier.load's default), "evaluations" with TTA or ensembles
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _replace_folder(staged: Path, out_dir: Path) -> None:
    """Move the finished temp folder to out_dir, swapping out an existing export without a half-state."""
    if not out_dir.exists():
        os.replace(staged, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out_dir, old)
    try:
        os.replace(staged, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_model(
    trained: Any,
    out_dir: str | Path,
    metrics: Any = None,
    overwrite: bool = True,
    verify: bool = True,
    *,
    model: keras.Model | None = None,
    tta: bool = False,
    evaluations: Sequence[dict[str, Any]] = (),
    fine_tuning: dict[str, Any] | None = None,
) -> Path:
    """Write model.keras, saved_model/, model.pb, labels.txt and model_card.json to ``out_dir`` (atomically).

    ``tta`` goes into the card as ``"tta"``: whether :meth:`Classifier.load` averages each photo with its mirror
    by default (off: it doubles the cost). ``evaluations``: extra metric records for the card (e.g. with TTA or
    an ensemble, see ``run --tta/--ensemble``), each saying how it was scored.

    ``model``: the end-to-end Keras model to export as trained (e.g. composed in notebook 05 or fine-tuned in
    07): bytes in (first layer DecodeImageBytes) or RGB 0–255 pixels in (wrapped with DecodeImageBytes here).
    Every written form is checked against *its* in-memory scores. Without it the model is built from
    ``trained``'s head on the frozen backbone (:func:`build_end_to_end_model`). ``trained`` supplies the class
    names, architecture and history for the model card; the class names are also stored inside model.keras.

    Everything is written to a temp folder beside ``out_dir``, reloaded and compared on a probe image
    (``verify``), then renamed into place; on any failure nothing changes at ``out_dir``. An existing
    export there is replaced (``overwrite``); a non-empty folder that is not an export is never replaced.
    Tensor names of model.pb: ``image_bytes:0`` (string [None]) → ``scores:0`` (float [None, C]) and
    ``label:0`` (string [None]); ``pixels:0`` (float [None, H, W, 3], RGB 0–255) may be fed instead.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir} exists and is a file; pass a folder path for the export.")
        if not overwrite:
            raise ExportError(f"{out_dir} already exists; pass overwrite=True or choose another folder.")
        if any(out_dir.iterdir()) and not (out_dir / CARD_FILE).is_file():
            raise ExportError(
                f"{out_dir} is not empty and holds no {CARD_FILE}, so it is not a previous export; refusing to "
                "replace it. Choose an empty or new folder (e.g. workspace/model)."
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staged = out_dir.with_name(f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}")
    staged.mkdir()  # (not tempfile.mkdtemp: its 0700 mode would stay on the export)
    scoring: dict[str, Any] = {"tta": bool(tta)}
    if evaluations:
        scoring["evaluations"] = list(evaluations)
    if fine_tuning:  # the fine-tuning recipe (schedule, epochs, class weights, …) of a fine-tuned model
        scoring["fine_tuning"] = dict(fine_tuning)
    try:
        _write_export(staged, trained, metrics, verify, model=model, scoring=scoring)
        _replace_folder(staged, out_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return out_dir


def export_tflite(out_dir: str | Path) -> Path:
    """Add ``model.tflite`` to an export: float32 [1, H, W, 3] RGB 0–255 in, [1, C] probabilities out.

    TFLite builtins cannot decode image bytes, so the app decodes and resizes (bilinear) itself and feeds
    pixels; the model card's ``tflite`` entry records this. Needs a TensorFlow with ``tf.lite``.
    """
    out_dir = Path(out_dir).expanduser()
    converter_cls = getattr(getattr(tf, "lite", None), "TFLiteConverter", None)
    if converter_cls is None:
        raise ExportError(
            f"TensorFlow {tf.__version__} has no tf.lite.TFLiteConverter; install a full TensorFlow build."
        )
    classifier = Classifier.load(out_dir)
    float_model = pixels_model(classifier.model)
    h, w = classifier.image_size
    with tempfile.TemporaryDirectory(prefix="tflite-") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(float_model)
        archive.add_endpoint(
            "serve",
            lambda rgb: float_model(rgb, training=False),
            input_signature=[tf.TensorSpec([1, h, w, 3], tf.float32, name="rgb_0_255")],
        )
        archive.write_out(tmp, verbose=False)
        try:
            content = converter_cls.from_saved_model(tmp).convert()
        except Exception as exc:
            raise ExportError(f"TFLite conversion of {out_dir / MODEL_FILE} failed: {exc}") from exc
    target = out_dir / TFLITE_FILE
    staged = out_dir / f".{TFLITE_FILE}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staged.write_bytes(content)
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)
    if classifier.card is not None:
        card = dict(classifier.card)
        card["files"] = {**card.get("files", {}), TFLITE_FILE: "TFLite flatbuffer, float32 pixels in"}
        card["tflite"] = {"input": {"dtype": "float32", "shape": [1, h, w, 3],
                                    "description": "RGB 0-255, bilinear-resized; decode the image yourself"},
                          "output": {"dtype": "float32", "shape": [1, len(classifier.labels)]}}
        staged_card = out_dir / f".{CARD_FILE}.partial-{uuid.uuid4().hex[:8]}"
        staged_card.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(staged_card, out_dir / CARD_FILE)
    return target
