"""Pictures and listings of the data, the training run and the evaluation results (no TensorFlow here).
Every ``plot_*`` returns a matplotlib ``Figure`` (drawn into ``ax`` when given), detached from pyplot: a notebook
shows it once (as the cell's value or with ``display(fig)``); scripts call ``fig.savefig(path)``."""
from __future__ import annotations

import math
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
from PIL import Image, ImageOps
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from workshop_utils.core.errors import ConfigError
from workshop_utils.data import SET_ROLES, require_columns
from workshop_utils.metrics import MulticlassMetrics, predictions_frame, class_names as _names_of
from workshop_utils.training_metrics import HISTORY_COLUMNS, TRAIN, VALIDATION


def _figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.8)):
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", squeeze=False)
    plt.close(fig)  # pyplot forgets it: no double display in Jupyter, no open-figure build-up
    return fig, axes


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    return ax if ax is not None else _figure(figsize=figsize)[1][0, 0]


def _show_images(tiles: Iterable[tuple[Axes, Any, str]], size: int, **title_style: Any) -> None:
    """Draw (axes, image path, title) tiles as EXIF-rotated thumbnails (longest side ``size``); an unreadable
    file becomes a red note on its tile, and one warning lists them all."""
    problems = []
    for ax, path, title in tiles:
        ax.set(visible=True, xticks=[], yticks=[])
        ax.set_title(title, **title_style)
        try:
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
                image.thumbnail((size, size))
                ax.imshow(np.asarray(image))
        except (OSError, ValueError) as exc:  # missing file, not an image, truncated data
            problems.append(f"{path}: {exc}")
            ax.text(0.5, 0.5, f"cannot open\n{Path(path).name}", ha="center", va="center", color="red",
                    transform=ax.transAxes, wrap=True)
    if problems:
        shown = "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else "")
        warnings.warn(f"{len(problems)} image(s) could not be shown:\n  {shown}", stacklevel=3)


def _grid(count: int, ncols: int, tile: tuple[float, float], pad: tuple[float, float] = (0.0, 0.0)):
    """A figure of ``count`` tiles (inches each), ``ncols`` a row, plus ``pad``; the axes after the last hidden."""
    nrows = math.ceil(count / ncols)
    fig, axes = _figure(nrows, ncols, figsize=(tile[0] * ncols + pad[0], tile[1] * nrows + pad[1]))
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes


