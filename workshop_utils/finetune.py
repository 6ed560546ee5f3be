"""Fine-tuning: train the top of the backbone together with the head, on augmented images (notebook 07).

ML.NET stops after the head: the backbone stays frozen for good. Here the trained head and the backbone are
composed into one Keras model, the top ``unfreeze`` layers of the backbone are made trainable (BatchNorm
layers excepted: they stay frozen and in inference mode) and the whole model trains end to end on the
photos with Keras preprocessing layers as data augmentation: Adam on a warm-up + cosine schedule (Keras'
``CosineDecay``), label smoothing, balanced class weights, and ``EarlyStopping`` on the validation log-loss.
The validation photos choose the epoch; the test photos are scored once, after. Notebook 07 writes the same
steps out in cells; :func:`run_fine_tune` is the one call the command line uses.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workshop_utils.architectures import get_architecture
from workshop_utils.core.errors import ConfigError
from workshop_utils.core.images import decode_image, file_orientation
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.export.writer import export_model
from workshop_utils.export.graph import float32_model
from workshop_utils.metrics import evaluate
from workshop_utils.trainer import class_weights

tf = import_tensorflow()
import keras  # noqa: E402

AUGMENT_LAYER, FEATURES_LAYER, HEAD_LAYER = "augmentation", "features", "head"


@dataclass(frozen=True)
class FineTuneOptions:
    """How to fine-tune. ``unfreeze``: layers counted from the top of the backbone (an int >= 0) or a
    fraction of them (0 < x < 1), so that the same value means the same depth for every architecture.

    Why these defaults, for ~1,500 real photos and an ImageNet backbone whose top third trains:

    * ``learning_rate`` is the *peak* of a warm-up + cosine schedule (:func:`learning_rate_schedule`, Keras'
      ``CosineDecay``). Adam at 1e-4 … 3e-4 is the usual range for fine-tuning the top of a pretrained network
      with a trained head (Keras' guide uses a constant 1e-5 when it unfreezes *everything*); 2e-4 at batch 16
      keeps the schedule's mean near the 1e-4 that worked as a constant rate here.
    * ``warmup_epochs=1``: the rate climbs linearly from 1 % of the peak over the first epoch, so the first
      noisy gradients of the freshly unfrozen layers cannot wreck the pretrained weights (Goyal et al. 2017).
    * ``final_lr_fraction=0.01``: the cosine ends at 1 % of the peak (Loshchilov & Hutter's SGDR; timm's
      fine-tuning recipes): late epochs make small, averaging steps instead of jumping around.
    * ``label_smoothing=0.1`` (Szegedy et al. 2016; the standard for ImageNet fine-tuning): targets of
      0.9 + 0.1/C instead of 1 keep a few hundred photos from being memorised with overconfident scores. Its
      price: a photo's log-loss cannot go below -ln(0.9 + 0.1/C) (0.09 for 8 classes), so on photos the model
      nearly always gets right the reported log-loss ends higher than without it (the sample: 0.17 vs 0.04).
    * ``class_weight="balanced"``: each class weighs the same in the loss, as it does in macro accuracy
      (``trainer.class_weights``); None weighs every image the same (ML.NET, ``--protocol mlnet``).
    * ``patience=4`` on the plain (unsmoothed, unweighted) validation log-loss: a cosine schedule improves
      slowly at the end, and 4 epochs is ~1/5 of the run; the best epoch's weights are restored, and the
      head-only model counts as epoch 0 (:class:`EarlyStoppingFromStart`), so validation cannot get worse.
    """

    unfreeze: float = 1 / 3
    epochs: int = 20
    learning_rate: float = 2e-4  # the peak of the schedule (Adam)
    warmup_epochs: float = 1.0  # linear warm-up from final_lr_fraction × peak to the peak
    final_lr_fraction: float = 0.01  # the cosine decays to this fraction of the peak (Keras' ``alpha``)
    label_smoothing: float = 0.1
    class_weight: str | dict[str, float] | None = "balanced"
    batch_size: int = 16
    patience: int = 4  # EarlyStopping on the plain validation log-loss, best weights restored
    augmentation: float = 0.1  # strength: rotation (fraction of a turn), zoom, translation, contrast
    mixed_precision: bool = False  # float16 compute with loss scaling (the default on a GPU); the head stays float32
    seed: int = 0
    cache_limit_mb: int = 3000  # decoded images are cached in memory up to this size, else re-decoded

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the bad value and its valid range."""
        u = self.unfreeze
        if isinstance(u, bool) or not isinstance(u, (int, float, np.integer, np.floating)) or not math.isfinite(u) \
                or u < 0 or (u >= 1 and float(u) != int(u)):
            raise ConfigError(
                f"unfreeze={u!r} is not a layer count or a fraction: use a whole number >= 0 (layers from the top "
                "of the backbone) or a fraction between 0 and 1 (e.g. 0.33 for the top third)."
            )
        if int(self.epochs) < 1:
            raise ConfigError(f"epochs={self.epochs} must be at least 1 (--fine-tune-epochs).")
        if int(self.batch_size) < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be at least 1.")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate={self.learning_rate} must be above 0 (fine-tuning uses ~1e-4).")
        if not 0 <= self.augmentation < 0.5:
            raise ConfigError(f"augmentation={self.augmentation} must be in [0, 0.5) (0 = no augmentation).")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"warmup_epochs={self.warmup_epochs} must be in [0, epochs={self.epochs}] "
                                "(0 = no warm-up).")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ConfigError(f"final_lr_fraction={self.final_lr_fraction} must be in [0, 1] (the cosine's end "
                                "as a fraction of the peak learning rate; 1 = constant).")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing={self.label_smoothing} must be in [0, 1) (0 = none, 0.1 usual).")
        if not (self.class_weight is None or self.class_weight == "balanced" or isinstance(self.class_weight, dict)):
            raise ConfigError(f"class_weight={self.class_weight!r} must be 'balanced', a mapping class -> weight "
                                "or None (every image weighs the same).")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gpu_available() -> bool:
    """True when TensorFlow sees a GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


# Measured on the 2-core CI CPU (`python -m workshop_utils bench`): one fine-tuning epoch of EfficientNet-Lite0
# at 224² (top third unfrozen, batch 16) costs 1.6x the frozen bottleneck pass over the same images. With that
# pass at 44-100 images/s (two machines of the CI class), ~1,210 training photos take 46-67 s per epoch with
# the validation pass on the slower machine, so 20 epochs (at most: early stopping usually ends sooner) are at
# most ~22 minutes, and `run --fine-tune` (bottlenecks ~35 s, head ~15 s, fine-tuning, test scoring, export
# ~2 min) stays inside 30 minutes. A GPU does 30 epochs at batch 64 in mixed precision in less time; the
# larger batch takes a larger peak rate (3e-4, ~square-root scaling for Adam) and one more epoch of patience.
DEFAULTS: dict[str, FineTuneOptions] = {
    "quick": FineTuneOptions(unfreeze=12, epochs=3, learning_rate=1e-4, batch_size=16, patience=2,
                             augmentation=0.05),
    "full": FineTuneOptions(epochs=20, patience=4),
    "full-gpu": FineTuneOptions(epochs=30, batch_size=64, learning_rate=3e-4, patience=5, mixed_precision=True),
}


def default_options(profile: str = "full", gpu: bool | None = None, **overrides: Any) -> FineTuneOptions:
    """The fine-tuning defaults for a profile name and device (``gpu=None``: detect), with overrides.

    The quick profile keeps to a couple of minutes on 2 CPU cores; the full profile trains the top third of
    the backbone, and more epochs at a larger batch with mixed precision where a GPU is found. An override
    of None keeps the default, except ``class_weight=None`` (pass it to weigh every image the same).
    """
    name = getattr(profile, "name", profile)
    gpu = gpu_available() if gpu is None else gpu
    key = "quick" if name == "quick" else ("full-gpu" if gpu else "full")
    options = DEFAULTS[key]
    if gpu and key == "quick":
        options = replace(options, mixed_precision=True)
    options = replace(options, **{k: v for k, v in overrides.items() if v is not None or k == "class_weight"})
    options.check()
    return options


def learning_rate_schedule(options: FineTuneOptions,
                           steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Keras' ``CosineDecay`` with a linear warm-up: from ``final_lr_fraction`` × peak up to the peak over
    ``warmup_epochs``, then a cosine down to ``final_lr_fraction`` × peak at the last step of ``epochs``.

    The warm-up is capped at half the run (a 1-epoch run still decays); no warm-up: the cosine starts at the peak.
    """
    options.check()
    steps_per_epoch = max(1, int(steps_per_epoch))
    total = int(options.epochs) * steps_per_epoch
    warmup = min(int(round(options.warmup_epochs * steps_per_epoch)), total // 2)
    peak, alpha = float(options.learning_rate), float(options.final_lr_fraction)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=total, alpha=alpha)
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


