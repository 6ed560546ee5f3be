"""Write a trained classifier as a folder an application can use without the workshop (and add TFLite to it).

The folder: model.keras (bytes -> probabilities), saved_model/ ("serving_default": image_bytes -> scores, label),
model.pb (frozen: image_bytes:0, or pixels:0 RGB 0-255, -> scores:0 and label:0), labels.txt and model_card.json.
Every form decodes bytes as stored (upright images expected: Classifier applies EXIF) and computes in float32.
"""
from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from workshop_utils.architectures import feature_extractor
from workshop_utils.core.errors import ExportError, InteropError
from workshop_utils.core.fsutil import atomic_folder, atomic_json, atomic_write
from workshop_utils.core.images import decode_image
from workshop_utils.core.labels import write_labels
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.export.card import (CARD_FILE, FROZEN_GRAPH_FILE, LABELS_FILE, MODEL_FILE, SAVED_MODEL_DIR,
                                        TFLITE_FILE, check_keras_file, jsonable, model_card, store_classes,
                                        stored_classes)
from workshop_utils.export.graph import (INPUT_TENSOR, LABEL_TENSOR, PIXELS_TENSOR, SCORES_TENSOR, ModelParts,
                                         build_end_to_end_model, float32_model, label_names, model_parts,
                                         serving_functions)
from workshop_utils.interop.frozen_graph import FrozenGraphScorer, freeze_concrete_function
from workshop_utils.scoring import Classifier

tf = import_tensorflow()
import keras  # noqa: E402

VERIFY_TOLERANCE = 1e-5


def probe_image(image_size: tuple[int, int]) -> bytes:
    """A deterministic PNG (smooth colour gradients) used to check that every exported form agrees."""
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
            f"(tolerance {VERIFY_TOLERANCE:g}). Nothing was written to the destination; please report this.")


def _verify(folder: Path, model: keras.Model, parts: ModelParts, trained: Any, labels: list[str],
            built_from_head: bool) -> None:
    """Reload every written form and compare its scores on a probe image with ``model`` (as handed over or built
    from the head; then the head on the backbone's features is checked too)."""
    size = parts.image_size
    probe = probe_image(size)
    pixels = decode_image(tf.constant(probe), size)[None]  # decoded exactly as the DecodeImageBytes layer does
    scores = model(tf.constant([probe]) if parts.bytes_model is model else pixels, training=False)
    expected = np.asarray(tf.cast(scores, tf.float32), dtype=np.float64)
    if built_from_head:
        features = feature_extractor(trained.arch, trained.backbone_weights, size)(pixels, training=False)
        reference = np.asarray(trained.predict_proba(np.asarray(features)), dtype=np.float64)
        _check_close("the trained head on backbone features", expected, reference)
    if parts.bytes_model is not model:
        _check_close("the model wrapped with DecodeImageBytes", parts.bytes_model(tf.constant([probe])), expected)
    check_keras_file(folder / MODEL_FILE, "Please report this.")
    if stored_classes(folder / MODEL_FILE) != labels:
        raise ExportError(f"Export check failed: {MODEL_FILE} does not carry the class names; please report this.")
    reloaded = keras.models.load_model(folder / MODEL_FILE, safe_mode=True)
    _check_close(MODEL_FILE, reloaded(tf.constant([probe]), training=False), expected)
    serving = tf.saved_model.load(str(folder / SAVED_MODEL_DIR)).signatures["serving_default"]
    _check_close(f"{SAVED_MODEL_DIR} (serving_default)", serving(image_bytes=tf.constant([probe]))["scores"], expected)
    try:  # InteropError: a tensor name is missing (FrozenGraphScorer lists the graph's tensors)
        graph = FrozenGraphScorer(folder / FROZEN_GRAPH_FILE, INPUT_TENSOR, SCORES_TENSOR, None, labels)
        FrozenGraphScorer(folder / FROZEN_GRAPH_FILE, PIXELS_TENSOR, LABEL_TENSOR, size, labels)  # names exist
    except InteropError as exc:
        raise ExportError(f"Export check failed: the frozen graph lacks its documented tensors: {exc}") from exc
    _check_close(FROZEN_GRAPH_FILE, graph.predict_proba([probe]), expected)


