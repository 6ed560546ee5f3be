"""Fine-tuning (notebook 07; ML.NET stops after the head): backbone + trained head as one Keras model whose top
layers train on augmented photos (BatchNorm frozen), Adam on warm-up + cosine, label smoothing, class weights,
early stopping on the validation log-loss. Validation chooses the epoch; the test photos are scored once, after."""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from workshop_utils.architectures import get_architecture
from workshop_utils.core.errors import ConfigError
from workshop_utils.core.images import decode_image, file_orientation
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.export.graph import HEAD_LAYER, float32_model
from workshop_utils.head import check_class_weight
from workshop_utils.schedules import EarlyStopping, EpochTimer, Schedule
from workshop_utils.trainer import class_weights

tf = import_tensorflow()
import keras  # noqa: E402
from tqdm.keras import TqdmCallback  # noqa: E402  (it imports Keras)

AUGMENT_LAYER, FEATURES_LAYER = "augmentation", "features"


@dataclass(frozen=True)
class FineTuneOptions:
    """How to fine-tune (defaults for ~1,500 photos). ``unfreeze``: layers from the top of the backbone (an int)
    or a fraction of them (0 < x < 1: the same depth for every architecture).

    ``label_smoothing=0.1`` (Szegedy et al. 2016) keeps a few hundred photos from being memorised overconfidently;
    its price: a photo's log-loss stays above -ln(0.9 + 0.1/C) (0.09 for 8 classes; the sample: 0.17 vs 0.04).
    """

    unfreeze: float = 1 / 3
    epochs: int = 20
    learning_rate: float = 2e-4  # Adam's peak: 1e-4 … 3e-4 is usual for the top of a pretrained network
    warmup_epochs: float = 1.0  # linear from final_lr_fraction × peak: first noisy gradients stay small (Goyal 2017)
    final_lr_fraction: float = 0.01  # the cosine ends at this fraction of the peak (Keras' ``alpha``; SGDR)
    label_smoothing: float = 0.1
    class_weight: str | dict[str, float] | None = "balanced"  # as macro accuracy; None: ML.NET's every image
    batch_size: int = 16
    patience: int = 4  # ~1/5 of the run, on the plain validation log-loss; the head-only model counts as epoch 0
    augmentation: float = 0.1  # strength: rotation (fraction of a turn), zoom, translation, contrast
    mixed_precision: bool = False  # float16 compute with loss scaling (the default on a GPU); the head stays float32
    seed: int = 0
    cache_limit_mb: int = 3000  # decoded images are cached in memory up to this size, else re-decoded

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the bad value and its valid range."""
        u = self.unfreeze
        if isinstance(u, bool) or not isinstance(u, (int, float, np.integer, np.floating)) or not math.isfinite(u) \
                or u < 0 or (u >= 1 and float(u) != int(u)):
            raise ConfigError(f"unfreeze={u!r} is not a layer count or a fraction: use a whole number >= 0 (layers "
                              "from the top of the backbone) or a fraction between 0 and 1 (e.g. 0.33 for the top "
                              "third).")
        rules = [("epochs", int(self.epochs) >= 1, "at least 1 (--fine-tune-epochs)"),
                 ("batch_size", int(self.batch_size) >= 1, "at least 1"),
                 ("learning_rate", self.learning_rate > 0, "above 0 (fine-tuning uses ~1e-4)"),
                 ("augmentation", 0 <= self.augmentation < 0.5, "in [0, 0.5) (0 = no augmentation)"),
                 ("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs, f"in [0, epochs={self.epochs}] (0 = none)"),
                 ("final_lr_fraction", 0 <= self.final_lr_fraction <= 1,
                  "in [0, 1] (the cosine's end as a fraction of the peak learning rate; 1 = constant)"),
                 ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1) (0 = none, 0.1 usual)")]
        for name, valid, allowed in rules:
            if not valid:
                raise ConfigError(f"{name}={getattr(self, name)} must be {allowed}.")
        check_class_weight(self.class_weight, "class_weight")


# On the 2-core CI CPU (`python -m workshop_utils bench`) a Lite0 epoch at 224² costs 1.6x the frozen bottleneck
# pass: 46-67 s for ~1,210 photos, so 20 epochs take at most ~22 min and `run --fine-tune` stays inside 30 minutes.
# A GPU's batch 64 takes a larger peak rate (3e-4, ~square-root scaling for Adam) and one more epoch of patience.
DEFAULTS: dict[str, FineTuneOptions] = {
    "quick": FineTuneOptions(unfreeze=12, epochs=3, learning_rate=1e-4, batch_size=16, patience=2, augmentation=0.05),
    "full": FineTuneOptions(epochs=20, patience=4),
    "full-gpu": FineTuneOptions(epochs=30, batch_size=64, learning_rate=3e-4, patience=5, mixed_precision=True)}


def default_options(profile: str = "full", gpu: bool | None = None, **overrides: Any) -> FineTuneOptions:
    """The defaults for a profile name and device (``gpu=None``: detect), with overrides; an override of None
    keeps the default, except ``class_weight=None`` (every image weighs the same)."""
    name = getattr(profile, "name", profile)
    gpu = bool(tf.config.list_physical_devices("GPU")) if gpu is None else gpu
    options = DEFAULTS["quick" if name == "quick" else ("full-gpu" if gpu else "full")]
    if gpu and name == "quick":
        options = replace(options, mixed_precision=True)
    options = replace(options, **{k: v for k, v in overrides.items() if v is not None or k == "class_weight"})
    options.check()
    return options


def learning_rate_schedule(options: FineTuneOptions, steps_per_epoch: int) -> Schedule:
    """Keras' ``CosineDecay`` with a linear warm-up from ``final_lr_fraction`` × peak to the peak over
    ``warmup_epochs`` (at most half the run), then a cosine down to ``final_lr_fraction`` × peak at the end."""
    options.check()
    steps_per_epoch = max(1, int(steps_per_epoch))
    total = int(options.epochs) * steps_per_epoch
    warmup = min(int(round(options.warmup_epochs * steps_per_epoch)), total // 2)
    peak, alpha = float(options.learning_rate), float(options.final_lr_fraction)
    return keras.optimizers.schedules.CosineDecay(alpha * peak, decay_steps=total - warmup, alpha=alpha,
                                                  warmup_target=peak, warmup_steps=warmup)


def build_augmentation(strength: float = 0.1, seed: int = 0) -> keras.Sequential:
    """Keras preprocessing layers that change a photo a little at every training step; off at inference."""
    layers: list[keras.layers.Layer] = [keras.layers.RandomFlip("horizontal", seed=seed)]
    if strength > 0:
        layers += [
            keras.layers.RandomRotation(strength, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom((-strength, strength), fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomTranslation(strength, strength, fill_mode="reflect", seed=seed + 3),
            keras.layers.RandomContrast(min(2 * strength, 0.9), value_range=(0, 255), seed=seed + 4),
        ]
    return keras.Sequential(layers, name=AUGMENT_LAYER)


def compose_model(trained: Any, augmentation: keras.layers.Layer | None = None, weights: Any = "trained",
                  mixed_precision: bool = False) -> keras.Model:
    """Pixels (RGB 0–255) → [augmentation] → backbone (``weights="trained"``: the head's) → trained head.
    ``mixed_precision``: float16 compute, a float32 head; ``compile`` then scales the loss."""
    arch = get_architecture(trained.arch)
    size = arch.resolve_input_size(trained.image_size)
    weights = trained.backbone_weights if weights == "trained" else weights
    previous = keras.mixed_precision.global_policy()
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        features = arch.build(weights, size)  # a new copy: training it must not touch the shared extractor
        features.name = FEATURES_LAYER
        width = int(features.output.shape[-1])
        if np.shape(trained.kernel) != (width, len(trained.label_map.names)):
            raise ConfigError(f"The head's kernel has shape {np.shape(trained.kernel)} but {arch.name} gives {width} "
                              f"features for {len(trained.label_map.names)} classes; it was trained with another "
                              "architecture: retrain it (03).")
        head = keras.layers.Dense(len(trained.label_map.names), activation="softmax", dtype="float32",
                                  name=HEAD_LAYER)  # the softmax and its output stay float32
        inputs = keras.Input(shape=(*size, 3), dtype="float32", name="rgb_0_255")
        outputs = head(features(augmentation(inputs) if augmentation is not None else inputs))
        head.set_weights([np.asarray(trained.kernel, np.float32), np.asarray(trained.bias, np.float32).ravel()])
        return keras.Model(inputs, outputs, name=f"{arch.name}_fine_tuned")  # its policy decides loss scaling
    finally:
        keras.mixed_precision.set_global_policy(previous)


def inner_backbone(model: keras.Model) -> keras.Model:
    """The pretrained network inside a composed model (the deepest nested model whose output is pooled)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name != AUGMENT_LAYER:
            nested = [sub for sub in layer.layers if isinstance(sub, keras.Model)]
            return inner_backbone(layer) if nested else layer
    raise ConfigError(f"Model {model.name!r} has no nested backbone model; build it with compose_model().")


@dataclass(frozen=True)
class LayerCounts:
    """How a backbone was split by :func:`unfreeze_top` (InputLayer not counted)."""

    layers: int  # layers in the backbone
    top: int  # layers in the unfrozen top part (= trainable + batchnorm_frozen + weightless)
    trainable: int  # layers that now train: those of the top part with weights, BatchNorm excepted
    batchnorm_frozen: int  # BatchNorm layers inside the top part, kept frozen
    weightless: int  # layers of the top part without weights (activations, additions, pooling): nothing to train
    frozen: int  # layers with weights that do not train (below the top part, and its BatchNorm layers)
    trainable_weights: int  # scalar weights that now train (in the backbone)


def resolve_unfreeze(unfreeze: float, n_layers: int) -> int:
    """How many layers from the top ``unfreeze`` means: a count (capped) or a fraction of ``n_layers``."""
    FineTuneOptions(unfreeze=unfreeze).check()
    if 0 < unfreeze < 1:
        return max(1, int(round(unfreeze * n_layers)))
    return min(int(unfreeze), n_layers)


def unfreeze_top(backbone: keras.Model, unfreeze: float) -> LayerCounts:
    """Make the top ``unfreeze`` layers of ``backbone`` trainable, the rest frozen; BatchNorm stays frozen (and so
    in inference mode in Keras 3: small augmented batches never touch its ImageNet statistics)."""
    layers = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    top = resolve_unfreeze(unfreeze, len(layers))
    backbone.trainable = True  # Keras sets this on every sublayer: set it first, then each layer's own
    for i, layer in enumerate(layers):
        layer.trainable = i >= len(layers) - top and not isinstance(layer, keras.layers.BatchNormalization)
    if top == 0:
        backbone.trainable = False
    top_layers = layers[len(layers) - top:] if top else []
    trainable = sum(bool(layer.trainable_weights) for layer in top_layers)
    return LayerCounts(
        layers=len(layers), top=top, trainable=trainable,
        batchnorm_frozen=sum(isinstance(layer, keras.layers.BatchNormalization) for layer in top_layers),
        weightless=sum(not layer.weights for layer in top_layers),
        frozen=sum(bool(layer.weights) for layer in layers) - trainable,
        trainable_weights=int(sum(np.prod(w.shape) for w in backbone.trainable_weights)))


def image_dataset(paths: Sequence[str], labels: Sequence[int], image_size: tuple[int, int], batch_size: int,
                  shuffle: bool = False, seed: int = 0, cache_limit_mb: float = 3000) -> tf.data.Dataset:
    """(pixels, label) batches decoded as in the bottleneck pass (EXIF upright); cached decoded when they fit in
    ``cache_limit_mb``, else as file bytes decoded each epoch. An unusable file raises ``InvalidImageError``."""
    if len(paths) == 0:
        raise ConfigError("No images to fine-tune on: the image list is empty; run the bottleneck phase (02) first.")
    if len(paths) != len(labels):
        raise ConfigError(f"{len(paths)} image paths but {len(labels)} labels: they must match row by row.")
    h, w = image_size
    fits = len(paths) * h * w * 3 * 4 / 1e6 <= cache_limit_mb  # decoded float32 pixels, in MB
    orientations = np.asarray([file_orientation(p) for p in paths], dtype=np.int32)
    data = tf.data.Dataset.from_tensor_slices((list(map(str, paths)), orientations,
                                               np.asarray(labels, dtype=np.int32)))
    data = data.map(lambda p, o, y: (tf.io.read_file(p), o, y), num_parallel_calls=tf.data.AUTOTUNE)
    decode = lambda b, o, y: (decode_image(b, (h, w), o), y)  # noqa: E731
    data = (data.map(decode, num_parallel_calls=tf.data.AUTOTUNE) if fits else data).cache()
    if shuffle:
        data = data.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if not fits:
        data = data.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _paths_and_labels(bottlenecks: Any, label_map: Any) -> tuple[list[str], np.ndarray]:
    if bottlenecks is None or len(bottlenecks.image_paths) == 0:
        raise ConfigError("The trained classifier has no bottlenecks attached (train/validation image lists): load "
                          "it with course.load_trained(settings), which attaches them.")
    return list(bottlenecks.image_paths), np.asarray(label_map.encode(bottlenecks.labels), dtype=np.int32)


def reported_set(trained: Any) -> tuple[str, Any]:
    """(set name, bottlenecks) to report: the test set when attached, else the validation set (mlnet protocol)."""
    test = getattr(trained, "test_bottlenecks", None)
    if test is not None and len(test.image_paths):
        return "test", test
    return "validation", trained.validation_bottlenecks


def one_hot(data: tf.data.Dataset, n_classes: int) -> tf.data.Dataset:
    """(pixels, one-hot) batches: Keras 3's sparse cross-entropy has no ``label_smoothing``."""
    return data.map(lambda x, y: (x, tf.one_hot(y, n_classes)), num_parallel_calls=tf.data.AUTOTUNE)


@dataclass
class FineTuned:
    """A fine-tuned end-to-end model and how it got there. ``model``: as trained (augmentation in front);
    ``scoring_model``: its float32 :func:`inference_model`, which scores validation and test, exports and serves."""

    model: keras.Model
    options: FineTuneOptions
    layers: LayerCounts
    history: pd.DataFrame  # epoch (1-based), loss, accuracy, log_loss, val_loss, val_accuracy, val_log_loss, seconds
    best_epoch: int  # 0 = the starting (head-only) weights were kept
    start_loss: float  # plain validation log-loss before fine-tuning
    seconds: float
    seconds_per_epoch: float
    validation_probabilities: np.ndarray = field(repr=False, default=None)
    validation_labels: np.ndarray = field(repr=False, default=None)
    validation_paths: list[str] = field(repr=False, default_factory=list)
    scoring_model: keras.Model | None = field(repr=False, default=None)
    test_probabilities: np.ndarray | None = field(repr=False, default=None)  # None: no test set attached
    test_labels: np.ndarray | None = field(repr=False, default=None)
    test_paths: list[str] = field(repr=False, default_factory=list)
    class_weight: dict[int, float] | None = None  # what fit() received (class index -> weight)

    def predict_files(self, paths: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Probabilities (N, C) for image files, decoded exactly as in training, scored in float32."""
        size = tuple(self.model.input.shape[1:3])
        data = image_dataset(paths, np.zeros(len(paths), np.int32), size, batch_size, cache_limit_mb=0)
        return predict(self.scoring_model or inference_model(self.model), data)

    def reported(self) -> tuple[str, np.ndarray, np.ndarray]:
        """(set name, labels, probabilities) to report: the test set when scored, else validation."""
        if self.test_probabilities is not None:
            return "test", self.test_labels, self.test_probabilities
        return "validation", self.validation_labels, self.validation_probabilities


def predict(model: keras.Model, data: tf.data.Dataset) -> np.ndarray:
    """Probabilities for every batch of a (pixels, label) dataset, in order, as float32 (N, C)."""
    return np.asarray(model.predict(data.map(lambda x, y: x), verbose=0), dtype=np.float32)


def compile_for_fine_tuning(model: keras.Model, options: FineTuneOptions, steps_per_epoch: int) -> None:
    """Adam on the warm-up + cosine schedule, smoothed cross-entropy; metrics: accuracy and the plain ``log_loss``
    (no smoothing, no class weights), which early stopping watches."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate_schedule(options, steps_per_epoch)),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=options.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                           keras.metrics.CategoricalCrossentropy(name="log_loss")])


def fine_tune(trained: Any, options: FineTuneOptions | None = None, progress: bool = True,
              verbose: bool = False) -> FineTuned:
    """Compose backbone + trained head (bottlenecks attached: ``course.load_trained``), unfreeze the top of the
    backbone and train end to end; validation chooses the epoch (0: head only), then test photos are scored once."""
    options = options or default_options()
    options.check()
    keras.utils.set_random_seed(options.seed)
    train_paths, train_y = _paths_and_labels(trained.train_bottlenecks, trained.label_map)
    val_paths, val_y = _paths_and_labels(trained.validation_bottlenecks, trained.label_map)
    n_classes = len(trained.label_map.names)
    weights = class_weights(options.class_weight, train_y, trained.label_map)
    augmentation = build_augmentation(options.augmentation, options.seed)
    model = compose_model(trained, augmentation, mixed_precision=options.mixed_precision)
    counts = unfreeze_top(inner_backbone(model), options.unfreeze)
    size = tuple(model.input.shape[1:3])
    train_data = image_dataset(train_paths, train_y, size, options.batch_size, shuffle=True, seed=options.seed,
                               cache_limit_mb=options.cache_limit_mb)
    val_data = image_dataset(val_paths, val_y, size, max(options.batch_size, 32),
                             cache_limit_mb=options.cache_limit_mb)
    compile_for_fine_tuning(model, options, math.ceil(len(train_paths) / options.batch_size))
    start_loss = model.evaluate(one_hot(val_data, n_classes), verbose=0, return_dict=True)["log_loss"]
    timer = EpochTimer()
    stopper = EarlyStopping(min_delta=0.0, patience=options.patience, monitor="val_log_loss", start_value=start_loss)
    started = time.perf_counter()
    history = model.fit(one_hot(train_data, n_classes), validation_data=one_hot(val_data, n_classes),
                        epochs=options.epochs, verbose=2 if verbose else 0, class_weight=weights,
                        shuffle=False,  # the dataset reshuffles itself every epoch
                        callbacks=[stopper, timer, TqdmCallback(options.epochs, verbose=1, desc="Fine-tuning",
                                                                disable=not progress)])  # epochs + a batch bar
    seconds = time.perf_counter() - started
    frame = pd.DataFrame({"epoch": np.arange(1, len(timer.seconds) + 1), **history.history, "seconds": timer.seconds})
    scoring = inference_model(model)  # float32, without augmentation: what is exported and served
    test_name, test = reported_set(trained)
    test_paths, test_y, test_probabilities = [], None, None
    if test_name == "test":  # scored once, after validation chose the weights
        test_paths, test_y = _paths_and_labels(test, trained.label_map)
        test_probabilities = predict(scoring, image_dataset(test_paths, test_y, size, max(options.batch_size, 32),
                                                            cache_limit_mb=0))
    return FineTuned(
        model=model, options=options, layers=counts, history=frame, best_epoch=int(stopper.best_epoch) + 1,
        start_loss=float(start_loss), seconds=seconds,
        seconds_per_epoch=float(np.median(timer.seconds[1:] or timer.seconds)),
        validation_probabilities=predict(scoring, val_data), validation_labels=val_y, validation_paths=val_paths,
        scoring_model=scoring, test_probabilities=test_probabilities, test_labels=test_y, test_paths=test_paths,
        class_weight=weights,
    )


def inference_model(model: keras.Model) -> keras.Model:
    """The model to export and serve: a chain without its augmentation layer, in float32 (sharing the weights,
    or a float32 copy of a mixed-precision model)."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if AUGMENT_LAYER not in [layer.name for layer in layers]:
        return float32_model(model)
    inputs = keras.Input(shape=model.input.shape[1:], dtype="float32", name="rgb_0_255")
    x = inputs
    for layer in layers:  # a chain: augmentation → backbone → head
        if layer.name != AUGMENT_LAYER:
            x = layer(x)
    return float32_model(keras.Model(inputs, x, name=model.name))
