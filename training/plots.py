"""The figures of a training run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from training import metrics  # noqa: E402

logger = logging.getLogger(__name__)

COLORS = {"val": "tab:blue", "test": "tab:orange"}
MARKERS = {"max_f1": "o", "youden": "s", "target_sensitivity": "^", "target_specificity": "v"}


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc_figure(
    path: Path, splits: Mapping[str, tuple[np.ndarray, np.ndarray]], taus: Mapping[str, float]
) -> Path:
    """ROC curves per split; each operating point marked where its frozen tau lands."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (labels, probs) in splits.items():
        fpr, tpr, _ = roc_curve(labels, probs)
        auc = metrics.summarize(labels, probs, 0.5, n_bootstrap=0)["auc"]["value"]
        ax.plot(fpr, tpr, color=COLORS.get(name), label=f"{name} (AUC {auc:.3f})")
        for point, tau in taus.items():
            m = metrics.threshold_metrics(labels, probs, tau)
            ax.plot(
                1 - m["specificity"],
                m["sensitivity"],
                MARKERS.get(point, "x"),
                color=COLORS.get(name),
                markeredgecolor="black",
            )
    for point, marker in MARKERS.items():
        if point in taus:
            ax.plot([], [], marker, color="gray", label=f"{point} (tau {taus[point]:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def pr_figure(path: Path, splits: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Precision-recall curves per split, with the prevalence as the chance line."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (labels, probs) in splits.items():
        precision, recall, _ = precision_recall_curve(labels, probs)
        ap = metrics.summarize(labels, probs, 0.5, n_bootstrap=0)["ap"]["value"]
        ax.plot(recall, precision, color=COLORS.get(name), label=f"{name} (AP {ap:.3f})")
        ax.axhline(float(np.mean(labels)), color=COLORS.get(name), ls=":", lw=1)
    ax.set(
        xlabel="recall (sensitivity)",
        ylabel="precision",
        title="Precision-recall",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def calibration_figure(
    path: Path, splits: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], n_bins: int = 10
) -> Path:
    """Reliability diagrams per split: raw sigmoid vs calibrated, with ECE and Brier."""
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4.8), squeeze=False)
    for ax, (name, (labels, raw, calibrated)) in zip(axes[0], splits.items(), strict=True):
        for probs, label, style in ((raw, "before", "--"), (calibrated, "after", "-")):
            bins = metrics.reliability(labels, probs, n_bins)
            x = np.asarray(bins["mean_predicted"], dtype=float)
            y = np.asarray(bins["fraction_positive"], dtype=float)
            ok = np.isfinite(x)
            ax.plot(
                x[ok],
                y[ok],
                style,
                marker="o",
                label=f"{label}: ECE {metrics.ece(labels, probs, n_bins):.3f}, "
                f"Brier {metrics.brier(labels, probs):.3f}",
            )
        ax.plot([0, 1], [0, 1], ":", color="gray")
        ax.set(
            xlabel="mean predicted probability",
            ylabel="fraction positive",
            title=f"Reliability ({name})",
            xlim=(0, 1),
            ylim=(0, 1),
        )
        ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def confusion_figure(path: Path, confusion: Mapping[str, int], title: str) -> Path:
    """A 2x2 confusion matrix with counts and row percentages."""
    matrix = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        share = count / max(matrix[i].sum(), 1)
        ax.text(
            j,
            i,
            f"{count}\n{share:.0%}",
            ha="center",
            va="center",
            color="white" if count > matrix.max() / 2 else "black",
        )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["not flagged", "flagged"],
        yticklabels=["normal", "pneumonia"],
        xlabel="prediction",
        ylabel="truth",
        title=title,
    )
    return _save(fig, path)


def learning_curves_figure(path: Path, history: Sequence[Mapping[str, float]]) -> Path:
    """Training and validation loss, and validation AUC, per epoch."""
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    left.plot(epochs, [row["val_loss"] for row in history], marker="o", label="validation")
    left.set(xlabel="epoch", ylabel="BCE loss (pos_weight)", title="Loss")
    left.legend()
    right.plot(epochs, [row["val_auc"] for row in history], marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel="AUC", title="Validation AUC")
    return _save(fig, path)


def error_sheet(
    path: Path, images: Sequence[np.ndarray], captions: Sequence[str], title: str, columns: int = 6
) -> Path:
    """A grid of thumbnails with a caption under each."""
    count = max(len(images), 1)
    rows = (count + columns - 1) // columns
    fig, axes = plt.subplots(
        rows, columns, figsize=(2.1 * columns, 2.4 * rows + 0.6), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, caption in zip(axes.ravel(), images, captions, strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set_title(caption, fontsize=7)
    if not images:
        axes[0, 0].text(0.5, 0.5, "no errors", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
