"""Plot helpers: each runs on small synthetic inputs and returns a figure with the expected parts."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import io  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from workshop_utils import plots  # noqa: E402
from workshop_utils.metrics import evaluate  # noqa: E402
from workshop_utils.core.errors import ConfigError, DatasetError  # noqa: E402

CLASSES = ["bumper_dent", "door_scratch", "glass_shatter"]
COLORS = {"bumper_dent": (200, 60, 60), "door_scratch": (60, 160, 60), "glass_shatter": (60, 90, 200)}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def image_df(tmp_path) -> pd.DataFrame:
    """9 small JPEGs (3 per class) with subsets, in the data module's column layout."""
    rows = []
    for c, label in enumerate(CLASSES):
        for k in range(3):
            path = tmp_path / f"{100 * c + k}.jpeg"
            image = Image.new("RGB", (64, 48), COLORS[label])
            ImageDraw.Draw(image).ellipse((8 + 10 * k, 8, 40 + 10 * k, 40), fill=(240, 240, 240))
            image.save(path)
            rows.append((str(path), label, ["train", "train", "validation"][k] if c else ["train", "test", "validation"][k]))
    return pd.DataFrame(rows, columns=["image_path", "label", "subset"])


@pytest.fixture
def predictions(image_df):
    rng = np.random.default_rng(0)
    y = [CLASSES.index(label) for label in image_df.label]
    probs = rng.dirichlet(np.ones(3), size=len(y))
    probs[0] = [0.05, 0.9, 0.05]  # bumper_dent predicted door_scratch with 90%: the top mistake
    return y, probs


def titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def test_class_balance(image_df):
    fig = plots.plot_class_balance(image_df)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.containers) == 3  # train, validation, test
    assert len(ax.patches) == 3 * len(CLASSES)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train (5)", "validation (3)", "test (1)"]
    assert "9 images, 3 classes" in ax.get_title() and ax.get_ylabel() == "images"
    unsplit = plots.plot_class_balance(image_df.assign(subset=""))
    assert len(unsplit.axes[0].patches) == 3 and unsplit.axes[0].get_legend() is None


def test_sample_grid_per_class_and_random(image_df, tmp_path):
    fig = plots.plot_sample_grid(image_df, per_class=2, seed=1)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 6 and all(len(ax.images) == 1 for ax in visible)
    assert sorted(titles(fig)) == sorted(CLASSES * 2)
    fig.savefig(tmp_path / "grid.png", dpi=60)
    random = plots.plot_sample_grid(image_df, n=4, seed=0)
    assert len([ax for ax in random.axes if ax.get_visible()]) == 4
    again = plots.plot_sample_grid(image_df, n=4, seed=0)
    assert titles(again) == titles(random)  # seeded


def test_sample_grid_reports_unreadable_images(image_df, tmp_path):
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"not an image")
    df = pd.concat([image_df, pd.DataFrame([(str(broken), "zz_other", "train")], columns=image_df.columns)])
    with pytest.warns(UserWarning, match=r"1 image\(s\) could not be shown:\n  .*broken.jpeg"):
        fig = plots.plot_sample_grid(df, per_class=1)
    assert any("cannot open" in t.get_text() for ax in fig.axes for t in ax.texts)


def history_frame(epochs: int = 6) -> pd.DataFrame:
    rows = []
    for e in range(epochs):
        rows.append((e, "Train", 0.5 + 0.08 * e, 1.2 - 0.15 * e, 0.01 * 0.9**e))
        rows.append((e, "Validation", 0.45 + 0.07 * e, 1.3 - 0.12 * e, np.nan))
    return pd.DataFrame(rows, columns=list(plots.HISTORY_COLUMNS))


def test_training_curves(tmp_path):
    fig = plots.plot_training_curves(history_frame(), best_epoch=4)
    assert titles(fig) == ["Accuracy", "Cross-entropy (loss)", "Learning rate"]
    acc, loss, lr = fig.axes
    assert len(acc.lines) == 3 and len(loss.lines) == 3 and len(lr.lines) == 2  # + best-epoch marker
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["Train", "Validation", "best epoch (4)"]
    np.testing.assert_allclose(lr.lines[0].get_ydata(), 0.01 * 0.9 ** np.arange(6))
    fig.savefig(tmp_path / "curves.png", dpi=60)
    train_only = plots.plot_training_curves(history_frame()[lambda d: d.dataset == "Train"])
    assert len(train_only.axes[0].lines) == 1


def test_training_curves_bad_history():
    with pytest.raises(DatasetError, match=r"the training history: missing column\(s\) learning_rate"):
        plots.plot_training_curves(history_frame().drop(columns="learning_rate"))
    with pytest.raises(ConfigError, match="has no rows; train first"):
        plots.plot_training_curves(history_frame().iloc[:0])


def test_confusion_matrix_from_metrics_and_matrix(predictions, tmp_path):
    y, probs = predictions
    m = evaluate(y, probs, CLASSES)
    fig = plots.plot_confusion_matrix(m)
    ax = fig.axes[0]
    assert len(ax.images) == 1 and len(fig.axes) == 2  # heatmap + colour bar
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(m.confusion_matrix.ravel().tolist())
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert ax.get_xlabel() == "predicted class"
    fig.savefig(tmp_path / "confusion.png", dpi=80)
    normalised = plots.plot_confusion_matrix(np.array([[3, 1], [0, 0]]), ["a", "b"], normalize=True)
    cells = [t.get_text() for t in normalised.axes[0].texts]
    assert cells == ["75%\n(3)", "25%\n(1)", "0%\n(0)", "0%\n(0)"]  # absent row: zeros, not NaN
    frame = plots.plot_confusion_matrix(m.confusion_frame())
    assert [t.get_text() for t in frame.axes[0].get_xticklabels()] == CLASSES
    with pytest.raises(ConfigError, match=r"must be square"):
        plots.plot_confusion_matrix(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match=r"2×2 but 3 class names"):
        plots.plot_confusion_matrix(np.zeros((2, 2)), CLASSES)