def head_layer(trained: Any) -> keras.layers.Dense:
    """A float32 Dense softmax layer holding the trained head's kernel and bias (built, ready to call)."""
    kernel = np.asarray(trained.kernel, dtype=np.float32)
    bias = np.asarray(trained.bias, dtype=np.float32).reshape(-1)
    head = keras.layers.Dense(kernel.shape[1], activation="softmax", dtype="float32", name=HEAD_LAYER)
    head.build((None, kernel.shape[0]))
    head.set_weights([kernel, bias])
    return head


def compose_model(trained: Any, augmentation: keras.layers.Layer | None = None, weights: Any = "trained",
                  mixed_precision: bool = False) -> keras.Model:
    """Pixels (RGB 0–255, the head's image size) → [augmentation] → backbone → trained head, one model.

    ``weights="trained"`` uses the weights the head was trained on. With ``mixed_precision`` the whole model
    is built under Keras' ``mixed_float16`` policy, as the Keras guide does: the backbone computes in float16
    (a GPU's fast path) with float32 variables, the head is a float32 layer, so the probabilities are float32,
    and ``compile`` sees a mixed model and wraps the optimizer in a ``LossScaleOptimizer`` (small float16
    gradients would otherwise round to zero). The global policy is restored afterwards.
    """
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
            raise ConfigError(
                f"The head's kernel has shape {np.shape(trained.kernel)} but {arch.name} gives {width} features for "
                f"{len(trained.label_map.names)} classes; it was trained with another architecture: retrain it (03)."
            )
        inputs = keras.Input(shape=(*size, 3), dtype="float32", name="rgb_0_255")
        x = augmentation(inputs) if augmentation is not None else inputs
        outputs = head_layer(trained)(features(x))  # dtype="float32": the softmax and its output stay float32
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
    """Make the top ``unfreeze`` layers of ``backbone`` trainable, all others frozen; BatchNorm stays frozen.

    Frozen BatchNorm layers also run in inference mode in Keras 3, so their moving mean and variance (the
    ImageNet statistics the weights rely on) are never updated by small, augmented batches.
    """
    layers = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    top = resolve_unfreeze(unfreeze, len(layers))
    backbone.trainable = True
    for i, layer in enumerate(layers):
        in_top = i >= len(layers) - top
        layer.trainable = in_top and not isinstance(layer, keras.layers.BatchNormalization)
    if top == 0:
        backbone.trainable = False
    top_layers = layers[len(layers) - top:] if top else []
    bn = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in top_layers)
    trainable = sum(bool(layer.trainable_weights) for layer in top_layers)
    with_weights = sum(bool(layer.weights) for layer in layers)
    return LayerCounts(
        layers=len(layers), top=top, trainable=trainable, batchnorm_frozen=bn,
        weightless=sum(not layer.weights for layer in top_layers), frozen=with_weights - trainable,
        trainable_weights=int(sum(np.prod(w.shape) for w in backbone.trainable_weights)),
    )


