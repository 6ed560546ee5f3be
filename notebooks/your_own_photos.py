"""Your own photos in plain Keras: a folder of class folders in, a served model out (notebook 10 as one script).

    python notebooks/your_own_photos.py PHOTOS_DIR OUT_DIR [--epochs 20]
    python -m workshop_utils serve OUT_DIR        # then open http://127.0.0.1:8000/

Check the photos (copies dropped, classes big enough), split 70/15/15 (stratified, seeded), tf.data pipelines,
a frozen EfficientNet-Lite0 + softmax head (class weights, early stopping, a checkpoint), fine-tune its top third
(BatchNorm frozen), evaluate once on the test set, export model.keras + labels.txt + model_card.json.
WORKSHOP_PROFILE=quick: 96x96 pixels and 2 epochs per phase (a smoke test, not a good model).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, classification_report
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight

from workshop_utils.core.runtime import import_tensorflow  # silences TensorFlow's logs, then imports it
from workshop_utils.data import load_images_from_directory, validate_images
from workshop_utils.backbones.efficientnet_lite import build_efficientnet_lite0  # keras.applications-style, offline weights
from workshop_utils.quality import check_dataset

tf = import_tensorflow()
import keras  # noqa: E402

QUICK = os.environ.get("WORKSHOP_PROFILE", "").strip().lower() == "quick"
SIZE, BATCH, SEED, MIN_PER_CLASS, PATIENCE = (96, 96) if QUICK else (224, 224), 32, 0, 10, 3


def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A file -> float RGB 0-255 pixels, decoded and resized as the served model will (antialiased bilinear)."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)  # EXIF is ignored
    return tf.image.resize(image, SIZE, antialias=True), label


def pipeline(part, shuffle: bool = False) -> tf.data.Dataset:
    """(pixels, class index) batches of one set: decoded once (cache), reshuffled every epoch, prefetched."""
    ds = tf.data.Dataset.from_tensor_slices((part["image_path"].tolist(), part["y"].to_numpy()))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).cache()
    return (ds.shuffle(len(part), seed=SEED) if shuffle else ds).batch(BATCH).prefetch(tf.data.AUTOTUNE)


def main(argv: list[str] | None = None) -> int:
    """Check, split, train, fine-tune, evaluate and export; a folder it cannot use exits 2 with what to fix."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos_dir", type=Path, help="a folder with one sub-folder of photos per class")
    parser.add_argument("out_dir", type=Path, help="the model folder to write (for workshop_utils predict/serve)")
    parser.add_argument("--epochs", type=int, default=2 if QUICK else 20, help="at most this many epochs per phase")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(SEED)
    photos = args.photos_dir.expanduser().absolute()

    # 1. Check the folder: exact copies kept once; loose photos, unreadable files and small classes refused.
    table = check_dataset(load_images_from_directory(photos), drop=True, near=False).frame
    loose = [p for p in table["image_path"] if Path(p).parent == photos]
    if loose:
        parser.error(f"{len(loose)} photo(s) directly in {photos}, e.g. {Path(loose[0]).name}: move them into "
                     "class folders.")
    table["label"] = [Path(p).relative_to(photos).parts[0] for p in table["image_path"]]  # the top folder
    bad = validate_images(table, progress=False)
    if len(bad):
        parser.error(f"{len(bad)} unreadable photo(s), e.g. {bad.path.iloc[0]}: {bad.reason.iloc[0]}; delete or "
                     "re-save them as JPEG.")
    counts = table["label"].value_counts().sort_index()
    if len(counts) < 2 or counts.min() < MIN_PER_CLASS:
        parser.error(f"{photos}: need at least 2 class folders with {MIN_PER_CLASS}+ photos each (photos inside "
                     f"them, not loose), found {counts.to_dict()}; add photos or remove the small folders.")
    classes = list(counts.index)
    table["y"] = table["label"].map(classes.index)

    # 2. Split 70/15/15, stratified and seeded; the test set comes off first and is used once, at the end.
    rest, test = train_test_split(table, test_size=0.15, stratify=table["y"], random_state=SEED)
    train, val = train_test_split(rest, test_size=0.15 / 0.85, stratify=rest["y"], random_state=SEED)
    train_ds, val_ds, test_ds = pipeline(train, shuffle=True), pipeline(val), pipeline(test)

    # 3. Pixels 0-255 -> flip (training only) -> frozen backbone, its Rescaling inside -> dropout -> softmax.
    backbone = build_efficientnet_lite0(include_top=False, pooling="avg", weights="imagenet", input_shape=(*SIZE, 3))
    backbone.trainable = False
    pixels = keras.Input((*SIZE, 3), name="pixels")
    features = backbone(keras.layers.RandomFlip("horizontal")(pixels), training=False)  # BatchNorm: inference mode
    outputs = keras.layers.Dense(len(classes), activation="softmax", name="head")(keras.layers.Dropout(0.2)(features))
    model = keras.Model(pixels, outputs, name="your_own_photos")
    class_weight = dict(enumerate(compute_class_weight("balanced", classes=np.arange(len(classes)), y=train["y"])))

    def fit(learning_rate: float, checkpoint: str, threshold: float | None = None) -> keras.callbacks.History:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        callbacks = [keras.callbacks.EarlyStopping(patience=PATIENCE, restore_best_weights=True),
                     keras.callbacks.ModelCheckpoint(checkpoint, save_best_only=True, save_weights_only=True,
                                                     initial_value_threshold=threshold)]
        return model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, class_weight=class_weight,
                         callbacks=callbacks, shuffle=False, verbose=2)  # the dataset shuffles itself

    with tempfile.TemporaryDirectory(prefix="your-own-photos-") as scratch:
        best = os.path.join(scratch, "best.weights.h5")  # the best weights so far, of both phases
        head = fit(1e-3, best)
        backbone.trainable = True  # 4. fine-tune the top third of the backbone, its BatchNorm layers kept frozen
        for i, layer in enumerate(backbone.layers):
            layer.trainable = i >= 2 * len(backbone.layers) // 3 and not isinstance(
                layer, keras.layers.BatchNormalization)
        fit(1e-4, best, threshold=min(head.history["val_loss"]))  # written only when an epoch beats the head
        model.load_weights(best)

    # 5. Evaluate once, on the test set.
    predicted = model.predict(test_ds, verbose=0).argmax(axis=1)
    print(classification_report(test["y"], predicted, labels=range(len(classes)), target_names=classes,
                                zero_division=0))
    macro = balanced_accuracy_score(test["y"], predicted)
    print(f"Test macro accuracy (balanced accuracy): {macro:.3f} on {len(test)} photos")

    # 6. Export: pixels-in model.keras (scaling inside, no optimizer state), labels.txt in score order, a card.
    args.out_dir.mkdir(parents=True, exist_ok=True)
    keras.Model(model.inputs, model.outputs, name=model.name).save(args.out_dir / "model.keras")
    (args.out_dir / "labels.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    card = {"arch": "EfficientNetLite0", "classes": classes, "image_size": list(SIZE), "input": "float32 RGB 0-255",
            "metrics": {"test_macro_accuracy": round(macro, 4), "test_photos": len(test)}, "photos": str(photos)}
    (args.out_dir / "model_card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(f"Model written to {args.out_dir}; serve it: python -m workshop_utils serve {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
