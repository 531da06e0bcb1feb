"""Choose the post-processing (probability -> nuclei) on the validation split:
``python -m nucleiseg.tune_postprocess ckpt=<run>/checkpoints/finetune/best.ckpt dataset=tnbc``.

Every combination of threshold, watershed markers (distance-transform peaks ``min_distance``
apart, or h-maxima of depth ``h``; for instance-aware models the level ``marker_threshold``
of their marker map) and minimum size in ``grid`` is scored on the validation
images (never the test split); the chosen one has (``objective``) the smallest absolute
nucleus-count error relative to the true count, ties broken by AJI, or the highest AJI or
PQ, ties broken by the count error. With ``tta`` the maps are averaged over the 8 dihedral
views first (and the tuned checkpoint says so). The same settings applied to the true
masks (what post-processing alone miscounts) are scored beside it. It is written, with the
table of every candidate, to ``postprocess_tuning.json`` in the run dir, and into a copy of
the checkpoint (``<name>.tuned.ckpt`` beside it, written atomically; the original is never
changed), so ``predict`` and ``evaluate`` use the values the model was tuned with.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from nucleiseg.files.atomic import write_atomic


def candidates(
    grid: dict[str, Any], base: dict[str, Any], channels: tuple[str, ...] = ("nucleus",)
) -> list[dict[str, Any]]:
    """Every combination in ``grid``; each marker kind with its own parameter. An
    instance-aware model's (``channels`` beyond the nucleus) markers come from its own maps:
    its knob is ``marker_threshold``."""
    found = []
    for threshold, min_size in itertools.product(grid["threshold"], grid["min_size"]):
        common = {**base, "threshold": threshold, "min_size": min_size}
        if len(channels) > 1:
            found += [{**common, "marker_threshold": m} for m in grid["marker_threshold"]]
            continue
        found += [{**common, "markers": "peaks", "min_distance": d} for d in grid["min_distance"]]
        found += [{**common, "markers": "h_maxima", "h": h} for h in grid["h"]]
    return found


@torch.no_grad()
def validation_probabilities(module, output: str, datamodule) -> tuple[list, list]:
    """Probability maps and true instance maps of every validation image, computed as
    ``evaluate`` scores the test split: the datamodule's evaluation loader (its
    ``eval_transform``, whole images, batched alike) and the module's own forward (its
    padding), so the settings are tuned on exactly what evaluation post-processes."""
    probs, truths = [], []
    loaders = datamodule.val_dataloader()
    for loader in loaders if isinstance(loaders, list) else [loaders]:  # a mix: per source
        for batch in loader:
            logits = module(batch["image"].to(module.device))[output]
            maps = torch.sigmoid(logits).float().cpu().numpy()  # (N, C, H, W)
            probs += [m[0] if len(m) == 1 else m for m in maps]
            truths += list(batch["instances"].numpy())
    return probs, truths


def score(
    settings: dict[str, Any],
    probs: list,
    truths: list,
    factor: float = 1.0,
    channels: tuple[str, ...] = ("nucleus",),
) -> dict[str, float]:
    """Nucleus metrics of ``settings`` (in model pixels; the maps have ``factor`` pixels per
    model pixel) on maps of ``channels``."""
    from nucleiseg.metrics.objects import NucleusMetrics
    from nucleiseg.postprocessing.watershed import InstanceSettings, instances_from_probability

    metric = NucleusMetrics()
    instance_settings = InstanceSettings(**{**settings, "channels": channels}).scaled(factor)
    for prob, truth in zip(probs, truths, strict=True):
        metric.update(instances_from_probability(prob, instance_settings), truth)
    values = {k: float(v) for k, v in metric.compute().items()}
    values["relative_abs_count_error"] = values["abs_count_error_pct"] / 100
    return values


# what a candidate is ranked by (lowest first): the nucleus count, or a nucleus figure
OBJECTIVES = {
    "count": lambda r: (round(r["relative_abs_count_error"], 4), -r["aji"]),
    "aji": lambda r: (-round(r["aji"], 4), r["relative_abs_count_error"]),
    "pq": lambda r: (-round(r["pq"], 4), r["relative_abs_count_error"]),
}


def ranking(objective: str) -> Any:
    """The sort key of ``objective`` (lowest is best); an unknown one is refused."""
    if objective not in OBJECTIVES:
        raise ValueError(
            f"objective={objective!r} is not known: use one of {', '.join(OBJECTIVES)}"
        )
    return OBJECTIVES[objective]


def tune(
    probs: list,
    truths: list,
    grid: dict[str, Any],
    base: dict[str, Any],
    factor: float = 1.0,
    channels: tuple[str, ...] = ("nucleus",),
    objective: str = "count",
) -> dict:
    """Every candidate's validation scores, and the chosen settings (in model pixels; the
    maps have ``factor`` pixels per model pixel): by ``objective``, the smallest absolute
    count error (ties: AJI; ``count``), or the highest AJI or PQ (ties: count; ``aji``,
    ``pq``).

    ``chosen_on_true_masks`` scores the chosen settings on the true masks themselves (the
    binary union of each true instance map as the "probability"): what the post-processing
    alone loses, so the rest of ``chosen_scores``' error is the model's.
    """
    from nucleiseg.data.instance_targets import instance_targets

    rank = ranking(objective)
    table = [{"settings": c, **score(c, probs, truths, factor, channels)}
             for c in candidates(grid, base, channels)]  # fmt: skip
    best = min(table, key=rank)
    # the true maps (the truth's own targets) as the "probabilities"
    true_maps = [instance_targets(np.asarray(t), channels) for t in truths]
    true_maps = [m[0] if len(m) == 1 else m for m in true_maps]
    return {"objective": objective, "chosen": best["settings"], "chosen_scores": best,
            "chosen_on_true_masks": score(best["settings"], true_maps, truths, factor, channels),
            "candidates": table}  # fmt: skip


def write_tuned_checkpoint(
    checkpoint: Path, settings: dict[str, Any], target: Path | None = None, tta: bool = False
) -> Path:
    """A copy of ``checkpoint`` whose stored post-processing is ``settings`` (chosen on maps
    averaged over the dihedral views when ``tta``), at ``target`` (default:
    ``<stem>.tuned.ckpt`` beside it)."""
    from nucleiseg.training.checkpoints import read_checkpoint

    state = read_checkpoint(checkpoint)
    state["nucleiseg"]["postprocess"] = dict(settings)
    state["nucleiseg"]["tuned_with_tta"] = bool(tta)
    for key in ("stage1_module", "two_stage_module"):  # the modules' copy of it, too
        module_cfg = state["nucleiseg"].get("model", {}).get(key)
        if isinstance(module_cfg, dict):  # pixel metrics keep their own threshold (0.5)
            module_cfg["postprocess"] = dict(settings)
    target = target or checkpoint.with_name(f"{checkpoint.stem}.tuned.ckpt")
    if target.resolve() == checkpoint.resolve():
        raise ValueError(f"tuned_ckpt={target} is the checkpoint itself: name another file")
    return write_atomic(target, lambda tmp: torch.save(state, tmp))


def run(cfg: DictConfig) -> dict[str, Any]:
    from hydra.utils import instantiate

    from nucleiseg.files.atomic import write_json_atomic
    from nucleiseg.inference.loading import apply_input_mpp, load_model, native_grid_datamodule

    checkpoint = Path(cfg.ckpt)
    objective = str(cfg.get("objective", "count"))
    ranking(objective)  # refused before the maps are computed
    module, output = load_model(checkpoint)
    module.tta = bool(cfg.get("tta", False))
    if "sources" in cfg.dataset:
        # a mix (dataset=mix): its sources differ in pixel size, so every validation split
        # is resampled to the model's grid (as in training) and tuned there, pooled
        with open_dict(cfg):
            cfg.model.mpp, cfg.model.channels = module.mpp, list(module.channels)
        input_mpp = apply_input_mpp(module, module.mpp)
        datamodule = instantiate(cfg.dataset.datamodule, split_dir=None)
        datamodule.set_stain_normalizer(module.stain_normalizer)  # as the model was trained
    else:
        input_mpp = apply_input_mpp(module, cfg.get("input_mpp"))
        datamodule = native_grid_datamodule(cfg.dataset, module)  # as evaluate scores
    datamodule.setup("validate")
    probs, truths = validation_probabilities(module, output, datamodule)
    base = OmegaConf.to_container(cfg.postprocess, resolve=True)
    grid = OmegaConf.to_container(cfg.grid, resolve=True)
    result = tune(probs, truths, grid, base, module.input_pixels_per_model_pixel,
                  module.channels, objective)  # fmt: skip
    result["checkpoint"] = str(checkpoint)
    result["input_mpp"], result["model_mpp"], result["tta"] = input_mpp, module.mpp, module.tta
    target = Path(cfg.tuned_ckpt) if cfg.get("tuned_ckpt") else None
    tuned = write_tuned_checkpoint(checkpoint, result["chosen"], target, module.tta)
    result["tuned_checkpoint"] = str(tuned)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "postprocess_tuning.json", result)
    return result