def image_dataset(paths: Sequence[str], labels: Sequence[int], image_size: tuple[int, int], batch_size: int,
                  shuffle: bool = False, seed: int = 0, cache_limit_mb: float = 3000) -> tf.data.Dataset:
    """(pixels, label) batches read from files with :func:`workshop_utils.core.images.decode_image`.

    Each photo is turned upright by its EXIF orientation (read from its header here, once) before the resize,
    as in the bottleneck pass. Decoded images are cached in memory when they fit in ``cache_limit_mb`` (every
    epoch after the first then skips JPEG decoding); otherwise the encoded bytes are cached and decoded again
    each epoch. A file that is no usable image raises ``predictions.InvalidImageError`` naming it.
    """
    if len(paths) == 0:
        raise ConfigError("No images to fine-tune on: the image list is empty; run the bottleneck phase (02) first.")
    if len(paths) != len(labels):
        raise ConfigError(f"{len(paths)} image paths but {len(labels)} labels: they must match row by row.")
    h, w = image_size
    decoded_mb = len(paths) * h * w * 3 * 4 / 1e6
    orientations = np.asarray([file_orientation(p) for p in paths], dtype=np.int32)
    data = tf.data.Dataset.from_tensor_slices((list(map(str, paths)), orientations,
                                               np.asarray(labels, dtype=np.int32)))
    data = data.map(lambda p, o, y: (tf.io.read_file(p), o, y), num_parallel_calls=tf.data.AUTOTUNE)
    decode = lambda b, o, y: (decode_image(b, (h, w), o), y)  # noqa: E731
    if decoded_mb <= cache_limit_mb:
        data = data.map(decode, num_parallel_calls=tf.data.AUTOTUNE).cache()
    else:
        data = data.cache()
    if shuffle:
        data = data.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if decoded_mb > cache_limit_mb:
        data = data.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _paths_and_labels(bottlenecks: Any, label_map: Any) -> tuple[list[str], np.ndarray]:
    if bottlenecks is None or len(bottlenecks.image_paths) == 0:
        raise ConfigError(
            "The trained classifier has no bottlenecks attached (train/validation image lists): load it with "
            "course.load_trained(settings), which attaches them."
        )
    return list(bottlenecks.image_paths), np.asarray(label_map.encode(bottlenecks.labels), dtype=np.int32)


