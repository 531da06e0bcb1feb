"""Per-image scores of a test split, kept in image order for paired comparisons.

Each test image contributes its pixel Dice (torchmetrics' samplewise F1) and its nucleus
detection recall (true nuclei matched at IoU > 0.5 over true nuclei), both 1 for an image
with no nucleus and none predicted; states are
concatenated across batches and DDP ranks and sorted back into dataset order; how many
images they cover is what ``evaluate`` reports (:func:`scored_images`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_f1_score
from torchmetrics.utilities import dim_zero_cat

from nucleiseg.metrics.objects import image_counts

log = logging.getLogger(__name__)


class PerImageScores(Metric):
    full_state_update = False

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        for name in ("index", "dice", "det_recall"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        index: torch.Tensor,
        prob: torch.Tensor,
        target: torch.Tensor,
        pred_instances: np.ndarray,
        true_instances: torch.Tensor,
    ) -> None:
        dice = binary_f1_score(  # nothing to find and nothing found: 1, as in pixel.py
            prob, target.int(), threshold=self.threshold, multidim_average="samplewise",
            zero_division=1,
        )  # fmt: skip
        recalls = []
        for p, t in zip(pred_instances, true_instances.cpu().numpy(), strict=True):
            counts = image_counts(t, p)
            recalls.append(1.0 if counts["n_true"] == 0 else counts["tp"] / counts["n_true"])
        self.index.append(index.detach().to(self.device).long())
        self.dice.append(dice.detach().float())
        self.det_recall.append(torch.tensor(recalls, device=self.device))

    def compute(self) -> dict[str, list[float]]:
        # a list of per-batch tensors, or one tensor once synced across DDP ranks
        if isinstance(self.index, list) and not self.index:
            return {"index": [], "dice": [], "det_recall": []}
        index = dim_zero_cat(self.index)
        order = torch.argsort(index)
        return {
            "index": index[order].tolist(),
            "dice": dim_zero_cat(self.dice)[order].tolist(),
            "det_recall": dim_zero_cat(self.det_recall)[order].tolist(),
        }


def scored_images(scores: dict[str, dict[str, Any]], in_split: int, split: str) -> int:
    """How many images the figures are over (each counted once, across DDP ranks); fewer
    than the split holds only where ``trainer.limit_test_batches`` cut it, with a warning."""
    first = next(iter(scores.values()))
    scored = len(set(first["per_image"]["index"]))
    if scored < in_split:
        log.warning(
            "scored %d of the %d images of split '%s' (trainer.limit_test_batches): the "
            "figures are not the whole split's", scored, in_split, split,
        )  # fmt: skip
    return scored