def test_per_class_accuracy(predictions):
    y, probs = predictions
    probs = np.hstack([probs * 0.9, np.full((len(y), 1), 0.1)])
    m = evaluate(y, probs, CLASSES + ["unknown"])  # "unknown" absent: grey bar, "no rows"
    fig = plots.plot_per_class_accuracy(m)
    ax = fig.axes[0]
    assert len(ax.patches) == 4
    np.testing.assert_allclose([p.get_width() for p in ax.patches], m.recall)
    assert "no rows" in [t.get_text() for t in ax.texts]
    assert ax.get_title() == "Per-class accuracy"


def test_prediction_listing_and_lines(predictions, image_df, capsys):
    y, probs = predictions
    listing = plots.prediction_listing(image_df.image_path, y, probs, CLASSES)
    assert list(listing.columns[:5]) == ["image", "actual", "predicted", "probability", "correct"]
    assert listing.image[0] == "0.jpeg"
    lines = plots.format_prediction_listing(listing, n=2)
    assert lines[0] == "Image: 0.jpeg | Actual: bumper_dent | Predicted: door_scratch"
    assert lines[-1] == "... 7 more row(s)"
    plots.print_prediction_listing(listing, n=1, show_probability=True)
    assert capsys.readouterr().out == (
        "Image: 0.jpeg | Actual: bumper_dent | Predicted: door_scratch | Probability: 0.9000\n... 8 more row(s)\n"
    )
    buffer = io.StringIO()
    plots.print_prediction_listing(listing, file=buffer)
    assert len(buffer.getvalue().splitlines()) == len(listing)


def test_confident_mistakes_gallery(predictions, image_df, tmp_path):
    y, probs = predictions
    listing = plots.prediction_listing(image_df.image_path, y, probs, CLASSES)
    n_wrong = int((~listing.correct).sum())
    fig = plots.plot_confident_mistakes(listing, n=3, ncols=3)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == min(3, n_wrong) and all(len(ax.images) == 1 for ax in visible)
    assert visible[0].get_title() == "0.jpeg\nactual: bumper_dent\npredicted: door_scratch (90%)"
    assert f"of {n_wrong} wrong" in fig.get_suptitle()
    fig.savefig(tmp_path / "mistakes.png", dpi=60)


def test_confident_mistakes_when_all_correct(predictions, image_df):
    y, _ = predictions
    listing = plots.prediction_listing(image_df.image_path, y, np.eye(3)[y], CLASSES)
    fig = plots.plot_confident_mistakes(listing)
    assert len(fig.axes) == 1
    assert fig.axes[0].texts[0].get_text() == "No wrong predictions: all 9 images were classified correctly."
    with pytest.raises(DatasetError, match=r"the prediction listing: missing column\(s\) correct"):
        plots.plot_confident_mistakes(listing.drop(columns="correct"))


@dataclass
class FakePrediction:
    label: str
    probability: float
    scores: dict


def test_prediction_probabilities():
    scores = {"bumper_dent": 0.1, "door_scratch": 0.7, "glass_shatter": 0.2}
    fig = plots.plot_prediction_probabilities(scores)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["door_scratch", "glass_shatter", "bumper_dent"]
    assert len(ax.patches) == 3 and ax.get_title() == "Predicted: door_scratch (70.0%)"
    from_prediction = plots.plot_prediction_probabilities(FakePrediction("door_scratch", 0.7, scores), top=2)
    assert len(from_prediction.axes[0].patches) == 2
    with pytest.raises(ConfigError, match="non-empty dict of class -> probability"):
        plots.plot_prediction_probabilities({})


@dataclass
class FakeBottlenecks:
    features: np.ndarray
    labels: list


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_projection(method, tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16)) * 5
    y = np.repeat(np.arange(3), 8)
    x = centers[y] + rng.normal(size=(24, 16))
    fig = plots.plot_projection(x, y, method=method, label_map=CLASSES)
    ax = fig.axes[0]
    assert len(ax.collections) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"{c} (8)" for c in CLASSES]
    if method == "pca":
        assert ax.get_xlabel().startswith("PC 1 (")
        fig.savefig(tmp_path / "projection.png", dpi=60)
        from_bottlenecks = plots.plot_projection(FakeBottlenecks(x.astype(np.float32), [CLASSES[i] for i in y]))
        assert len(from_bottlenecks.axes[0].collections) == 3
    else:
        assert "t-SNE" in ax.get_title()


def test_projection_bad_inputs():
    x = np.zeros((5, 4))
    with pytest.raises(ConfigError, match="features have 5 rows but labels have 4"):
        plots.plot_projection(x, ["a"] * 4)
    with pytest.raises(ConfigError, match="method must be 'pca' or 'tsne', got 'umap'"):
        plots.plot_projection(x, ["a"] * 5, method="umap")
    with pytest.raises(ConfigError, match="at least 3 feature vectors"):
        plots.plot_projection(x[:2], ["a"] * 2)


def test_figures_are_detached_from_pyplot(image_df):
    before = plt.get_fignums()
    plots.plot_class_balance(image_df)
    assert plt.get_fignums() == before  # shown once in notebooks, never piled up


def test_class_balance_bad_input():
    with pytest.raises(DatasetError, match=r"the image index: missing column\(s\) label"):
        plots.plot_class_balance(pd.DataFrame({"image_path": ["a.jpg"]}))