def reported_set(trained: Any) -> tuple[str, Any]:
    """(set name, bottlenecks) the before/after comparison reports: the test set when one is attached
    (``course.load_trained``, the CLI), else the validation set (the mlnet protocol), named as such."""
    test = getattr(trained, "test_bottlenecks", None)
    if test is not None and len(test.image_paths):
        return "test", test
    return "validation", trained.validation_bottlenecks


def one_hot(data: tf.data.Dataset, n_classes: int) -> tf.data.Dataset:
    """(pixels, class index) batches → (pixels, one-hot) batches, as ``CategoricalCrossentropy`` with label
    smoothing needs (Keras 3's sparse cross-entropy has no ``label_smoothing``)."""
    return data.map(lambda x, y: (x, tf.one_hot(y, n_classes)), num_parallel_calls=tf.data.AUTOTUNE)


class EarlyStoppingFromStart(keras.callbacks.EarlyStopping):
    """Keras' ``EarlyStopping`` that counts the starting model as "epoch 0" of the comparison.

    The head-only model is already good: if no fine-tuning epoch beats its validation score, the starting
    weights are restored instead of the least bad fine-tuned epoch, so fine-tuning never makes it worse.
    """

    def __init__(self, start_value: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_value = start_value

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if self.start_value is not None:
            self.best = float(self.start_value)
            self.best_epoch = -1  # -1: the starting weights
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()


class TqdmProgress(keras.callbacks.Callback):
    """One tqdm bar over all training steps, with the last epoch's validation loss and accuracy."""

    def __init__(self, epochs: int, steps: int, enabled: bool = True) -> None:
        super().__init__()
        self.epochs, self.steps, self.enabled, self.bar = epochs, steps, enabled, None

    def on_train_begin(self, logs: dict | None = None) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.epochs * self.steps, desc="Fine-tuning", unit="batch", disable=not self.enabled)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.bar.update(1)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.bar.set_postfix(epoch=epoch + 1, val_log_loss=f"{logs.get('val_log_loss', float('nan')):.3f}",
                             val_acc=f"{logs.get('val_accuracy', float('nan')):.3f}")

    def on_train_end(self, logs: dict | None = None) -> None:
        self.bar.close()