def _write_export(folder: Path, trained: Any, metrics: Any, verify: bool, model: keras.Model | None = None,
                  scoring: dict[str, Any] | None = None) -> None:
    labels = label_names(trained)
    # the model handed over, as its float32 copy if it is mixed precision; else the one built from the head
    source = build_end_to_end_model(trained) if model is None else float32_model(model)
    parts = model_parts(source, ExportError)
    if parts.num_classes != len(labels):
        raise ExportError(
            f"Model {source.name!r} outputs {parts.num_classes} scores but the trained classifier has {len(labels)} "
            f"classes ({', '.join(labels)}); pass the model trained for these classes.")
    parts.bytes_model.save(folder / MODEL_FILE)
    store_classes(folder / MODEL_FILE, labels)
    write_labels(labels, folder / LABELS_FILE)

    (serve, spec), frozen = serving_functions(parts, labels)
    archive = keras.export.ExportArchive()
    archive.track(parts.bytes_model)
    archive.add_endpoint("serve", serve, input_signature=[spec])
    archive.write_out(str(folder / SAVED_MODEL_DIR), verbose=False)

    graph_def, outputs = freeze_concrete_function(frozen.get_concrete_function())
    if sorted(outputs) != sorted([LABEL_TENSOR, SCORES_TENSOR]):
        raise ExportError(f"Freezing named the outputs {outputs}, not {SCORES_TENSOR} and {LABEL_TENSOR}; please "
                          "report this.")
    (folder / FROZEN_GRAPH_FILE).write_bytes(graph_def.SerializeToString())

    if verify:
        _verify(folder, source, parts, trained, labels, built_from_head=model is None)
    how = ("built from the trained head on the frozen backbone" if model is None else
           f"the Keras model {model.name!r} as trained (its own weights), "
           f"{'bytes' if parts.bytes_model is source else 'pixels'} in"
           + ("; trained in mixed precision, exported as its float32 copy" if source is not model else ""))
    card = model_card(trained, labels, parts.image_size, metrics, how)
    card.update(jsonable(scoring or {}))  # "tta" (Classifier.load's default), "evaluations" with TTA or ensembles
    atomic_json(folder / CARD_FILE, card, ensure_ascii=False)  # last: a folder with a card is a complete export


def export_model(trained: Any, out_dir: str | Path, metrics: Any = None, overwrite: bool = True, verify: bool = True,
                 *, model: keras.Model | None = None, tta: bool = False, evaluations: Sequence[dict[str, Any]] = (),
                 fine_tuning: dict[str, Any] | None = None) -> Path:
    """Write the export folder ``out_dir`` atomically; on any failure nothing changes there.
    ``model``: the end-to-end Keras model as trained (bytes in, or RGB 0–255 pixels in: wrapped with
    DecodeImageBytes); without it, ``trained``'s head on the frozen backbone. ``trained`` gives the class names,
    architecture and history. The card records ``tta`` (:meth:`Classifier.load`'s default), ``evaluations``
    (e.g. with TTA or an ensemble) and the ``fine_tuning`` recipe. ``verify``: reload and compare every form on a
    probe image first. An export there is replaced (``overwrite``); a folder that is not one, never."""
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir} exists and is a file; pass a folder path for the export.")
        if not overwrite:
            raise ExportError(f"{out_dir} already exists; pass overwrite=True or choose another folder.")
        if any(out_dir.iterdir()) and not (out_dir / CARD_FILE).is_file():
            raise ExportError(
                f"{out_dir} is not empty and holds no {CARD_FILE}, so it is not a previous export; refusing to "
                "replace it. Choose an empty or new folder (e.g. workspace/model).")
    scoring: dict[str, Any] = {"tta": bool(tta)}
    if evaluations:
        scoring["evaluations"] = list(evaluations)
    if fine_tuning:  # the fine-tuning recipe (schedule, epochs, class weights, …) of a fine-tuned model
        scoring["fine_tuning"] = dict(fine_tuning)
    with atomic_folder(out_dir) as staged:
        _write_export(staged, trained, metrics, verify, model=model, scoring=scoring)
    return out_dir


def export_tflite(out_dir: str | Path) -> Path:
    """Add ``model.tflite`` to an export: float32 [1, H, W, 3] RGB 0–255 in, [1, C] probabilities out.
    TFLite builtins cannot decode image bytes: the app decodes and resizes (bilinear) itself (the card says so)."""
    out_dir = Path(out_dir).expanduser()
    converter_cls = getattr(getattr(tf, "lite", None), "TFLiteConverter", None)
    if converter_cls is None:
        raise ExportError(f"TensorFlow {tf.__version__} has no tf.lite.TFLiteConverter; install a full TensorFlow "
                          "build.")
    classifier = Classifier.load(out_dir)
    float_model = classifier.pixels_model
    h, w = classifier.image_size
    with tempfile.TemporaryDirectory(prefix="tflite-") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(float_model)
        archive.add_endpoint("serve", lambda rgb: float_model(rgb, training=False),
                             input_signature=[tf.TensorSpec([1, h, w, 3], tf.float32, name="rgb_0_255")])
        archive.write_out(tmp, verbose=False)
        try:
            content = converter_cls.from_saved_model(tmp).convert()
        except Exception as exc:
            raise ExportError(f"TFLite conversion of {out_dir / MODEL_FILE} failed: {exc}") from exc
    target = atomic_write(out_dir / TFLITE_FILE, content)
    if classifier.card is not None:
        card = dict(classifier.card)
        card["files"] = {**card.get("files", {}), TFLITE_FILE: "TFLite flatbuffer, float32 pixels in"}
        card["tflite"] = {"input": {"dtype": "float32", "shape": [1, h, w, 3],
                                    "description": "RGB 0-255, bilinear-resized; decode the image yourself"},
                          "output": {"dtype": "float32", "shape": [1, len(classifier.labels)]}}
        atomic_json(out_dir / CARD_FILE, card, ensure_ascii=False)
    return target
