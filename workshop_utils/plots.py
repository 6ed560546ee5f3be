"""Pictures and listings for looking at the data, the training run and the evaluation results.

Every ``plot_*`` function returns a matplotlib ``Figure`` (drawn into ``ax`` when one is given) and never
calls ``plt.show()``. The figures are detached from pyplot's figure manager, so a notebook shows a figure
exactly once: as the cell's last value, or with ``display(fig)``; scripts use ``fig.savefig(path)``.
No TensorFlow here: inputs are DataFrames, arrays and :class:`~workshop_utils.metrics.MulticlassMetrics`.
"""
from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from workshop_utils.core.errors import ConfigError
from workshop_utils.head import HISTORY_COLUMNS
from workshop_utils.metrics import MulticlassMetrics, predictions_frame
from workshop_utils.metrics import class_names as _names_of

SUBSET_ORDER = ("train", "validation", "test")


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------
def _figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.8), **kwargs: Any):
    """A constrained-layout figure and its axes, detached from pyplot (shown once in notebooks)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", squeeze=False, **kwargs)
    plt.close(fig)  # pyplot forgets it: no double display in Jupyter, no open-figure build-up
    return fig, axes


def _require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ConfigError(f"{what} must be a pandas DataFrame, got {type(df).__name__}.")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ConfigError(
            f"{what} lacks the column(s) {missing}; it has {list(df.columns)}. "
            f"Expected columns: {', '.join(columns)}."
        )


def _class_colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _load_thumbnail(path: str | Path, size: int) -> np.ndarray:
    """An RGB thumbnail (longest side ``size``), EXIF-rotated as a phone photo is meant to be seen."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        image.thumbnail((size, size))
        return np.asarray(image)


def _show_image(ax: Axes, path: str | Path, size: int, problems: list[str]) -> None:
    """Draw an image into ``ax``; an unreadable file becomes a red note on the tile (and is reported)."""
    ax.set_xticks([])
    ax.set_yticks([])
    try:
        ax.imshow(_load_thumbnail(path, size))
    except (OSError, ValueError) as exc:  # missing file, not an image, truncated data
        problems.append(f"{path}: {exc}")
        ax.text(0.5, 0.5, f"cannot open\n{Path(path).name}", ha="center", va="center", color="red",
                transform=ax.transAxes, wrap=True)


def _report_problems(problems: list[str]) -> None:
    if problems:
        shown = "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else "")
        warnings.warn(f"{len(problems)} image(s) could not be shown:\n  {shown}", stacklevel=3)


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