@dataclass
class FineTuned:
    """A fine-tuned end-to-end model (pixels in, probabilities out) and how it got there.

    ``model`` is the model as trained (augmentation in front; float16 compute in mixed precision);
    ``scoring_model`` is :func:`inference_model` of it, float32: what validation and test score, exports
    and serves. Validation chose the epoch; the test set (when the classifier had one) was scored once after.
    """

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


class EpochTimer(keras.callbacks.Callback):
    """Records the wall-clock seconds of every epoch in ``seconds`` (the first includes tracing and decoding)."""

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def predict(model: keras.Model, data: tf.data.Dataset) -> np.ndarray:
    """Probabilities for every batch of a (pixels, label) dataset, in order, as float32 (N, C)."""
    return np.asarray(model.predict(data.map(lambda x, y: x), verbose=0), dtype=np.float32)


def compile_for_fine_tuning(model: keras.Model, options: FineTuneOptions, steps_per_epoch: int) -> None:
    """Adam on the warm-up + cosine schedule, cross-entropy with label smoothing on one-hot labels; metrics:
    accuracy and the plain log-loss (``log_loss``: no smoothing, no class weights), which early stopping watches."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate_schedule(options, steps_per_epoch)),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=options.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                           keras.metrics.CategoricalCrossentropy(name="log_loss")])


def fine_tune(trained: Any, options: FineTuneOptions | None = None, progress: bool = True,
              verbose: bool = False) -> FineTuned:
    """Compose backbone + trained head, unfreeze the top of the backbone and train end to end on the photos.

    ``trained``: a ``TrainedClassifier`` with its bottlenecks attached (``course.load_trained``): the training
    photos fit, the validation photos choose the epoch (early stopping on their plain log-loss, the head-only
    model as epoch 0), and the test photos, when attached, are scored once with the chosen weights.
    """
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
    steps = math.ceil(len(train_paths) / options.batch_size)
    compile_for_fine_tuning(model, options, steps)
    start_loss = model.evaluate(one_hot(val_data, n_classes), verbose=0, return_dict=True)["log_loss"]
    timer = EpochTimer()
    stopper = EarlyStoppingFromStart(start_value=start_loss, monitor="val_log_loss", patience=options.patience,
                                     restore_best_weights=True)
    started = time.perf_counter()
    history = model.fit(one_hot(train_data, n_classes), validation_data=one_hot(val_data, n_classes),
                        epochs=options.epochs, verbose=2 if verbose else 0, class_weight=weights,
                        shuffle=False,  # the dataset reshuffles itself every epoch
                        callbacks=[stopper, timer, TqdmProgress(options.epochs, steps, progress)])
    seconds = time.perf_counter() - started
    frame = pd.DataFrame(history.history)
    frame.insert(0, "epoch", np.arange(1, len(frame) + 1))
    frame["seconds"] = timer.seconds
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
    """The model to export and serve: without its augmentation layer (a no-op at inference anyway), in float32.

    Without mixed precision it shares the model's weights; a mixed-precision model becomes a float32 copy with
    the same weights (``model_io.float32_model``), so the exported model scores in float32. The model must be
    a chain (each layer feeds the next), as :func:`compose_model` and notebook 07 build it.
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if AUGMENT_LAYER not in [layer.name for layer in layers]:
        return float32_model(model)
    inputs = keras.Input(shape=model.input.shape[1:], dtype="float32", name="rgb_0_255")
    x = inputs
    for layer in layers:
        if isinstance(layer.input, (list, tuple)):
            raise ConfigError(
                f"Layer {layer.name!r} of {model.name!r} takes several inputs: inference_model() handles chains "
                "only (augmentation → backbone → head); export the model as it is instead."
            )
        if layer.name != AUGMENT_LAYER:
            x = layer(x)
    return float32_model(keras.Model(inputs, x, name=model.name))


def compare(before: Any, after: Any) -> pd.DataFrame:
    """ML.NET's scalar metrics and per-class log-loss of two evaluations side by side, with the change."""
    rows: dict[str, tuple[float, float]] = {
        "MicroAccuracy": (before.micro_accuracy, after.micro_accuracy),
        "MacroAccuracy": (before.macro_accuracy, after.macro_accuracy),
        "LogLoss": (before.log_loss, after.log_loss),
        "LogLossReduction": (before.log_loss_reduction, after.log_loss_reduction),
    }
    for name, b, a in zip(before.class_names, before.per_class_log_loss, after.per_class_log_loss):
        rows[f"LogLoss ({name})"] = (b, a)
    frame = pd.DataFrame(rows, index=[before.name or "before", after.name or "after"]).T
    frame["change"] = frame.iloc[:, 1] - frame.iloc[:, 0]
    return frame