def plot_class_balance(df: pd.DataFrame, ax: Axes | None = None, title: str = "Images per class") -> Figure:
    """Grouped bar chart of images per class, one bar colour per subset (train/validation/test)."""
    require_columns(df, ["label"], "Load it with data.load_dataset().", what="the image index")
    if df.empty:
        raise ConfigError("the image index has no rows; load a dataset first (data.load_dataset).")
    subsets = df["subset"].fillna("").astype(str) if "subset" in df.columns else pd.Series("", index=df.index)
    counts = pd.crosstab(df["label"].astype(str), subsets.replace("", "all (no subset)"))
    order = [s for s in SET_ROLES if s in counts.columns] + sorted(set(counts.columns) - set(SET_ROLES))
    counts = counts[order]
    ax = _axes(ax, (max(6.0, 0.5 * len(counts) * len(order) ** 0.5 + 3.5), 4.5))
    x, width = np.arange(len(counts)), 0.8 / len(order)
    for j, subset in enumerate(order):
        bars = ax.bar(x + (j - (len(order) - 1) / 2) * width, counts[subset].to_numpy(), width,
                      label=f"{subset} ({counts[subset].sum()})")
        ax.bar_label(bars, fontsize=8, padding=1)
    ax.set_xticks(x, counts.index, rotation=30, ha="right")
    ax.set(xlabel="class", ylabel="images", title=f"{title} ({len(df)} images, {len(counts)} classes)")
    ax.margins(y=0.12)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if order != ["all (no subset)"]:
        ax.legend(title="subset", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax.figure


def plot_sample_grid(df: pd.DataFrame, per_class: int | None = 3, n: int | None = None, seed: int = 0,
                     ncols: int | None = None, thumb_size: int = 160) -> Figure:
    """A grid of sample images titled with their labels: ``per_class`` per class (one row each), or ``n`` random."""
    require_columns(df, ["image_path", "label"], "Load it with data.load_dataset().", what="the image index")
    if df.empty:
        raise ConfigError("the image index has no rows; load a dataset first (data.load_dataset).")
    rng = np.random.default_rng(seed)
    if n is not None:
        if n < 1:
            raise ConfigError(f"n must be at least 1, got {n}.")
        rows = df.iloc[rng.permutation(len(df))[: min(n, len(df))]]
        ncols, cells = ncols or min(len(rows), 6), list(range(len(rows)))
    else:
        if per_class is None or per_class < 1:
            raise ConfigError(f"per_class must be at least 1 (or pass n), got {per_class}.")
        picked, cells, ncols = [], [], per_class
        labels = sorted(df["label"].astype(str).unique())
        for r, label in enumerate(labels):
            group = df[df["label"].astype(str) == label]
            picked.append(group.iloc[rng.permutation(len(group))[:per_class]])
            cells.extend(r * ncols + c for c in range(len(picked[-1])))
        rows = pd.concat(picked)
    fig, axes = _grid(max(cells) + 1, ncols, (1.9, 1.9), (0.4, 0.6))
    for ax in axes.flat:
        ax.set_visible(False)
    tiles = zip([axes.flat[cell] for cell in cells], rows["image_path"], rows["label"].astype(str))
    _show_images(tiles, thumb_size, fontsize=9)
    fig.suptitle(f"Sample images ({len(rows)} of {len(df)})")
    return fig


def plot_training_curves(history: pd.DataFrame, best_epoch: int | None = None, title: str | None = None) -> Figure:
    """Accuracy and cross-entropy (train vs validation) and the learning rate per epoch, from ``history``."""
    require_columns(history, HISTORY_COLUMNS, "Pass TrainedClassifier.history (from trainer.fit).",
                    what="the training history")
    if history.empty:
        raise ConfigError("the training history has no rows; train first (trainer.fit) or load a trained model.")
    fig, ((ax_acc, ax_loss, ax_lr),) = _figure(1, 3, figsize=(14, 4))
    datasets = [d for d in (TRAIN, VALIDATION) if d in set(history["dataset"])]
    datasets += sorted(set(history["dataset"].astype(str)) - set(datasets))
    styles = {TRAIN: dict(color="tab:blue"), VALIDATION: dict(color="tab:orange", linestyle="--")}
    for dataset in datasets:
        part = history[history["dataset"] == dataset].sort_values("epoch")
        for ax, column in ((ax_acc, "accuracy"), (ax_loss, "cross_entropy")):
            values = part[["epoch", column]].dropna()
            if not values.empty:
                ax.plot(values["epoch"], values[column], marker="o" if len(part) <= 30 else None, markersize=3,
                        label=dataset, **styles.get(dataset, {}))
    lr = history[history["dataset"] == TRAIN] if TRAIN in datasets else history
    lr = lr[["epoch", "learning_rate"]].dropna().drop_duplicates("epoch").sort_values("epoch")
    if lr.empty:
        ax_lr.text(0.5, 0.5, "no learning rate recorded", ha="center", va="center", transform=ax_lr.transAxes)
    else:
        ax_lr.plot(lr["epoch"], lr["learning_rate"], color="tab:green", marker="o" if len(lr) <= 30 else None,
                   markersize=3, label="learning rate")
    for ax, label, name in ((ax_acc, "accuracy", "Accuracy"), (ax_loss, "cross-entropy", "Cross-entropy (loss)"),
                            (ax_lr, "learning rate", "Learning rate")):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best epoch ({best_epoch})")
        ax.set(title=name, xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax_acc.set_ylim(-0.02, 1.02)
    fig.suptitle(title or "Training curves")
    return fig


def _matrix_and_names(metrics_or_matrix: MulticlassMetrics | pd.DataFrame | np.ndarray,
                      names: Sequence[str] | Any | None) -> tuple[np.ndarray, list[str]]:
    if isinstance(metrics_or_matrix, MulticlassMetrics):
        metrics_or_matrix, names = metrics_or_matrix.confusion_matrix, metrics_or_matrix.class_names
    elif isinstance(metrics_or_matrix, pd.DataFrame) and names is None:
        names = [str(c) for c in metrics_or_matrix.index]
    matrix = np.asarray(metrics_or_matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ConfigError(f"a confusion matrix must be square (C×C), got shape {matrix.shape}.")
    names = _names_of(names) if names is not None else [str(i) for i in range(len(matrix))]
    if len(names) != len(matrix):
        raise ConfigError(f"the confusion matrix is {len(matrix)}×{len(matrix)} but {len(names)} class names "
                          "were given.")
    return matrix, names


def plot_confusion_matrix(metrics_or_matrix: MulticlassMetrics | pd.DataFrame | np.ndarray,
                          class_names: Sequence[str] | Any | None = None, normalize: bool = False,
                          ax: Axes | None = None, title: str | None = None) -> Figure:
    """Heatmap of the confusion matrix (rows = actual, columns = predicted) with counts in the cells;
    ``normalize=True`` colours and labels each row by its share of the actual class (recall on the diagonal)."""
    matrix, names = _matrix_and_names(metrics_or_matrix, class_names)
    support = matrix.sum(axis=1)
    shares = np.divide(matrix, support[:, None], out=np.zeros_like(matrix), where=support[:, None] > 0)
    values = shares if normalize else matrix
    c = len(names)
    side = max(4.5, 0.75 * c + 2.5)
    ax = _axes(ax, (side + 1.2, side))
    top = 1 if normalize else max(values.max(), 1)
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label="share of actual class" if normalize else "images")
    for i in range(c):
        for j in range(c):
            count = f"{matrix[i, j]:.0f}"  # a whole number of images
            ax.text(j, i, f"{shares[i, j]:.0%}\n({count})" if normalize else count, ha="center", va="center",
                    fontsize=8 if c > 8 else 10, color="white" if values[i, j] > top / 2 else "black")
    ax.set_xticks(range(c), names, rotation=45, ha="right")
    ax.set_yticks(range(c), [f"{name} ({int(s)})" for name, s in zip(names, support)])
    ax.set(xlabel="predicted class", ylabel="actual class (rows in set)",
           title=title or ("Confusion matrix (row shares)" if normalize else "Confusion matrix (counts)"))
    return ax.figure


def plot_per_class_accuracy(metrics: MulticlassMetrics, ax: Axes | None = None, title: str | None = None) -> Figure:
    """Horizontal bars of per-class accuracy (recall), with the macro and micro accuracy as reference lines."""
    if not isinstance(metrics, MulticlassMetrics):
        raise ConfigError(f"expected the MulticlassMetrics returned by metrics.evaluate, got {type(metrics).__name__}.")
    c = len(metrics.class_names)
    ax = _axes(ax, (7.5, max(3.0, 0.45 * c + 1.5)))
    ax.barh(np.arange(c), metrics.recall, color=["tab:blue" if s > 0 else "lightgray" for s in metrics.support])
    for i, (r, k, s) in enumerate(zip(metrics.recall, np.diag(metrics.confusion_matrix), metrics.support)):
        # A text column right of 1.0, clear of the bars and the reference lines.
        ax.text(1.03, i, f"{r:.2f} ({k}/{s})" if s > 0 else "no rows", va="center", fontsize=8)
    for kind, value, colour, style in (("macro", metrics.macro_accuracy, "tab:red", "--"),
                                       ("micro", metrics.micro_accuracy, "black", ":")):
        ax.axvline(value, color=colour, linestyle=style, label=f"{kind} accuracy {value:.3f}")
    ax.set_yticks(np.arange(c), metrics.class_names)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.25), xticks=np.linspace(0, 1, 6), xlabel="accuracy within the class (recall)",
           title=title or "Per-class accuracy")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    return ax.figure


