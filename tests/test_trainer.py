"""The training phase: ML.NET's metric lines and semantics, a numpy cross-check, options, saving, end to end."""
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workshop_utils import head as head_module
from workshop_utils import trainer as trainer_module
from workshop_utils.bottleneck import Bottlenecks
from workshop_utils.core.errors import (
    ConfigError,
    DatasetError,
    ModelFolderError,
)
from workshop_utils.core.labels import LabelMap
from workshop_utils.head import Options, TrainedClassifier
from workshop_utils.schedules import (
    EarlyStopping,
    ExponentialLRDecay,
    PolynomialLRDecay,
)
from workshop_utils.trainer import ImageClassificationTrainer, class_weights
from workshop_utils.training_metrics import (
    BottleneckMetrics,
    ImageClassificationMetrics,
    TrainMetrics,
    format_dotnet_float,
)


def make_bottlenecks(x, labels, arch="MobilenetV2"):
    return Bottlenecks(features=np.asarray(x, np.float32), labels=list(labels),
                       image_paths=[f"{i}.jpeg" for i in range(len(labels))],
                       skipped=pd.DataFrame(columns=["path", "reason"]), from_cache=False, arch=arch,
                       weights_id="test", image_size=(64, 64))


def separable(n, d=16, classes=4, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (classes, d)) * 3
    y = np.arange(n) % classes
    x = centers[y] + rng.normal(0, spread, (n, d))
    return x.astype(np.float32), [f"class_{k}" for k in y]


# ---------------------------------------------------------------------------------------------------
# Metric lines


@pytest.mark.parametrize(
    "value, text",
    [(11 / 13, "0.84615386"), (0.01, "0.01"), (1.0, "1"), (0.0, "0"), (2.5, "2.5"), (0.0001, "0.0001"),
     (0.00001, "1E-05"), (1.5e-7, "1.5E-07"), (0.0037157428450882435, "0.0037157428"), (123.456, "123.456"),
     (float("nan"), "NaN")],
)
def test_format_dotnet_float(value, text):
    assert format_dotnet_float(value) == text


def test_training_lines_are_mlnet_exact():
    train = TrainMetrics("Train", 121, 31, 11 / 13, 0.5, 0.0037157428450882435)
    assert str(ImageClassificationMetrics(train=train)) == (
        "Phase: Training, Dataset used:      Train, Batch Processed Count: 121, Epoch:  31, "
        "Accuracy: 0.84615386, Cross-Entropy:        0.5, Learning Rate: 0.0037157428"
    )
    validation = TrainMetrics("Validation", 13, 0, 1.0, 0.123456789)
    assert str(ImageClassificationMetrics(train=validation)) == (
        "Phase: Training, Dataset used: Validation, Batch Processed Count:  13, Epoch:   0, "
        "Accuracy:          1, Cross-Entropy: 0.12345679"
    )
    assert str(ImageClassificationMetrics(bottleneck=BottleneckMetrics("Train", 7))) == (
        "Phase: Bottleneck Computation, Dataset used:      Train, Image Index:   7"
    )
    assert str(BottleneckMetrics("Validation", 1234)).endswith("Dataset used: Validation, Image Index: 1234")


# ---------------------------------------------------------------------------------------------------
# Options


def test_options_have_mlnet_defaults():
    o = Options()
    assert (o.arch, o.epoch, o.batch_size, o.learning_rate) == ("ResnetV250", 200, 10, 0.01)
    assert o.learning_rate_scheduler == ExponentialLRDecay()
    assert (o.early_stopping.min_delta, o.early_stopping.patience, o.early_stopping.metric) == (0.01, 20, "accuracy")
    assert o.test_on_train_set and o.validation_set_fraction == 0.1
    assert not o.reuse_train_set_bottleneck_cached_values and not o.reuse_validation_set_bottleneck_cached_values
    assert o.workspace_path is None and o.metrics_callback is None and o.seed == 0
    assert o.restore_best_weights and o.shuffle_each_epoch
    assert Options().early_stopping is not o.early_stopping  # no shared mutable default


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(epoch=0), "epoch must be at least 1"), (dict(batch_size=0), "batch_size must be at least 1"),
     (dict(validation_set_fraction=1.5), r"validation_set_fraction must be in \[0, 1\)"),
     (dict(learning_rate=0), "learning_rate must be above 0"),
     (dict(metrics_callback="print"), "metrics_callback must be callable")],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ImageClassificationTrainer(Options(**kwargs))


