"""Two-stage minus each control, paired by seed and test image: bootstrap intervals over
seeds and images, an exact seed-level sign-flip test beside them, and Holm's correction
across the comparisons a report makes.

A bootstrap p-value has a resolution: with B resamples the smallest two-sided value it can
give is 2 / (B + 1) (the observed statistic counts as one resample), never 0. With few
seeds the bootstrap over seeds draws few distinct sets (3 seeds: 10 multisets), so each
comparison also gets the exact sign-flip test over its per-seed mean differences, whose
smallest two-sided p-value is 2 / 2^n_seeds (0.25 for 3 seeds).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

import numpy as np

CONTROLS = ("stage1", "base_extended", "base_wider", "enhance_no_image", "enhance_residual")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std over seeds (std 0 for a single seed)."""
    return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else 0.0


#: comparisons with at most this many seeds are flagged: their seed-level evidence is thin
FEW_SEEDS = 3
#: bootstrap resamples per comparison (the report states the resolution they give)
RESAMPLES = 9999


class Interval(NamedTuple):
    """A mean difference, its bootstrap interval and two-sided bootstrap p-value."""

    mean: float
    low: float
    high: float
    p_value: float


def p_value_floor(resamples: int) -> float:
    """The smallest two-sided bootstrap p-value ``resamples`` resamples can give."""
    return 2.0 / (resamples + 1)


def sign_flip_p_value(seed_differences: list[float] | np.ndarray) -> float:
    """Exact two-sided sign-flip (permutation) test of a zero mean over per-seed mean
    differences: the share of the 2^n sign patterns whose mean is at least as far from zero
    as the observed one (the observed pattern counts, so the smallest value is 2 / 2^n)."""
    import itertools

    values = np.asarray(seed_differences, dtype=float)
    observed = abs(values.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(values))))
    means = np.abs((signs * values).mean(axis=1))
    return float(np.mean(means >= observed - 1e-12))


def crossed_bootstrap(
    differences: np.ndarray, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """Mean of per-(seed, image) differences with an interval that counts both sources of
    variation: training seeds and test images are resampled independently (a two-level,
    crossed bootstrap: every seed is scored on the same test images, so images are crossed
    with seeds, not nested in them). ``scipy.stats.bootstrap`` draws both index samples
    (``paired=False``); percentile interval, and the p-value from the same bootstrap
    distribution: twice the share of resamples on the far side of zero, counting the
    observed statistic as one, so it is never below ``p_value_floor(resamples)``.
    """
    from scipy.stats import bootstrap

    diffs = np.atleast_2d(np.asarray(differences, dtype=float))
    mean = float(diffs.mean())
    if np.ptp(diffs) == 0:  # every resample gives the same value: no spread to estimate
        return Interval(mean, mean, mean, 1.0 if mean == 0 else p_value_floor(resamples))

    if diffs.shape[0] == 1 or diffs.shape[1] == 1:  # one level left to resample
        samples = (diffs.ravel(),)

        def statistic(values: np.ndarray, axis: int = -1) -> np.ndarray:
            return values.mean(axis=axis)
    else:
        samples = (np.arange(diffs.shape[0]), np.arange(diffs.shape[1]))

        def statistic(seeds: np.ndarray, images: np.ndarray, axis: int = -1) -> np.ndarray:
            return diffs[seeds[..., :, None], images[..., None, :]].mean(axis=(-2, -1))

    result = bootstrap(samples, statistic, paired=False, vectorized=True,
                       n_resamples=resamples, confidence_level=confidence, method="percentile",
                       random_state=np.random.default_rng(seed))  # fmt: skip
    dist = result.bootstrap_distribution
    far_side = min(int(np.sum(dist <= 0)), int(np.sum(dist >= 0)))
    p_value = min(1.0, 2 * (far_side + 1) / (dist.size + 1))  # never below the resolution
    low, high = result.confidence_interval
    return Interval(mean, float(low), float(high), p_value)


def holm(p_values: list[float], alpha: float = 0.05) -> list[tuple[float, bool]]:
    """Holm's step-down correction: each p-value's adjusted value and whether the
    comparison survives at family-wise error ``alpha``."""
    order = np.argsort(p_values)
    adjusted = np.empty(len(p_values))
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return [(float(p), bool(p <= alpha)) for p in adjusted]


def comparisons(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two-stage minus each control, per dataset and backbone, paired by seed and image;
    ``holm_p``/``holm_survives`` correct the Dice comparisons for their number."""
    per_image: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)
    for run in runs:
        stage = run.get("stage", "two_stage")
        key = (run.get("dataset_label", run["dataset"]), run["backbone"])
        images = run.get("test_images")  # names; older runs lack them
        arms = {"two_stage": "two_stage", "stage1": "stage1"} if stage == "two_stage" else {}
        if stage in CONTROLS:
            arms = {stage: "control"}
        for arm, output in arms.items():
            if output in run["test"]:
                per_image[(*key, arm)][run["seed"]] = {**run["test"][output], "test_images": images}
    rows = []
    for (dataset, backbone, control), by_seed in sorted(per_image.items()):
        if control == "two_stage":
            continue
        ours = per_image.get((dataset, backbone, "two_stage"), {})
        seeds = sorted(set(ours) & set(by_seed))
        image_lists = {tuple(x["test_images"]) for s in seeds for x in (ours[s], by_seed[s])
                       if x.get("test_images") is not None}  # fmt: skip
        if len(image_lists) > 1:  # different test images cannot be paired image by image
            rows.append({"dataset": dataset, "backbone": backbone, "control": control,
                         "seeds": len(seeds), "refused": "test image lists differ between "
                         "runs (different dataset.split_seed or data)"})  # fmt: skip
            continue
        pairs = [(ours[s].get("per_image"), by_seed[s].get("per_image")) for s in seeds]
        pairs = [(a, b) for a, b in pairs if a and b and a["index"] == b["index"] and a["index"]]
        if not pairs:
            continue
        row = {"dataset": dataset, "backbone": backbone, "control": control, "seeds": len(pairs)}
        for metric in ("dice", "det_recall"):
            diffs = np.array([np.subtract(a[metric], b[metric]) for a, b in pairs])
            row[metric] = crossed_bootstrap(diffs)
            if metric == "dice":
                row["seed_p"] = sign_flip_p_value(diffs.mean(axis=1))
        rows.append(row)
    scored = [r for r in rows if "refused" not in r]
    for row, (adjusted, survives) in zip(
        scored, holm([r["dice"].p_value for r in scored]), strict=True
    ):
        row["holm_p"], row["holm_survives"] = adjusted, survives
    return rows