prediction_listing = predictions_frame  # (image_paths, y_true, probabilities, label_map): the lab's listing


def format_prediction_listing(listing: pd.DataFrame, n: int | None = None, show_probability: bool = False) -> list[str]:
    """The listing as the lab's lines ``Image: 1366.jpeg | Actual: bumper_scratch | Predicted: bumper_scratch``."""
    require_columns(listing, ["image", "actual", "predicted"] + ["probability"] * show_probability,
                    "Make it with prediction_listing().", what="the prediction listing")
    rows = listing if n is None else listing.head(n)
    lines = [f"Image: {row.image} | Actual: {row.actual} | Predicted: {row.predicted}"
             + (f" | Probability: {row.probability:.4f}" if show_probability else "")
             for row in rows.itertuples(index=False)]
    return lines + [f"... {len(listing) - len(rows)} more row(s)"] * (len(rows) < len(listing))


def print_prediction_listing(listing: pd.DataFrame, n: int | None = None, show_probability: bool = False,
                             file: TextIO | None = None) -> None:
    """Print the lab-style listing lines (the first ``n`` rows, or all)."""
    for line in format_prediction_listing(listing, n, show_probability):
        print(line, file=file)  # None: the sys.stdout of the moment (as print does)


def plot_confident_mistakes(listing: pd.DataFrame, n: int = 8, ncols: int = 4, thumb_size: int = 224) -> Figure:
    """Gallery of the wrong predictions with the highest predicted probability (the most instructive ones)."""
    require_columns(listing, ["image_path", "actual", "predicted", "probability", "correct"],
                    "Make it with prediction_listing().", what="the prediction listing")
    wrong = listing[~listing["correct"].astype(bool)].sort_values("probability", ascending=False, kind="stable")
    if wrong.empty:
        ax = _axes(None, (6, 1.6))
        ax.axis("off")
        ax.text(0.5, 0.5, f"No wrong predictions: all {len(listing)} images were classified correctly.",
                ha="center", va="center", fontsize=12, transform=ax.transAxes)
        ax.set_title("Most confidently wrong predictions")
        return ax.figure
    shown = wrong.head(n)
    fig, axes = _grid(len(shown), max(1, min(ncols, len(shown))), (3.0, 3.3), (0.0, 0.4))
    tiles = [(ax, row.image_path, f"{Path(str(row.image_path)).name}\nactual: {row.actual}\n"
              f"predicted: {row.predicted} ({row.probability:.0%})") for ax, row in zip(axes.flat, shown.itertuples())]
    _show_images(tiles, thumb_size, fontsize=9, color="darkred")
    fig.suptitle(f"Most confidently wrong predictions ({len(shown)} of {len(wrong)} wrong, {len(listing)} images)")
    return fig