def test_early_stopping_needs_something_to_watch():
    x, labels = separable(20)
    trainer = ImageClassificationTrainer(Options(test_on_train_set=False, progress=False))
    with pytest.raises(ConfigError, match="no validation set and test_on_train_set=False.*early_stopping=None"):
        trainer.fit_features(make_bottlenecks(x, labels), None)


def test_options_round_trip():
    o = Options(learning_rate_scheduler=PolynomialLRDecay(cycle=True), early_stopping=None, image_size=(96, 96),
                weights=None, metrics_callback=print)
    again = Options.from_dict(o.to_dict())
    assert again.learning_rate_scheduler == o.learning_rate_scheduler and again.early_stopping is None
    assert again.image_size == (96, 96) and again.weights is None and again.metrics_callback is None


# ---------------------------------------------------------------------------------------------------
# Training semantics


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def numpy_training(x, y, classes, options, epochs):
    """Plain SGD in numpy from the same start, order and Keras schedule; epoch metrics are per-image means."""
    kernel, bias = (w.astype(np.float64) for w in head_module.build_head(x.shape[1], classes, options.seed).get_weights())
    n, bs = len(x), options.batch_size
    steps = -(-n // bs)
    schedule = options.learning_rate_scheduler.keras_schedule(steps, options.learning_rate)
    history = []
    for epoch in range(epochs):
        hits, losses = [], []
        for step, start in enumerate(range(0, n, bs)):
            xb, yb = x[start:start + bs].astype(np.float64), y[start:start + bs]
            p = _softmax(xb @ kernel + bias)
            losses += list(-np.log(p[np.arange(len(yb)), yb]))
            hits += list(p.argmax(axis=1) == yb)
            grad = p.copy()
            grad[np.arange(len(yb)), yb] -= 1
            grad /= len(yb)
            rate = float(schedule(epoch * steps + step))
            kernel -= rate * xb.T @ grad
            bias -= rate * grad.sum(axis=0)
        history.append((np.mean(hits), np.mean(losses), float(schedule(epoch * steps + steps - 1))))
    return kernel, bias, history


def test_keras_fit_matches_a_numpy_reimplementation():
    x, labels = separable(23, d=6, classes=3, spread=2.0)  # 23 rows at batch 5: a final partial batch of 3
    schedule = ExponentialLRDecay(learning_rate=0.5, num_epochs_per_decay=0.5, decay_rate=0.5)  # rate changes mid-epoch
    options = Options(epoch=3, batch_size=5, learning_rate_scheduler=schedule, early_stopping=None,
                      restore_best_weights=False, shuffle_each_epoch=False, seed=3, progress=False,
                      class_weight=None)  # the numpy reference weighs every row the same (class weights: below)
    trained = ImageClassificationTrainer(options).fit_features(make_bottlenecks(x, labels), None)
    y = LabelMap.from_labels(labels).encode(labels)
    kernel, bias, history = numpy_training(x, y, 3, options, 3)
    np.testing.assert_allclose(trained.kernel, kernel, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(trained.bias, bias, rtol=1e-4, atol=1e-6)
    rows = trained.history
    assert list(rows["dataset"]) == ["Train"] * 3 and list(rows["epoch"]) == [0, 1, 2]
    np.testing.assert_allclose(rows["accuracy"], [h[0] for h in history], rtol=1e-6)
    np.testing.assert_allclose(rows["cross_entropy"], [h[1] for h in history], rtol=1e-4)
    # The rate shown is the one the epoch's last step (the partial batch, step 5e + 4) trained with.
    np.testing.assert_allclose(rows["learning_rate"], [h[2] for h in history], rtol=1e-6)


def test_the_options_learning_rate_is_what_trains():
    x, labels = separable(40, d=6, classes=2)
    lines = []
    options = Options(epoch=1, learning_rate=0.1, early_stopping=None, progress=False,
                      metrics_callback=lambda m: lines.append(str(m)))
    trained = ImageClassificationTrainer(options).fit_features(make_bottlenecks(x, labels))
    assert trained.history["learning_rate"].iloc[0] == pytest.approx(0.1)
    assert lines[0].endswith("Learning Rate:        0.1")
    own = Options(epoch=1, learning_rate=0.1, learning_rate_scheduler=ExponentialLRDecay(learning_rate=0.02),
                  early_stopping=None, progress=False)
    assert ImageClassificationTrainer(own).fit_features(make_bottlenecks(x, labels)).history[
        "learning_rate"].iloc[0] == pytest.approx(0.02)  # a schedule's own rate still wins
    constant = Options(epoch=2, learning_rate=0.3, learning_rate_scheduler=None, early_stopping=None, progress=False)
    rates = ImageClassificationTrainer(constant).fit_features(make_bottlenecks(x, labels)).history["learning_rate"]
    assert list(rates) == pytest.approx([0.3, 0.3])


def test_head_round_trips_through_keras_and_from_head():
    x, labels = separable(40, d=6, classes=2)
    data = make_bottlenecks(x, labels)
    trained = ImageClassificationTrainer(Options(epoch=2, early_stopping=None, progress=False)).fit_features(data)
    head = trained.head
    np.testing.assert_allclose(np.asarray(head.predict(x, verbose=0)), trained.predict_proba(x), atol=1e-5)
    again = TrainedClassifier.from_head(head, trained.label_map, data, history=trained.history,
                                        options=trained.options)
    np.testing.assert_array_equal(again.kernel, trained.kernel)
    assert (again.best_epoch, again.epochs_trained, again.arch) == (1, 2, "MobilenetV2")
    import keras

    wrong = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(DatasetError, match=r"maps 6 features to 3 classes, but the bottlenecks have 6 "
                                                r"features and the label map 2 classes"):
        TrainedClassifier.from_head(wrong, trained.label_map, data)


def test_reaches_high_accuracy_on_separable_features():
    x, labels = separable(400, d=32, classes=4)
    options = Options(epoch=15, batch_size=10, early_stopping=None, progress=False)
    trained = ImageClassificationTrainer(options).fit_features(make_bottlenecks(x[:300], labels[:300]),
                                                               make_bottlenecks(x[300:], labels[300:]))
    accuracy = np.mean(np.array(trained.predict(x[300:])) == np.array(labels[300:]))
    assert accuracy >= 0.95
    probabilities = trained.predict_proba(x[300:])
    assert probabilities.shape == (100, 4) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_callback_lines_and_batch_counts():
    x, labels = separable(35, d=8, classes=2)
    lines = []
    options = Options(epoch=2, batch_size=10, early_stopping=None, metrics_callback=lambda m: lines.append(str(m)),
                      progress=False)
    trained = ImageClassificationTrainer(options).fit_features(make_bottlenecks(x[:25], labels[:25]),
                                                               make_bottlenecks(x[25:], labels[25:]))
    assert len(lines) == 4
    assert lines[0].startswith("Phase: Training, Dataset used:      Train, Batch Processed Count:   3, Epoch:   0, ")
    assert "Learning Rate:       0.01" in lines[0]
    assert lines[1].startswith("Phase: Training, Dataset used: Validation, Batch Processed Count:   1, Epoch:   0, ")
    assert "Learning Rate" not in lines[1]
    first = trained.history.iloc[0]
    assert lines[0] == str(TrainMetrics("Train", 3, 0, first["accuracy"], first["cross_entropy"], 0.01))


def test_early_stopping_and_best_weights():
    x, labels = separable(120, d=8, classes=2)
    options = Options(epoch=50, batch_size=10, early_stopping=EarlyStopping(patience=3), progress=False)
    trained = ImageClassificationTrainer(options).fit_features(make_bottlenecks(x[:100], labels[:100]),
                                                               make_bottlenecks(x[100:], labels[100:]))
    assert trained.stopped_early and trained.epochs_trained < 50
    validation = trained.history[trained.history["dataset"] == "Validation"]
    assert len(validation) == trained.epochs_trained
    ranked = validation.sort_values(["accuracy", "cross_entropy"], ascending=[False, True], kind="stable")
    assert trained.best_epoch == int(ranked.iloc[0]["epoch"])
    # 20 validation rows at batch 10: the mean of batch means is the accuracy of the restored weights.
    restored = np.mean(np.array(trained.predict(x[100:])) == np.array(labels[100:]))
    assert restored == pytest.approx(ranked.iloc[0]["accuracy"])


def test_last_weights_without_restore():
    x, labels = separable(60, d=8, classes=2)
    options = Options(epoch=4, early_stopping=None, restore_best_weights=False, progress=False)
    trained = ImageClassificationTrainer(options).fit_features(make_bottlenecks(x[:50], labels[:50]),
                                                               make_bottlenecks(x[50:], labels[50:]))
    assert trained.best_epoch == 3 and not trained.stopped_early


def test_no_validation_keeps_last_epoch_and_says_so(capsys):
    x, labels = separable(30, d=8, classes=2)
    trained = ImageClassificationTrainer(Options(epoch=3, progress=False)).fit_features(make_bottlenecks(x, labels))
    out = capsys.readouterr().out
    assert "early stopping watches the training metrics" in out
    assert "keeping the last epoch's weights" in out
    assert trained.best_epoch == 2 and trained.validation_bottlenecks is None


def test_seeded_and_shuffle_changes_the_result():
    x, labels = separable(50, d=8, classes=2, spread=2.0)
    data = make_bottlenecks(x, labels)

    def run(**kwargs):
        options = Options(epoch=2, early_stopping=None, progress=False, **kwargs)
        return ImageClassificationTrainer(options).fit_features(data).kernel

    np.testing.assert_array_equal(run(), run())
    assert not np.array_equal(run(), run(shuffle_each_epoch=False))
    assert not np.array_equal(run(), run(seed=1))


def test_bad_training_data():
    x, labels = separable(20, d=8, classes=2)
    trainer = ImageClassificationTrainer(Options(epoch=1, early_stopping=None, progress=False))
    with pytest.raises(DatasetError, match="Only one class found"):
        trainer.fit_features(make_bottlenecks(x, ["same"] * 20))
    with pytest.raises(DatasetError, match="Validation features have width 4 but training features 8"):
        trainer.fit_features(make_bottlenecks(x, labels), make_bottlenecks(x[:, :4], labels))
    trained = trainer.fit_features(make_bottlenecks(x, labels))
    with pytest.raises(DatasetError, match=r"expects \(N, 8\) bottlenecks of MobilenetV2"):
        trained.predict_proba(x[:, :4])
    with pytest.raises(DatasetError, match="lacks column"):
        trainer.fit(pd.DataFrame({"image_path": ["a.jpg"]}))


def test_validation_split_is_mlnet_style_under_the_mlnet_protocol():
    frame = pd.DataFrame({"image_path": [f"{i}.jpg" for i in range(25)], "label": ["a", "b"] * 12 + ["a"]})
    train, validation = ImageClassificationTrainer(Options(progress=False, protocol="mlnet")).split_validation(frame)
    assert len(validation) == 2 and len(train) == 23  # int(25 · 0.1)
    assert set(train["image_path"]).isdisjoint(validation["image_path"])
    again, _ = ImageClassificationTrainer(Options(progress=False, protocol="mlnet")).split_validation(frame)
    assert list(again["image_path"]) == list(train["image_path"])  # seeded


def test_validation_split_is_a_stratified_carve_under_the_honest_protocol():
    frame = pd.DataFrame({"image_path": [f"{i}.jpg" for i in range(40)], "label": ["a"] * 32 + ["b"] * 8})
    train, validation = ImageClassificationTrainer(Options(progress=False)).split_validation(frame)
    assert len(validation) == 6 and len(train) == 34  # ceil(40 · 0.15)
    assert validation["label"].value_counts().to_dict() == {"a": 5, "b": 1}  # 4:1, as in the table (stratified)
    assert set(train["image_path"]).isdisjoint(validation["image_path"])
    none, _ = ImageClassificationTrainer(Options(progress=False, validation_set_fraction=0)).split_validation(frame)
    assert len(none) == 40  # validation_set_fraction 0: no validation set under either protocol


def test_unknown_protocol_and_bad_fraction_are_named():
    with pytest.raises(ConfigError, match=r"Options.protocol must be one of honest, mlnet, got 'fair'"):
        Options(protocol="fair").check()
    with pytest.raises(ConfigError, match=r"honest_validation_fraction must be between 0 and 1 .* got 1.5"):
        Options(honest_validation_fraction=1.5).check()


# ---------------------------------------------------------------------------------------------------
# Saving


def test_save_and_load(tmp_path):
    x, labels = separable(40, d=8, classes=3)
    options = Options(epoch=3, early_stopping=EarlyStopping(patience=5, metric="loss"), progress=False,
                      learning_rate_scheduler=PolynomialLRDecay(), weights=None, image_size=(64, 64))
    trained = ImageClassificationTrainer(options).fit_features(make_bottlenecks(x[:30], labels[:30]),
                                                               make_bottlenecks(x[30:], labels[30:]))
    folder = trained.save(tmp_path / "head")
    assert sorted(p.name for p in folder.iterdir()) == ["classifier.json", "head.npz", "history.csv", "labels.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head"]  # written atomically, nothing left over
    loaded = TrainedClassifier.load(folder)
    np.testing.assert_array_equal(loaded.predict_proba(x), trained.predict_proba(x))
    assert loaded.label_map == trained.label_map and loaded.arch == "MobilenetV2"
    assert (loaded.best_epoch, loaded.stopped_early, loaded.image_size) == (trained.best_epoch, False, (64, 64))
    assert loaded.backbone_weights is None
    assert loaded.options.learning_rate_scheduler == PolynomialLRDecay()
    assert loaded.options.early_stopping.metric == "loss"
    pd.testing.assert_frame_equal(loaded.history, trained.history, check_dtype=False)
    trained.save(folder)  # overwriting works
    with pytest.raises(ModelFolderError, match="missing classifier.json, head.npz"):
        TrainedClassifier.load(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------------
# End to end: images → bottlenecks → head


@pytest.fixture
def image_table(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    for label, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        for i in range(10):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (48, 48, 3)), 0, 255).astype(np.uint8)
            path = folder / f"{label}_{i}.jpg"
            Image.fromarray(pixels).save(path)
            rows.append((str(path), label))
    return pd.DataFrame(rows, columns=["image_path", "label"])


def quick_options(tmp_path, **kwargs):
    base = dict(arch="MobilenetV2", weights=None, image_size=(64, 64), epoch=3, batch_size=4,
                workspace_path=str(tmp_path / "ws"), progress=False, bottleneck_batch_size=8)
    base.update(kwargs)
    return Options(**base)


def test_end_to_end_from_images(image_table, tmp_path):
    lines = []
    options = quick_options(tmp_path, metrics_callback=lambda m: lines.append(str(m)), validation_set_fraction=0.2,
                            protocol="mlnet")  # ML.NET's unstratified 20 % split
    trained = ImageClassificationTrainer(options).fit(image_table)
    assert len(trained.train_bottlenecks) == 16 and len(trained.validation_bottlenecks) == 4
    assert lines[0] == "Phase: Bottleneck Computation, Dataset used:      Train, Image Index:   1"
    assert "Phase: Bottleneck Computation, Dataset used: Validation, Image Index:   4" in lines
    training = [line for line in lines if line.startswith("Phase: Training")]
    assert len(training) == 6 and "Batch Processed Count:   4, Epoch:   2" in training[-2]
    assert trained.kernel.shape == (1280, 2) and trained.label_map.names == ["blue", "red"]
    assert (tmp_path / "ws" / "bottlenecks" / "train" / "manifest.json").is_file()


def test_reused_train_cache_still_computes_validation(image_table, tmp_path):
    train, validation = image_table.iloc[::2], image_table.iloc[1::2]
    ImageClassificationTrainer(quick_options(tmp_path)).fit(train, validation)
    import shutil

    shutil.rmtree(tmp_path / "ws" / "bottlenecks" / "validation")
    options = quick_options(tmp_path, reuse_train_set_bottleneck_cached_values=True,
                            reuse_validation_set_bottleneck_cached_values=True)
    trained = ImageClassificationTrainer(options).fit(train, validation)
    assert trained.train_bottlenecks.from_cache
    assert trained.validation_bottlenecks is not None and not trained.validation_bottlenecks.from_cache
    assert set(trained.history["dataset"]) == {"Train", "Validation"}


def test_fit_reuses_a_cache_computed_in_the_tables_order_and_shuffles_after(image_table, tmp_path):
    from workshop_utils.bottleneck import compute_bottlenecks

    train, validation = image_table.iloc[::2], image_table.iloc[1::2]
    first = compute_bottlenecks(train, "MobilenetV2", tmp_path / "ws", "train", weights=None, image_size=(64, 64),
                                batch_size=8, progress=False)
    options = quick_options(tmp_path, reuse_train_set_bottleneck_cached_values=True)
    trained = ImageClassificationTrainer(options).fit(train, validation)
    assert trained.train_bottlenecks.from_cache  # the notebook's cache (table order) is what fit reuses
    assert trained.train_bottlenecks.image_paths != first.image_paths  # ML.NET's one seeded shuffle
    row = {p: i for i, p in enumerate(first.image_paths)}
    for i, path in enumerate(trained.train_bottlenecks.image_paths):
        np.testing.assert_array_equal(trained.train_bottlenecks.features[i], first.features[row[path]])
        assert trained.train_bottlenecks.labels[i] == first.labels[row[path]]


def test_temporary_workspace_is_removed(image_table, tmp_path, monkeypatch):
    made = tmp_path / "temporary-workspace"
    monkeypatch.setattr(trainer_module.tempfile, "mkdtemp", lambda *args: (made.mkdir(), str(made))[1])
    trained = ImageClassificationTrainer(quick_options(tmp_path, workspace_path=None, epoch=1)).fit(image_table)
    assert not made.exists() and trained.train_bottlenecks.cache_dir is None


def test_bundled_sample_quick(tmp_path):
    from workshop_utils.config import sample_dir
    from workshop_utils.data import load_dataset

    if not (sample_dir() / "index.csv").is_file():
        pytest.skip("data/sample is not generated yet")
    frame = load_dataset(sample_dir())
    frame = frame[frame["subset"] != "test"].groupby("label").head(4)  # a few images per class: seconds
    trained = ImageClassificationTrainer(quick_options(tmp_path, epoch=2, batch_size=10)).fit(frame)
    assert len(trained.label_map) == frame["label"].nunique()
    assert os.path.isdir(tmp_path / "ws" / "bottlenecks" / "validation")


# ---------------------------------------------------------------------------------------------------
# Class weights


def test_class_weights_reach_the_loss():
    """At the start every class has probability 1/C, so each image's loss is ln C and the epoch's loss is
    ln C times the mean weight: with weights the logged loss must move by exactly that factor."""
    x, _ = separable(40, d=8, classes=2)
    x, labels = x * 1e-3, ["a"] * 30 + ["b"] * 10  # tiny features: every logit stays ~0  # unbalanced: balanced weights are 40/60 and 40/20
    common = dict(epoch=1, learning_rate=1e-9, learning_rate_scheduler=None, early_stopping=None, progress=False,
                  validation_set_fraction=0, weights=None, image_size=(64, 64))
    plain = ImageClassificationTrainer(Options(class_weight=None, **common)).fit_features(make_bottlenecks(x, labels))
    balanced = ImageClassificationTrainer(Options(class_weight="balanced", **common)).fit_features(
        make_bottlenecks(x, labels))
    mapped = ImageClassificationTrainer(Options(class_weight={"b": 5.0}, **common)).fit_features(
        make_bottlenecks(x, labels))
    loss = {name: float(t.history["cross_entropy"].iloc[0]) for name, t in
            [("plain", plain), ("balanced", balanced), ("mapped", mapped)]}
    assert loss["plain"] == pytest.approx(np.log(2), rel=1e-3)
    assert loss["balanced"] == pytest.approx(np.log(2) * (30 * 40 / 60 + 10 * 40 / 20) / 40, rel=1e-3)
    assert loss["mapped"] == pytest.approx(np.log(2) * (30 * 1 + 10 * 5) / 40, rel=1e-3)


def test_class_weight_rules_and_errors():
    y = np.array([0, 0, 0, 1])
    label_map = LabelMap(["a", "b"])
    assert class_weights("balanced", y, label_map) == pytest.approx({0: 4 / 6, 1: 4 / 2})
    assert class_weights({"b": 3}, y, label_map) == {0: 1.0, 1: 3.0}
    assert class_weights(None, y, label_map) is None
    with pytest.raises(ConfigError, match=r"class_weight names unknown class\(es\) c; the classes are a, b"):
        class_weights({"c": 2}, y, label_map)
    with pytest.raises(ConfigError, match=r"Options.class_weight='equal' must be 'balanced', a mapping class -> "
                                           r"weight or None"):
        Options(class_weight="equal").check()


def test_a_diverging_run_says_to_lower_the_learning_rate():
    x, labels = separable(40, d=8, classes=2)
    options = Options(epoch=5, learning_rate=1e37, learning_rate_scheduler=None, early_stopping=None, progress=False,
                      validation_set_fraction=0, weights=None, image_size=(64, 64), class_weight=None)
    with pytest.raises(DatasetError, match=r"Training diverged: the loss became nan at epoch 0 with learning "
                                                r"rate 1e\+37\. Lower the learning rate \(--learning-rate"):
        ImageClassificationTrainer(options).fit_features(make_bottlenecks(x * 1e3, labels))
