"""Nucleus-level metrics on instance maps, as torchmetrics ``Metric`` objects.

- Detection: a predicted and a true nucleus match when their IoU is above 0.5 (such a match
  is necessarily unique); precision, recall and F1 from the matched (TP), unmatched
  predicted (FP) and unmatched true (FN) nuclei.
- Panoptic quality (Kirillov et al., CVPR 2019): DQ = TP / (TP + FP/2 + FN/2),
  SQ = mean IoU of the matched pairs, PQ = DQ x SQ.
- Aggregated Jaccard Index (Kumar et al., IEEE TMI 2017): every true nucleus is paired with
  the predicted nucleus of highest IoU; AJI = sum of their intersections / (sum of their
  unions + the area of every predicted nucleus never paired).
- Count error: predicted minus true nuclei per image (mean signed, mean absolute).

Counts are summed over the split (dataset-level, "aggregated") before the ratios are taken.
``aji_per_image_mean`` and ``pq_per_image_mean`` are the other protocol, each image's own
figure averaged over the images, as HoVer-Net's evaluation (``compute_stats.py``) and the
PanNuke/CoNSeP tables report them.
Where a ratio has nothing to count (no nuclei on either side), it is 1.0: nothing was
missed and nothing invented.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

MATCH_IOU = 0.5


def compact_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ids present in a label map (sorted) and the flattened map with each id replaced by
    its index among them: ``np.unique(labels, return_inverse=True)``, by counting instead of sorting
    where the ids are non-negative and not much larger than the image (tuning scores
    thousands of instance maps; sorting each was most of its time)."""
    flat = np.asarray(labels).ravel()
    if flat.size == 0 or flat.min() < 0 or flat.max() > 4 * flat.size + 65_536:
        ids, inverse = np.unique(flat, return_inverse=True)
        return ids, inverse.ravel()
    ids = np.flatnonzero(np.bincount(flat))
    index = np.zeros(int(ids[-1]) + 1, np.int64)
    index[ids] = np.arange(len(ids))
    return ids, index[flat]