def plot_prediction_probabilities(scores: Mapping[str, float] | Any, title: str | None = None,
                                  ax: Axes | None = None, top: int | None = None) -> Figure:
    """Horizontal bar chart of one prediction's class probabilities, highest first (``scores`` dict or Prediction)."""
    scores = getattr(scores, "scores", scores)
    if not isinstance(scores, Mapping) or not scores:
        raise ConfigError(f"scores must be a non-empty dict of class -> probability, got {type(scores).__name__}.")
    items = sorted(((str(k), float(v)) for k, v in scores.items()), key=lambda kv: -kv[1])[:top]
    names, values = [k for k, _ in items], [v for _, v in items]
    ax = _axes(ax, (6.5, max(2.5, 0.4 * len(items) + 1.2)))
    bars = ax.barh(range(len(items)), values, color=["tab:green"] + ["tab:gray"] * (len(items) - 1))
    ax.bar_label(bars, [f"{v:.1%}" for v in values], padding=3, fontsize=8)
    ax.set_yticks(range(len(items)), names)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.15), xlabel="probability", title=title or f"Predicted: {names[0]} ({values[0]:.1%})")
    return ax.figure


def plot_projection(features: np.ndarray | Any, labels: Sequence[str] | Sequence[int] | None = None,
                    method: str = "pca", seed: int = 0, ax: Axes | None = None, perplexity: float = 30.0,
                    label_map: Any = None, title: str | None = None) -> Figure:
    """2-D projection (PCA, or t-SNE with ``method="tsne"``) of feature vectors, coloured by class. ``features``:
    an N×d array or a ``Bottlenecks`` (its ``features`` and ``labels``); ``label_map`` names integer labels."""
    labels = getattr(features, "labels", None) if labels is None and hasattr(features, "features") else labels
    x = np.asarray(getattr(features, "features", features), dtype=np.float64)
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
    names = None if label_map is None else _names_of(label_map)
    labels = np.array([str(v if names is None or isinstance(v, str) else names[int(v)]) for v in labels])
    method = method.lower().replace("-", "")
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed)
        xy, method_name = pca.fit_transform(x), "PCA"
        axis_labels = [f"PC {i + 1} ({r:.0%} of variance)" for i, r in enumerate(pca.explained_variance_ratio_)]
    elif method == "tsne":
        perplexity = float(min(perplexity, max(1.0, (len(x) - 1) / 3)))  # t-SNE needs perplexity < N
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
        axis_labels, method_name = ["t-SNE 1", "t-SNE 2"], f"t-SNE (perplexity {perplexity:g})"
    else:
        raise ConfigError(f"method must be 'pca' or 'tsne', got {method!r}.")
    classes = sorted(set(labels))
    ax = _axes(ax, (7.5, 5.5))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, cls in enumerate(classes):
        mask = labels == cls
        ax.scatter(xy[mask, 0], xy[mask, 1], s=18, color=cmap(i % cmap.N), alpha=0.8, label=f"{cls} ({mask.sum()})")
    ax.set(xlabel=axis_labels[0], ylabel=axis_labels[1],
           title=title or f"{method_name} of {len(x)} feature vectors ({x.shape[1]} dimensions)")
    ax.legend(title="class", fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return ax.figure


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
    images = [_as_image(image) for image in (original, *versions)]
    fig, axes = _grid(len(images), ncols, (2.6, 2.4))
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        ax.imshow(image)
        ax.set_title("original" if i == 0 else f"augmented {i}", fontsize=9)
        ax.axis("off")
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
    side = max(4.5, 0.75 * len(before.class_names) + 2.5)
    fig, axes = _figure(1, 2, figsize=(2 * side + 2.4, side))
    for ax, metrics, title in zip(axes[0], (before, after), titles):
        plot_confusion_matrix(metrics, normalize=normalize, ax=ax,
                              title=f"{title}\nmacro {metrics.macro_accuracy:.3f}, log-loss {metrics.log_loss:.3f}")
    return fig


def plot_grad_cam_gallery(items: Sequence[Mapping[str, Any]], class_names: Sequence[str], ncols: int = 4,
                          alpha: float = 0.45, title: str | None = None) -> Figure:
    """Photos with their Grad-CAM heatmap overlaid (0: no evidence, 1: the map's peak): a tile for the predicted
    class and, for a mistake, one for the true class. ``items``: the dicts ``explain.explain_files`` returns."""
    tiles: list[tuple[np.ndarray, np.ndarray, str, str]] = []
    for item in items:
        missing = [key for key in ("photo", "heatmap", "predicted", "probabilities") if key not in item]
        if missing:
            raise ConfigError(f"a gallery item lacks {missing}; build the items with explain.explain_files().")
        photo, predicted, true = _as_image(item["photo"]), int(item["predicted"]), item.get("true")
        probability = float(np.asarray(item["probabilities"])[predicted])
        right = true is None or int(true) == predicted
        head = f"{name}\n" if (name := Path(str(item.get("path", ""))).name) else ""
        tiles.append((photo, np.asarray(item["heatmap"]), f"{head}looks for {class_names[predicted]} "
                      f"({probability:.2f})" + ("" if true is None else (" ✓" if right else " ✗")),
                      "black" if true is None else ("green" if right else "red")))
        if not right and item.get("true_heatmap") is not None:
            tiles.append((photo, np.asarray(item["true_heatmap"]), f"{head}looks for true {class_names[int(true)]}",
                          "darkorange"))
    if not tiles:
        raise ConfigError("items is empty: nothing to show.")
    fig, axes = _grid(len(tiles), ncols, (3.0, 2.9))
    for ax, (photo, heatmap, label, colour) in zip(axes.flat, tiles):
        if heatmap.shape != photo.shape[:2]:
            raise ConfigError(f"a heatmap of shape {heatmap.shape} does not match its photo {photo.shape[:2]}; "
                              "resize it with explain.resize_heatmap(heatmap, photo.shape[:2]).")
        ax.imshow(photo)
        overlay = ax.imshow(heatmap, cmap="jet", alpha=alpha, vmin=0, vmax=1)
        ax.set_title(label, fontsize=8, color=colour)
        ax.axis("off")
    bar = fig.colorbar(overlay, ax=axes[:, -1].tolist(), shrink=0.9 if len(axes) > 1 else 0.8, aspect=25 * len(axes))
    bar.solids.set_alpha(1)  # the scale in full colour, not as faint as the overlay
    bar.set_label("evidence for the class (1 = the map's peak)", fontsize=8)
    fig.suptitle(title or "Grad-CAM: where the model looked (red = raised the class's score)")
    return fig
