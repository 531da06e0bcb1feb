"""Prediction overlays in the style of the paper's Figures 2 and 3.

Columns: image | ground truth | stage-1 prediction | two-stage prediction | difference.
Prediction panels colour true-positive pixels gray, false positives red and false
negatives green (true negatives black); the difference panel is white where the two-stage
output found nucleus pixels that stage 1 missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

TP = (160, 160, 160)
FP = (220, 30, 30)
FN = (30, 200, 30)
FOUND = (255, 255, 255)
COLUMNS = ("image", "ground truth", "stage 1", "two-stage", "difference")


def error_map(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RGB uint8: TP gray, FP red, FN green, TN black."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    out = np.zeros((*pred.shape, 3), np.uint8)
    out[pred & truth] = TP
    out[pred & ~truth] = FP
    out[~pred & truth] = FN
    return out


def difference_map(stage1: np.ndarray, two_stage: np.ndarray) -> np.ndarray:
    """RGB uint8: white where the two-stage prediction has nuclei that stage 1 missed."""
    out = np.zeros((*np.shape(stage1), 3), np.uint8)
    out[np.asarray(two_stage, bool) & ~np.asarray(stage1, bool)] = FOUND
    return out


def panels(
    image: np.ndarray, truth: np.ndarray, stage1: np.ndarray, two_stage: np.ndarray
) -> list[np.ndarray]:
    """The five RGB panels of one figure row (binary inputs)."""
    truth_rgb = np.repeat((np.asarray(truth, bool)[..., None] * 255).astype(np.uint8), 3, 2)
    return [
        np.asarray(image, np.uint8),
        truth_rgb,
        error_map(stage1, truth),
        error_map(two_stage, truth),
        difference_map(stage1, two_stage),
    ]


def plot_rows(rows: Sequence[tuple[str, list[np.ndarray]]], path: Path) -> None:
    """A grid: one labelled row of five panels per entry; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(rows), len(COLUMNS), figsize=(2.4 * len(COLUMNS), 2.5 * len(rows)), squeeze=False
    )
    for r, (label, row) in enumerate(rows):
        for c, panel in enumerate(row):
            ax = axes[r][c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize=9)
        axes[r][0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_figure(predictions: dict[str, np.ndarray], path: Path, threshold: float = 0.5) -> None:
    """Per-run figure from saved predictions (keys: images, masks, stage1, two_stage, names)."""
    rows = []
    for i, name in enumerate(predictions["names"]):
        rows.append(
            (
                str(name),
                panels(
                    predictions["images"][i],
                    predictions["masks"][i],
                    predictions["stage1"][i] >= threshold,
                    predictions["two_stage"][i] >= threshold,
                ),
            )
        )
    plot_rows(rows, path)