# --------------------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------------------
def plot_class_balance(df: pd.DataFrame, ax: Axes | None = None, title: str = "Images per class") -> Figure:
    """Grouped bar chart of images per class, one bar colour per subset (train/validation/test)."""
    _require_columns(df, ["label"], "the image index")
    if df.empty:
        raise ConfigError("the image index has no rows; load a dataset first (data.load_dataset).")
    subsets = df["subset"].fillna("").astype(str) if "subset" in df.columns else pd.Series("", index=df.index)
    subsets = subsets.replace("", "all (no subset)")
    counts = pd.crosstab(df["label"].astype(str), subsets)
    order = [s for s in SUBSET_ORDER if s in counts.columns] + sorted(
        s for s in counts.columns if s not in SUBSET_ORDER
    )
    counts = counts[order]
    if ax is None:
        fig, axes = _figure(figsize=(max(6.0, 0.5 * len(counts) * len(order) ** 0.5 + 3.5), 4.5))
        ax = axes[0, 0]
    width = 0.8 / len(order)
    x = np.arange(len(counts))
    for j, subset in enumerate(order):
        bars = ax.bar(x + (j - (len(order) - 1) / 2) * width, counts[subset].to_numpy(), width,
                      label=f"{subset} ({counts[subset].sum()})")
        ax.bar_label(bars, fontsize=8, padding=1)
    ax.set_xticks(x, counts.index, rotation=30, ha="right")
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_title(f"{title} ({len(df)} images, {len(counts)} classes)")
    ax.margins(y=0.12)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if len(order) > 1 or order[0] != "all (no subset)":
        ax.legend(title="subset", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax.figure


def plot_sample_grid(
    df: pd.DataFrame,
    per_class: int | None = 3,
    n: int | None = None,
    seed: int = 0,
    ncols: int | None = None,
    thumb_size: int = 160,
) -> Figure:
    """A grid of sample images titled with their labels: ``per_class`` per class (one row each), or ``n`` random."""
    _require_columns(df, ["image_path", "label"], "the image index")
    if df.empty:
        raise ConfigError("the image index has no rows; load a dataset first (data.load_dataset).")
    rng = np.random.default_rng(seed)
    if n is not None:
        if n < 1:
            raise ConfigError(f"n must be at least 1, got {n}.")
        rows = df.iloc[rng.permutation(len(df))[: min(n, len(df))]]
        ncols = ncols or min(len(rows), 6)
        nrows = math.ceil(len(rows) / ncols)
        cells = list(range(len(rows)))
    else:
        if per_class is None or per_class < 1:
            raise ConfigError(f"per_class must be at least 1 (or pass n), got {per_class}.")
        picked, cells = [], []
        labels = sorted(df["label"].astype(str).unique())
        ncols = per_class
        for r, label in enumerate(labels):
            group = df[df["label"].astype(str) == label]
            take = group.iloc[rng.permutation(len(group))[:per_class]]
            picked.append(take)
            cells.extend(r * ncols + c for c in range(len(take)))
        rows = pd.concat(picked)
        nrows = len(labels)
    fig, axes = _figure(nrows, ncols, figsize=(1.9 * ncols + 0.4, 1.9 * nrows + 0.6))
    problems: list[str] = []
    for ax in axes.flat:
        ax.set_visible(False)
    for cell, (_, row) in zip(cells, rows.iterrows()):
        ax = axes.flat[cell]
        ax.set_visible(True)
        _show_image(ax, row["image_path"], thumb_size, problems)
        ax.set_title(str(row["label"]), fontsize=9)
    fig.suptitle(f"Sample images ({len(rows)} of {len(df)})")
    _report_problems(problems)
    return fig


# --------------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------------
def plot_training_curves(history: pd.DataFrame, best_epoch: int | None = None, title: str | None = None) -> Figure:
    """Accuracy and cross-entropy (train vs validation) and the learning rate per epoch, from ``history``."""
    _require_columns(history, HISTORY_COLUMNS, "the training history")
    if history.empty:
        raise ConfigError("the training history has no rows; train first (trainer.fit) or load a trained model.")
    fig, axes = _figure(1, 3, figsize=(14, 4))
    ax_acc, ax_loss, ax_lr = axes[0]
    datasets = [d for d in ("Train", "Validation") if d in set(history["dataset"])]
    datasets += sorted(set(history["dataset"].astype(str)) - set(datasets))
    styles = {"Train": dict(color="tab:blue"), "Validation": dict(color="tab:orange", linestyle="--")}
    for dataset in datasets:
        part = history[history["dataset"] == dataset].sort_values("epoch")
        marker = "o" if len(part) <= 30 else None
        for ax, column in ((ax_acc, "accuracy"), (ax_loss, "cross_entropy")):
            values = part[["epoch", column]].dropna()
            if not values.empty:
                ax.plot(values["epoch"], values[column], marker=marker, markersize=3, label=dataset,
                        **styles.get(dataset, {}))
    lr = history[history["dataset"] == "Train"] if "Train" in datasets else history
    lr = lr[["epoch", "learning_rate"]].dropna().drop_duplicates("epoch").sort_values("epoch")
    if lr.empty:
        ax_lr.text(0.5, 0.5, "no learning rate recorded", ha="center", va="center", transform=ax_lr.transAxes)
    else:
        ax_lr.plot(lr["epoch"], lr["learning_rate"], color="tab:green", marker="o" if len(lr) <= 30 else None,
                   markersize=3, label="learning rate")
    for ax, label, name in (
        (ax_acc, "accuracy", "Accuracy"),
        (ax_loss, "cross-entropy", "Cross-entropy (loss)"),
        (ax_lr, "learning rate", "Learning rate"),
    ):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best epoch ({best_epoch})")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax_acc.set_ylim(-0.02, 1.02)
    fig.suptitle(title or "Training curves")
    return fig


# --------------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------------
def _matrix_and_names(
    metrics_or_matrix: MulticlassMetrics | pd.DataFrame | np.ndarray, names: Sequence[str] | Any | None
) -> tuple[np.ndarray, list[str]]:
    if isinstance(metrics_or_matrix, MulticlassMetrics):
        return metrics_or_matrix.confusion_matrix.astype(np.float64), list(metrics_or_matrix.class_names)
    if isinstance(metrics_or_matrix, pd.DataFrame) and names is None:
        names = [str(c) for c in metrics_or_matrix.index]
    matrix = np.asarray(metrics_or_matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ConfigError(f"a confusion matrix must be square (C×C), got shape {matrix.shape}.")
    names = _names_of(names) if names is not None else [str(i) for i in range(len(matrix))]
    if len(names) != len(matrix):
        raise ConfigError(f"the confusion matrix is {len(matrix)}×{len(matrix)} but {len(names)} class names were given.")
    return matrix, names


def plot_confusion_matrix(
    metrics_or_matrix: MulticlassMetrics | pd.DataFrame | np.ndarray,
    class_names: Sequence[str] | Any | None = None,
    normalize: bool = False,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Heatmap of the confusion matrix (rows = actual, columns = predicted) with counts in the cells.

    ``normalize=True`` colours and labels each row by its share of the actual class (recall on the
    diagonal), still showing the count.
    """
    matrix, names = _matrix_and_names(metrics_or_matrix, class_names)
    support = matrix.sum(axis=1)
    shares = np.divide(matrix, support[:, None], out=np.zeros_like(matrix), where=support[:, None] > 0)
    values = shares if normalize else matrix
    c = len(names)
    if ax is None:
        side = max(4.5, 0.75 * c + 2.5)
        fig, axes = _figure(figsize=(side + 1.2, side))
        ax = axes[0, 0]
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(values.max(), 1))
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label="share of actual class" if normalize else "images")
    threshold = (1 if normalize else max(values.max(), 1)) / 2
    for i in range(c):
        for j in range(c):
            count = int(round(matrix[i, j]))
            text = f"{shares[i, j]:.0%}\n({count})" if normalize else f"{count}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8 if c > 8 else 10,
                    color="white" if values[i, j] > threshold else "black")
    ax.set_xticks(range(c), names, rotation=45, ha="right")
    ax.set_yticks(range(c), [f"{name} ({int(s)})" for name, s in zip(names, support)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("actual class (rows in set)")
    ax.set_title(title or ("Confusion matrix (row shares)" if normalize else "Confusion matrix (counts)"))
    return ax.figure


def plot_per_class_accuracy(metrics: MulticlassMetrics, ax: Axes | None = None, title: str | None = None) -> Figure:
    """Horizontal bars of per-class accuracy (recall), with the macro and micro accuracy as reference lines."""
    if not isinstance(metrics, MulticlassMetrics):
        raise ConfigError(f"expected the MulticlassMetrics returned by metrics.evaluate, got {type(metrics).__name__}.")
    names = metrics.class_names
    c = len(names)
    if ax is None:
        fig, axes = _figure(figsize=(7.5, max(3.0, 0.45 * c + 1.5)))
        ax = axes[0, 0]
    y = np.arange(c)
    colors = ["tab:blue" if s > 0 else "lightgray" for s in metrics.support]
    ax.barh(y, metrics.recall, color=colors)
    correct = np.diag(metrics.confusion_matrix)
    for i, (r, k, s) in enumerate(zip(metrics.recall, correct, metrics.support)):
        # A text column right of 1.0, clear of the bars and the reference lines.
        ax.text(1.03, i, f"{r:.2f} ({k}/{s})" if s > 0 else "no rows", va="center", fontsize=8)
    ax.axvline(metrics.macro_accuracy, color="tab:red", linestyle="--",
               label=f"macro accuracy {metrics.macro_accuracy:.3f}")
    ax.axvline(metrics.micro_accuracy, color="black", linestyle=":",
               label=f"micro accuracy {metrics.micro_accuracy:.3f}")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.25)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("accuracy within the class (recall)")
    ax.set_title(title or "Per-class accuracy")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    return ax.figure


def prediction_listing(
    image_paths: Sequence[str | Path] | None,
    y_true: Iterable[int] | Iterable[str],
    probabilities: Any,
    label_map: Any,
) -> pd.DataFrame:
    """The lab's actual-vs-predicted listing as a DataFrame (image, actual, predicted, probability, correct)."""
    return predictions_frame(image_paths, y_true, probabilities, label_map)


def format_prediction_listing(listing: pd.DataFrame, n: int | None = None, show_probability: bool = False) -> list[str]:
    """The listing as the lab's lines ``Image: 1366.jpeg | Actual: bumper_scratch | Predicted: bumper_scratch``."""
    _require_columns(listing, ["image", "actual", "predicted"], "the prediction listing")
    if show_probability:
        _require_columns(listing, ["probability"], "the prediction listing")
    rows = listing if n is None else listing.head(n)
    lines = []
    for row in rows.itertuples(index=False):
        line = f"Image: {row.image} | Actual: {row.actual} | Predicted: {row.predicted}"
        if show_probability:
            line += f" | Probability: {row.probability:.4f}"
        lines.append(line)
    if len(rows) < len(listing):
        lines.append(f"... {len(listing) - len(rows)} more row(s)")
    return lines


def print_prediction_listing(
    listing: pd.DataFrame, n: int | None = None, show_probability: bool = False, file: TextIO | None = None
) -> None:
    """Print the lab-style listing lines (the first ``n`` rows, or all)."""
    for line in format_prediction_listing(listing, n, show_probability):
        print(line, file=file or sys.stdout)


def plot_confident_mistakes(listing: pd.DataFrame, n: int = 8, ncols: int = 4, thumb_size: int = 224) -> Figure:
    """Gallery of the wrong predictions with the highest predicted probability (the most instructive ones)."""
    _require_columns(listing, ["image_path", "actual", "predicted", "probability", "correct"],
                     "the prediction listing (use prediction_listing / metrics.predictions_frame)")
    wrong = listing[~listing["correct"].astype(bool)].sort_values("probability", ascending=False, kind="stable")
    if wrong.empty:
        fig, axes = _figure(figsize=(6, 1.6))
        ax = axes[0, 0]
        ax.axis("off")
        ax.text(0.5, 0.5, f"No wrong predictions: all {len(listing)} images were classified correctly.",
                ha="center", va="center", fontsize=12, transform=ax.transAxes)
        ax.set_title("Most confidently wrong predictions")
        return fig
    shown = wrong.head(n)
    ncols = max(1, min(ncols, len(shown)))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = _figure(nrows, ncols, figsize=(3.0 * ncols, 3.3 * nrows + 0.4))
    problems: list[str] = []
    for ax, row in zip(axes.flat, shown.itertuples(index=False)):
        _show_image(ax, row.image_path, thumb_size, problems)
        ax.set_title(f"{Path(str(row.image_path)).name}\nactual: {row.actual}\n"
                     f"predicted: {row.predicted} ({row.probability:.0%})", fontsize=9, color="darkred")
    _hide_unused(axes, len(shown))
    fig.suptitle(f"Most confidently wrong predictions ({len(shown)} of {len(wrong)} wrong, {len(listing)} images)")
    _report_problems(problems)
    return fig


def plot_prediction_probabilities(
    scores: Mapping[str, float] | Any, title: str | None = None, ax: Axes | None = None, top: int | None = None
) -> Figure:
    """Horizontal bar chart of one prediction's class probabilities, highest first (``scores`` dict or Prediction)."""
    scores = getattr(scores, "scores", scores)
    if not isinstance(scores, Mapping) or not scores:
        raise ConfigError(f"scores must be a non-empty dict of class -> probability, got {type(scores).__name__}.")
    items = sorted(((str(k), float(v)) for k, v in scores.items()), key=lambda kv: -kv[1])
    if top is not None:
        items = items[:top]
    names = [k for k, _ in items]
    values = [v for _, v in items]
    if ax is None:
        fig, axes = _figure(figsize=(6.5, max(2.5, 0.4 * len(items) + 1.2)))
        ax = axes[0, 0]
    colors = ["tab:green"] + ["tab:gray"] * (len(items) - 1)
    bars = ax.barh(range(len(items)), values, color=colors)
    ax.bar_label(bars, [f"{v:.1%}" for v in values], padding=3, fontsize=8)
    ax.set_yticks(range(len(items)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("probability")
    ax.set_title(title or f"Predicted: {names[0]} ({values[0]:.1%})")
    return ax.figure


# --------------------------------------------------------------------------------------------------
# The bottleneck features
# --------------------------------------------------------------------------------------------------
def plot_projection(
    features: np.ndarray | Any,
    labels: Sequence[str] | Sequence[int] | None = None,
    method: str = "pca",
    seed: int = 0,
    ax: Axes | None = None,
    perplexity: float = 30.0,
    label_map: Any = None,
    title: str | None = None,
) -> Figure:
    """2-D projection (PCA, or t-SNE with ``method="tsne"``) of feature vectors, coloured by class.

    ``features`` is an N×d array or a ``Bottlenecks`` (its ``features`` and ``labels`` are used);
    integer labels are named through ``label_map`` when given.
    """
    if labels is None and hasattr(features, "features"):
        labels = getattr(features, "labels", None)
    features = getattr(features, "features", features)
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ConfigError(f"features must be an N×d array, got shape {x.shape}.")
    if len(x) < 3:
        raise ConfigError(f"a projection needs at least 3 feature vectors, got {len(x)}.")
    if labels is None:
        raise ConfigError("labels are required (one per feature row) to colour the points by class.")
    labels = list(labels)
    if len(labels) != len(x):
        raise ConfigError(f"features have {len(x)} rows but labels have {len(labels)}; they must match row for row.")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ConfigError(f"features contain NaN or infinite values in {bad.size} row(s), first row {bad[0]}.")
    if label_map is not None:
        names = _names_of(label_map)
        labels = [names[int(v)] if not isinstance(v, str) else v for v in labels]
    labels = [str(v) for v in labels]
    method = method.lower().replace("-", "")
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed)
        xy = pca.fit_transform(x)
        axis_labels = [f"PC {i + 1} ({r:.0%} of variance)" for i, r in enumerate(pca.explained_variance_ratio_)]
        method_name = "PCA"
    elif method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(perplexity, max(1.0, (len(x) - 1) / 3)))  # t-SNE needs perplexity < N
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
        axis_labels = ["t-SNE 1", "t-SNE 2"]
        method_name = f"t-SNE (perplexity {perplexity:g})"
    else:
        raise ConfigError(f"method must be 'pca' or 'tsne', got {method!r}.")
    classes = sorted(set(labels))
    if ax is None:
        fig, axes = _figure(figsize=(7.5, 5.5))
        ax = axes[0, 0]
    label_array = np.array(labels)
    for color, cls in zip(_class_colors(len(classes)), classes):
        mask = label_array == cls
        ax.scatter(xy[mask, 0], xy[mask, 1], s=18, color=color, alpha=0.8, label=f"{cls} ({mask.sum()})")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title or f"{method_name} of {len(x)} feature vectors ({x.shape[1]} dimensions)")
    ax.legend(title="class", fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return ax.figure


# --------------------------------------------------------------------------------------------------
# Fine-tuning (07) and explanations (08)
# --------------------------------------------------------------------------------------------------
def _as_image(pixels: Any) -> np.ndarray:
    """RGB pixels (0–255 floats or uint8) as uint8 for imshow."""
    array = np.asarray(pixels)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ConfigError(f"an image must be (height, width, 3) RGB, got shape {array.shape}.")
    return np.clip(array, 0, 255).astype(np.uint8)


def plot_augmentation_grid(original: Any, versions: Sequence[Any], ncols: int = 4,
                           title: str = "One photo, augmented as in training") -> Figure:
    """The original photo followed by its augmented versions (what the model sees at each training step)."""
    if len(versions) == 0:
        raise ConfigError("versions is empty: pass at least one augmented image.")
    images = [_as_image(original)] + [_as_image(v) for v in versions]
    nrows = math.ceil(len(images) / ncols)
    fig, axes = _figure(nrows, ncols, figsize=(2.6 * ncols, 2.4 * nrows))
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        ax.imshow(image)
        ax.set_title("original" if i == 0 else f"augmented {i}", fontsize=9)
        ax.axis("off")
    _hide_unused(axes, len(images))
    fig.suptitle(title)
    return fig


def plot_confusion_pair(before: MulticlassMetrics, after: MulticlassMetrics,
                        titles: tuple[str, str] = ("before: head only", "after: fine-tuned"),
                        normalize: bool = False) -> Figure:
    """Two confusion matrices side by side (same colour scale), e.g. before and after fine-tuning."""
    if not isinstance(before, MulticlassMetrics) or not isinstance(after, MulticlassMetrics):
        raise ConfigError("plot_confusion_pair needs two MulticlassMetrics (from metrics.evaluate).")
    if list(before.class_names) != list(after.class_names):
        raise ConfigError(f"the two evaluations have different classes: {before.class_names} vs {after.class_names}.")
    c = len(before.class_names)
    side = max(4.5, 0.75 * c + 2.5)
    fig, axes = _figure(1, 2, figsize=(2 * side + 2.4, side))
    for ax, metrics, title in zip(axes[0], (before, after), titles):
        plot_confusion_matrix(metrics, normalize=normalize, ax=ax,
                              title=f"{title}\nmacro {metrics.macro_accuracy:.3f}, log-loss {metrics.log_loss:.3f}")
    return fig


def plot_grad_cam_gallery(items: Sequence[Mapping[str, Any]], class_names: Sequence[str], ncols: int = 4,
                          alpha: float = 0.45, title: str | None = None) -> Figure:
    """Photos with their Grad-CAM heatmap overlaid: one tile for the predicted class, and for a mistake a second
    tile for the true class, and a colour bar (0: no evidence, 1: the map's peak). ``items``: dicts with
    ``photo``, ``heatmap``, ``predicted``, ``probabilities`` and optionally ``true``, ``true_heatmap``, ``path``
    (what ``explain.explain_files`` returns)."""
    tiles: list[tuple[np.ndarray, np.ndarray, str, str]] = []
    for item in items:
        missing = [key for key in ("photo", "heatmap", "predicted", "probabilities") if key not in item]
        if missing:
            raise ConfigError(f"a gallery item lacks {missing}; build the items with explain.explain_files().")
        photo, predicted, true = _as_image(item["photo"]), int(item["predicted"]), item.get("true")
        probability = float(np.asarray(item["probabilities"])[predicted])
        name = Path(str(item.get("path", ""))).name
        right = true is None or int(true) == predicted
        colour = "black" if true is None else ("green" if right else "red")
        head = f"{name}\n" if name else ""
        tiles.append((photo, np.asarray(item["heatmap"]), f"{head}looks for {class_names[predicted]} "
                      f"({probability:.2f})" + ("" if true is None else (" ✓" if right else " ✗")), colour))
        if not right and item.get("true_heatmap") is not None:
            tiles.append((photo, np.asarray(item["true_heatmap"]), f"{head}looks for true {class_names[int(true)]}",
                          "darkorange"))
    if not tiles:
        raise ConfigError("items is empty: nothing to show.")
    nrows = math.ceil(len(tiles) / ncols)
    fig, axes = _figure(nrows, ncols, figsize=(3.0 * ncols, 2.9 * nrows))
    for ax, (photo, heatmap, label, colour) in zip(axes.flat, tiles):
        if heatmap.shape != photo.shape[:2]:
            raise ConfigError(f"a heatmap of shape {heatmap.shape} does not match its photo {photo.shape[:2]}; "
                            "resize it with explain.resize_heatmap(heatmap, photo.shape[:2]).")
        ax.imshow(photo)
        overlay = ax.imshow(heatmap, cmap="jet", alpha=alpha, vmin=0, vmax=1)
        ax.set_title(label, fontsize=8, color=colour)
        ax.axis("off")
    _hide_unused(axes, len(tiles))
    bar = fig.colorbar(overlay, ax=axes[:, -1].tolist(), shrink=0.9 if nrows > 1 else 0.8, aspect=25 * nrows)
    bar.solids.set_alpha(1)  # the scale in full colour, not as faint as the overlay
    bar.set_label("evidence for the class (1 = the map's peak)", fontsize=8)
    fig.suptitle(title or "Grad-CAM: where the model looked (red = raised the class's score)")
    return fig
