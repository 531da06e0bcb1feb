"""Pixel-level metrics of the paper: precision, recall, Dice (F1) and IoU (Jaccard).

The headline figures are *micro* averages over every pixel of a split (torchmetrics'
default, the paper's figure); ``dice_per_image`` keeps one Dice per image so that the
per-image mean and standard deviation can be reported beside them; an image without nuclei
and without a predicted nucleus pixel scores 1 there.
"""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)

PIXEL_METRICS = ("precision", "recall", "dice", "iou")


def pixel_metrics(threshold: float = 0.5) -> MetricCollection:
    """Metric collection for one split and one output; update with (probabilities, target)."""
    return MetricCollection(
        {
            "precision": BinaryPrecision(threshold=threshold),
            "recall": BinaryRecall(threshold=threshold),
            "dice": BinaryF1Score(threshold=threshold),
            "iou": BinaryJaccardIndex(threshold=threshold),
            # an image with no nucleus and none predicted is right, not 0 (Lizard has many)
            "dice_per_image": BinaryF1Score(
                threshold=threshold, multidim_average="samplewise", zero_division=1
            ),
        }
    )


def summarise(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Turn computed metric values into plain floats; per-image vectors become mean and std."""
    summary: dict[str, float] = {}
    for name, value in values.items():
        if value.numel() == 1:
            summary[name] = float(value)
        else:
            summary[f"{name}_mean"] = float(value.float().mean())
            summary[f"{name}_std"] = float(value.float().std(unbiased=False))
    return summary
