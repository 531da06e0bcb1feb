"""Two-stage minus each control, paired by seed and test image, with bootstrap intervals."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

CONTROLS = ("stage1", "base_extended", "base_wider", "enhance_no_image")


def paired_bootstrap(
    differences: np.ndarray, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of per-image differences (seeds x images) and its 95% bootstrap interval.

    Test images are resampled with replacement (the same images for every seed, keeping
    the pairing); each resample's statistic is the mean over seeds and images.
    """
    diffs = np.atleast_2d(np.asarray(differences, dtype=float))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, diffs.shape[1], size=(resamples, diffs.shape[1]))
    stats = diffs[:, picks].mean(axis=(0, 2))
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(diffs.mean()), float(low), float(high)


def comparisons(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two-stage minus each control, per dataset and backbone, paired by seed and image."""
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
            row[metric] = paired_bootstrap(diffs)
        rows.append(row)
    return rows