def one_image_macro(metrics: Any) -> float:
    """How much macro accuracy one image can move: 1 / (classes × images of the smallest class)."""
    support = np.asarray(metrics.support)
    present = support[support > 0]
    return float(1.0 / (len(present) * present.min()))


def describe(options: FineTuneOptions) -> str:
    """One line: depth, epochs, batch, schedule, smoothing, class weights, augmentation (what the run uses)."""
    depth = f"top {options.unfreeze:.0%} of the backbone's layers" if options.unfreeze < 1 else \
        f"top {int(options.unfreeze)} backbone layers"
    weights = options.class_weight if isinstance(options.class_weight, str) or options.class_weight is None \
        else "custom"
    warmup = f"{options.warmup_epochs:g} epoch{'' if options.warmup_epochs == 1 else 's'}"
    return (f"{depth}, up to {options.epochs} epochs, batch {options.batch_size}, Adam peak lr "
            f"{options.learning_rate:g} (warm-up {warmup}, cosine to "
            f"{options.final_lr_fraction:g} × peak), label smoothing {options.label_smoothing:g}, class weights "
            f"{weights}, augmentation {options.augmentation:g}{', mixed precision' if options.mixed_precision else ''}")


def run_fine_tune(trained: Any, options: FineTuneOptions, export_dir: Path | None = None,
                  quiet: bool = False) -> tuple[FineTuned, Any, Any]:
    """The command line's fine-tuning step: fine-tune (validation chooses), print before/after metrics on the
    test set (the validation set, named, when there is none), export with those metrics; (result, before, after)."""

    subset, reported = reported_set(trained)
    before = evaluate(reported.label_indices(trained.label_map), trained.predict_proba(reported.features),
                      trained.label_map, name="head only", subset=subset)
    print(f"Fine-tuning {trained.arch}: {describe(options)}.")
    result = fine_tune(trained, options, progress=not quiet)
    name, labels, probabilities = result.reported()
    after = evaluate(labels, probabilities, trained.label_map, name="fine-tuned", subset=name)
    counts = result.layers
    print(f"Fine-tuned the top {counts.top} of {counts.layers} backbone layers: {counts.trainable} with weights "
          f"train, {counts.batchnorm_frozen} BatchNorm kept frozen, {counts.weightless} without weights; "
          f"in {result.seconds:.0f} s, "
          f"{result.seconds_per_epoch:.1f} s per epoch; best epoch {result.best_epoch} of {len(result.history)} "
          f"chosen on the validation log-loss ({result.start_loss:.4f} at the start)"
          f"{' (the head-only weights were kept)' if result.best_epoch == 0 else ''}.")
    if not quiet:
        print(after)
    note = "never used for choosing" if name == "test" else \
        "no test set: the validation set, which also chose the epoch, is reported (as in ML.NET's lab)"
    print(f"Before/after on the {name} set ({note}):")
    print(compare(before, after).round(4).to_string())
    if export_dir is not None:

        out = export_model(trained, export_dir, metrics=after, model=result.scoring_model,
                           fine_tuning={**options.to_dict(), "best_epoch": result.best_epoch})
        print(f"Fine-tuned model exported to {out} — try: python -m workshop_utils predict {out} IMAGE")
    return result, before, after


def cli_fine_tune(trained: Any, profile: str, unfreeze: float | None, epochs: int | None, seed: int,
                  export_dir: Path | None, quiet: bool = False,
                  class_weight: str | dict[str, float] | None = "balanced") -> int:
    """``run --fine-tune``: the profile's (and device's) defaults with the flags on top; returns the exit code."""
    options = default_options(profile, unfreeze=unfreeze, epochs=epochs, seed=seed, class_weight=class_weight)
    run_fine_tune(trained, options, export_dir=export_dir, quiet=quiet)
    return 0