def overlap_table(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersections (T x P) and the areas of the true (T) and predicted (P) nuclei.

    Ids are compacted: row i is the i-th true id present, column j the j-th predicted id.
    """
    true_ids, true_compact = compact_ids(true)
    pred_ids, pred_compact = compact_ids(pred)
    t, p = len(true_ids), len(pred_ids)
    joint = np.bincount(true_compact * p + pred_compact, minlength=t * p)
    joint = joint.reshape(t, p)
    # drop background rows/columns (id 0) where present
    rows = true_ids != 0
    cols = pred_ids != 0
    return joint[rows][:, cols], joint[rows].sum(1), joint[:, cols].sum(0)


def image_counts(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """TP/FP/FN, summed IoU of matches and the AJI numerator/denominator for one image."""
    inter, true_area, pred_area = overlap_table(true, pred)
    n_true, n_pred = len(true_area), len(pred_area)
    if n_true and n_pred:
        union = true_area[:, None] + pred_area[None, :] - inter
        iou = inter / np.maximum(union, 1)
    else:
        union = iou = np.zeros((n_true, n_pred))
    matched = iou > MATCH_IOU
    tp = int(matched.sum())
    aji_c = aji_u = 0.0
    used = np.zeros(n_pred, bool)
    for i in range(n_true):
        if n_pred and iou[i].max() > 0:
            j = int(iou[i].argmax())
            aji_c += inter[i, j]
            aji_u += union[i, j]
            used[j] = True
        else:
            aji_u += true_area[i]
    aji_u += pred_area[~used].sum()
    return {
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_true - tp,
        "iou_sum": float(iou[matched].sum()),
        "aji_c": float(aji_c),
        "aji_u": float(aji_u),
        "n_true": n_true,
        "n_pred": n_pred,
        "matched_true": np.nonzero(matched.any(1))[0],
    }


def _ratio(num: float, den: float) -> float:
    return 1.0 if den == 0 else num / den


def _pct_of_true(error: float, true_count: float) -> float:
    """``error`` nuclei in percent of ``true_count`` (0 when both are 0; NaN when only the
    truth is empty)."""
    if true_count:
        return 100 * error / true_count
    return 0.0 if error == 0 else float("nan")


def image_pq(counts: dict[str, float]) -> float:
    """One image's PQ from its :func:`image_counts` (1.0 with no nuclei on either side)."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    if tp + fp + fn == 0:
        return 1.0
    return counts["iou_sum"] / (tp + 0.5 * fp + 0.5 * fn)  # DQ x SQ


def _as_numpy_maps(maps: torch.Tensor | np.ndarray) -> list[np.ndarray]:
    array = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    if array.ndim == 2:
        array = array[None]
    return [a.squeeze() if a.ndim == 3 else a for a in array]


class NucleusMetrics(Metric):
    """Detection precision/recall/F1, DQ/SQ/PQ, AJI and count error over instance maps."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("tp", "fp", "fn", "iou_sum", "aji_c", "aji_u", "count_err", "abs_count_err"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("aji_image_sum", "pq_image_sum"):  # per-image figures, summed
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor | np.ndarray, true: torch.Tensor | np.ndarray) -> None:
        """``pred``/``true``: instance maps (N, H, W) or (H, W); 0 is background."""
        for p, t in zip(_as_numpy_maps(pred), _as_numpy_maps(true), strict=True):
            c = image_counts(t, p)
            for name in ("tp", "fp", "fn", "iou_sum", "aji_c", "aji_u"):
                getattr(self, name).add_(c[name])
            self.count_err.add_(c["n_pred"] - c["n_true"])
            self.abs_count_err.add_(abs(c["n_pred"] - c["n_true"]))
            self.images.add_(1)
            self.aji_image_sum.add_(_ratio(c["aji_c"], c["aji_u"]))
            self.pq_image_sum.add_(image_pq(c))

    def compute(self) -> dict[str, torch.Tensor]:
        tp, fp, fn = float(self.tp), float(self.fp), float(self.fn)
        dq = _ratio(tp, tp + 0.5 * fp + 0.5 * fn)
        sq = _ratio(float(self.iou_sum), tp) if tp else (1.0 if fp + fn == 0 else 0.0)
        images = max(float(self.images), 1.0)
        values = {
            "det_precision": _ratio(tp, tp + fp),
            "det_recall": _ratio(tp, tp + fn),
            "det_f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "dq": dq,
            "sq": sq,
            "pq": dq * sq,
            "aji": _ratio(float(self.aji_c), float(self.aji_u)),
            "aji_per_image_mean": float(self.aji_image_sum) / images if self.images else 1.0,
            "pq_per_image_mean": float(self.pq_image_sum) / images if self.images else 1.0,
            "count_error": float(self.count_err) / images,
            "abs_count_error": float(self.abs_count_err) / images,
            "true_count": (tp + fn) / images,  # true nuclei per image
            # the count error (signed: + over-counts) and its absolute value per image, as a
            # share of the true count, in percent
            "count_error_pct": _pct_of_true(float(self.count_err), tp + fn),
            "abs_count_error_pct": _pct_of_true(float(self.abs_count_err), tp + fn),
        }
        return {k: torch.tensor(v) for k, v in values.items()}


class MissedNuclei(Metric):
    """True nuclei detected (IoU > 0.5) by one model's output and not by the other's."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("true_nuclei", "found_by_two_stage_only", "found_by_stage1_only"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, stage1: torch.Tensor, two_stage: torch.Tensor, true: torch.Tensor) -> None:
        maps = zip(
            _as_numpy_maps(stage1), _as_numpy_maps(two_stage), _as_numpy_maps(true), strict=True
        )
        for s1, s2, t in maps:
            first = set(image_counts(t, s1)["matched_true"].tolist())
            second = set(image_counts(t, s2)["matched_true"].tolist())
            self.true_nuclei.add_(len(np.unique(t)) - (1 if (t == 0).any() else 0))
            self.found_by_two_stage_only.add_(len(second - first))
            self.found_by_stage1_only.add_(len(first - second))

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "true_nuclei": self.true_nuclei.clone(),
            "found_by_two_stage_only": self.found_by_two_stage_only.clone(),
            "found_by_stage1_only": self.found_by_stage1_only.clone(),
        }
