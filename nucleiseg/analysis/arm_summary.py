"""Every arm of a study on its own: Dice (per image and pixel-pooled, kept apart) and what
its training cost, so that the controls' absolute quality and budget can be read beside
the differences of ``control_comparisons`` (``report.arm_markdown`` renders the rows)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from nucleiseg.analysis.control_comparisons import mean_std

#: the final model of each stage's run (``stage1``: the two_stage run's stage 1 alone)
ARM_OUTPUTS = {"two_stage": "two_stage", "base": "stage1"}
ARM_ORDER = ("base", "stage1", "two_stage", "base_extended", "enhance_no_image", "enhance_residual",
             "base_wider")  # fmt: skip


def arm_models(run: dict[str, Any]) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """``arm -> (test metrics, the phases that trained it)`` for one finished run."""
    stage = run.get("stage", "two_stage")
    phases = run.get("phases", [])
    test = run.get("test", {})
    output = ARM_OUTPUTS.get(stage, "control")
    models = {}
    if output in test:
        models[stage] = (test[output], phases)
    if stage == "two_stage" and "stage1" in test:
        models["stage1"] = (test["stage1"], phases[:1])  # phase 1 trains stage 1 alone
    return models


def arm_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per dataset x backbone x arm, mean ± std over its seeds."""
    groups: dict[tuple[str, str, str], list[tuple[dict, list]]] = defaultdict(list)
    for run in runs:
        dataset = run.get("dataset_label", run["dataset"])
        for arm, model in arm_models(run).items():
            groups[(dataset, run["backbone"], arm)].append(model)

    def order(key: tuple[str, str, str]) -> tuple:
        dataset, backbone, arm = key
        return dataset, backbone, ARM_ORDER.index(arm) if arm in ARM_ORDER else 99, arm

    rows = []
    for dataset, backbone, arm in sorted(groups, key=order):
        models = groups[(dataset, backbone, arm)]
        per_image = [float(np.mean(t["per_image"]["dice"])) for t, _ in models
                     if t.get("per_image", {}).get("dice")]  # fmt: skip
        rows.append({
            "dataset": dataset, "backbone": backbone, "arm": arm, "seeds": len(models),
            "dice_per_image": mean_std(per_image) if per_image else None,
            "dice_pixels": mean_std([t["dice"] for t, _ in models]),
            "epochs": mean_std([sum(p.get("epochs", 0) for p in ph) for _, ph in models]),
            "minutes": mean_std([sum(p.get("wall_seconds", 0) for p in ph) / 60
                                  for _, ph in models]),
        })  # fmt: skip
    return rows
