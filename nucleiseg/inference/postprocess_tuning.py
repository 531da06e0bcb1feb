"""Choose the post-processing (probability -> nuclei) on the validation split:
``python -m nucleiseg.tune_postprocess ckpt=<run>/checkpoints/finetune/best.ckpt dataset=tnbc``.

Every combination of threshold, the level an object must reach somewhere
(``core_threshold``, hysteresis), watershed markers (distance-transform peaks
``min_distance`` apart, or h-maxima of depth ``h``; for instance-aware models the level
``marker_threshold`` of their marker map, the smallest marker kept, ``marker_min_size``, and
the merges of neighbours, ``merge_below`` (weak border) and ``merge_convex`` (convex union)),
minimum size, and minimum size of the fragments at the image's edge (``border_min_size``) in
``grid`` is scored on the validation images (never the test split); the chosen one has
(``objective``) the smallest absolute nucleus-count error relative to the true count, ties
broken by AJI, or the highest AJI, PQ or their sum (``aji_pq``), ties broken by the count
error. With ``tta`` the maps are averaged over the 8 dihedral views first (and the tuned
checkpoint says so). The same settings applied to the true masks (what post-processing alone
miscounts) are scored beside it. It is written, with the table of every candidate, to
``postprocess_tuning.json`` in the run dir, and into a copy of the checkpoint
(``<name>.tuned.ckpt`` beside it, written atomically; the original is never changed), so
``predict`` and ``evaluate`` use the values the model was tuned with. An earlier tuning's
copy or table there is refused before any work, unless ``overwrite=true``.
For a mix (several sources), the chosen settings are also scored on each source's
validation images apart (``chosen_by_source``). With ``held_out=true`` it also reports, per
objective, how its choice carries to images it was not chosen on (chosen on one half of the
validation images, scored on the other, both ways): a way to pick the objective on the
validation split alone.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from nucleiseg.files.atomic import write_atomic

log = logging.getLogger(__name__)


def candidates(
    grid: dict[str, Any], base: dict[str, Any], channels: tuple[str, ...] = ("nucleus",)
) -> list[dict[str, Any]]:
    """Every combination in ``grid``; each marker kind with its own parameter. An
    instance-aware model's (``channels`` beyond the nucleus) markers come from its own maps:
    its knob is ``marker_threshold``."""
    from nucleiseg.channels.names import offset_indices
    from nucleiseg.postprocessing.watershed import InstanceSettings

    found = []
    # a grid without border_min_size keeps the base's (the config's postprocess)
    border_sizes = grid.get("border_min_size") or [base.get("border_min_size")]
    # a grid without core_threshold keeps the base's (null: every object)
    cores = grid.get("core_threshold") or [base.get("core_threshold")]
    sizes = itertools.product(grid["threshold"], cores, grid["min_size"], border_sizes)
    for threshold, core, min_size, border_min_size in sizes:
        common = {**base, "threshold": threshold, "core_threshold": core, "min_size": min_size,
                  "border_min_size": border_min_size}  # fmt: skip
        if len(channels) > 1:
            # HV outputs also try the Sobel kernel of their border map
            kernels = (grid.get("hover_kernel_size") if offset_indices(channels) else None) or [
                base.get("hover_kernel_size", InstanceSettings.hover_kernel_size)
            ]
            # a grid without marker_min_size keeps the base's
            marker_sizes = grid.get("marker_min_size") or [
                base.get("marker_min_size", InstanceSettings.marker_min_size)
            ]
            # a grid without merge_below / merge_convex keeps the base's (null: never merge)
            merges = list(itertools.product(
                grid.get("merge_below") or [base.get("merge_below")],
                grid.get("merge_convex") or [base.get("merge_convex")],
            ))  # fmt: skip
            found += [{**common, "marker_threshold": m, "hover_kernel_size": k,
                       "marker_min_size": size, "merge_below": below, "merge_convex": convex}
                      for k in kernels for size in marker_sizes for below, convex in merges
                      for m in grid["marker_threshold"]]  # fmt: skip
            continue
        found += [{**common, "markers": "peaks", "min_distance": d} for d in grid["min_distance"]]
        found += [{**common, "markers": "h_maxima", "h": h} for h in grid["h"]]
    return found


@torch.no_grad()
def validation_probabilities(module, output: str, datamodule) -> tuple[list, list, list]:
    """Probability maps and true instance maps of every validation image, computed as
    ``evaluate`` scores the test split: the datamodule's evaluation loader (its
    ``eval_transform``, whole images, batched alike) and the module's own forward (its
    padding), so the settings are tuned on exactly what evaluation post-processes. The
    third list is each map's source (0, 1, ... in a mix's order; 0 for one dataset)."""
    probs, truths, parts = [], [], []
    loaders = datamodule.val_dataloader()
    for part, loader in enumerate(loaders if isinstance(loaders, list) else [loaders]):
        for batch in loader:
            logits = module(batch["image"].to(module.device))[output]
            maps = torch.sigmoid(logits).float().cpu().numpy()  # (N, C, H, W)
            probs += [m[0] if len(m) == 1 else m for m in maps]
            truths += list(batch["instances"].numpy())
            parts += [part] * len(maps)
    return probs, truths, parts


def halves(parts: list[int]) -> list[int]:
    """Two folds of the validation images: the first half of each source's images (in their
    order, so the tiles of one source image mostly stay together) and the second half."""
    folds, seen = [], {}
    totals = {p: parts.count(p) for p in set(parts)}
    for part in parts:
        folds.append(int(seen.get(part, 0) >= (totals[part] + 1) // 2))
        seen[part] = seen.get(part, 0) + 1
    return folds


def score(
    settings: dict[str, Any],
    probs: list,
    truths: list,
    factor: float = 1.0,
    channels: tuple[str, ...] = ("nucleus",),
    folds: list[int] | None = None,
) -> dict[str, Any]:
    """Nucleus metrics of ``settings`` (in model pixels; the maps have ``factor`` pixels per
    model pixel) on maps of ``channels``; with ``folds`` (one fold id per map), each fold's
    too, under ``"folds"`` (from the same instance maps: no extra post-processing)."""
    return score_marker_variants([settings], probs, truths, factor, channels, folds)[0]


def score_marker_variants(
    group: list[dict[str, Any]],
    probs: list,
    truths: list,
    factor: float = 1.0,
    channels: tuple[str, ...] = ("nucleus",),
    folds: list[int] | None = None,
) -> list[dict[str, Any]]:
    """:func:`score` of each settings in ``group``, settings that differ in their marker knobs
    (``MARKER_KNOBS``) alone: each image's mask and marker map are made once for all of them
    (:func:`~nucleiseg.postprocessing.watershed.instances_for_marker_variants`)."""
    from nucleiseg.metrics.objects import NucleusMetrics
    from nucleiseg.postprocessing.watershed import InstanceSettings, instances_for_marker_variants

    if len(marker_variant_groups(group)) != 1:
        raise ValueError(
            f"score_marker_variants takes settings that differ in {', '.join(MARKER_KNOBS)} "
            "alone: group them with marker_variant_groups"
        )
    every = [InstanceSettings(**{**s, "channels": channels}).scaled(factor) for s in group]
    metrics = [NucleusMetrics() for _ in group]
    by_fold = [{f: NucleusMetrics() for f in sorted(set(folds))} if folds else {} for _ in group]
    for index, (prob, truth) in enumerate(zip(probs, truths, strict=True)):
        found = instances_for_marker_variants(prob, every)
        for i, instances in enumerate(found):
            metrics[i].update(instances, truth)
            if folds:
                by_fold[i][folds[index]].update(instances, truth)
    values: list[dict[str, Any]] = [_figures(m) for m in metrics]
    if folds:
        for value, fold_metrics in zip(values, by_fold, strict=True):
            value["folds"] = [_figures(m) for m in fold_metrics.values()]
    return values


# the knobs that act after the marker map: candidates differing in these share a mask and map
MARKER_KNOBS = ("marker_threshold", "marker_min_size", "merge_below", "merge_convex")


def marker_variant_groups(settings: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive candidates that differ in their marker knobs (``MARKER_KNOBS``) alone, in
    their order."""

    def rest(candidate: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in candidate.items() if k not in MARKER_KNOBS}

    groups: list[list[dict[str, Any]]] = []
    for candidate in settings:
        if groups and rest(candidate) == rest(groups[-1][0]):
            groups[-1].append(candidate)
        else:
            groups.append([candidate])
    return groups


def _figures(metric) -> dict[str, float]:
    values = {k: float(v) for k, v in metric.compute().items()}
    values["relative_abs_count_error"] = values["abs_count_error_pct"] / 100
    return values


# what a candidate is ranked by (lowest first): the nucleus count, or a nucleus figure
OBJECTIVES = {
    "count": lambda r: (round(r["relative_abs_count_error"], 4), -r["aji"]),
    "aji": lambda r: (-round(r["aji"], 4), r["relative_abs_count_error"]),
    "pq": lambda r: (-round(r["pq"], 4), r["relative_abs_count_error"]),
    # both nucleus figures at once (pixels matched and nuclei found), equally weighted
    "aji_pq": lambda r: (-round(r["aji"] + r["pq"], 4), r["relative_abs_count_error"]),
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
    folds: list[int] | None = None,
) -> dict:
    """Every candidate's validation scores, and the chosen settings (in model pixels; the
    maps have ``factor`` pixels per model pixel): by ``objective``, the smallest absolute
    count error (ties: AJI; ``count``), or the highest AJI, PQ or AJI + PQ (ties: count;
    ``aji``, ``pq``, ``aji_pq``).

    ``chosen_on_true_masks`` scores the chosen settings on the true masks themselves (the
    binary union of each true instance map as the "probability"): what the post-processing
    alone loses, so the rest of ``chosen_scores``' error is the model's.

    With ``folds`` (two fold ids, one per map: :func:`halves`), ``held_out`` says how well
    each objective's choice carries to images it was not chosen on: chosen on one fold,
    scored on the other, both ways, averaged.
    """
    from nucleiseg.data.instance_targets import instance_targets

    rank = ranking(objective)
    if folds and sorted(set(folds)) != [0, 1]:
        raise ValueError(
            f"held_out=true compares two halves of the validation images, and {len(probs)} "
            "image(s) make one: leave held_out=false, or validate on more images"
        )
    table = []
    settings = candidates(grid, base, channels)
    every = max(1, len(settings) // 10)  # progress: about ten log lines
    for group in marker_variant_groups(settings):
        scores = score_marker_variants(group, probs, truths, factor, channels, folds)
        for candidate, figures in zip(group, scores, strict=True):
            table.append({"settings": candidate, **figures})
            if len(table) % every == 0 or len(table) == len(settings):
                log.info("scored %d of %d settings on %d images", len(table), len(settings),
                         len(probs))  # fmt: skip
    best = min(table, key=rank)
    # the true maps (the truth's own targets) as the "probabilities"
    true_maps = [instance_targets(np.asarray(t), channels) for t in truths]
    true_maps = [m[0] if len(m) == 1 else m for m in true_maps]
    result = {"objective": objective, "chosen": best["settings"],
              "chosen_scores": {k: v for k, v in best.items() if k != "folds"},
              "chosen_on_true_masks": score(best["settings"], true_maps, truths, factor, channels),
              "candidates": table}  # fmt: skip
    if folds:
        result["held_out"] = held_out(table)
    return result


HELD_OUT_FIGURES = ("aji", "pq", "det_f1", "relative_abs_count_error", "count_error")


def chosen_by_source(
    settings: dict[str, Any],
    probs: list,
    truths: list,
    parts: list[int],
    names: list[str],
    factor: float = 1.0,
    channels: tuple[str, ...] = ("nucleus",),
) -> dict[str, dict[str, float]]:
    """The chosen ``settings``' figures on each source's validation images apart (``parts``:
    each map's source index into ``names``): a mix chooses on them pooled, and one source's
    count can hide another's. The sources are :func:`score`'s groups (as folds are)."""
    by_part = score(settings, probs, truths, factor, channels, folds=parts)["folds"]
    return {names[part]: figures for part, figures in zip(sorted(set(parts)), by_part, strict=True)}


def held_out(table: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per objective: the figures of the candidate it chooses on one fold, scored on the
    other (both ways, averaged): which objective's choice carries to unseen images."""
    found = {}
    for objective, key in OBJECTIVES.items():
        scores = []
        for chosen_on, scored_on in ((0, 1), (1, 0)):
            best = min(table, key=lambda row, f=chosen_on: key(row["folds"][f]))
            scores.append(best["folds"][scored_on])
        found[objective] = {k: float(np.mean([s[k] for s in scores])) for k in HELD_OUT_FIGURES}
    return found


def write_tuned_checkpoint(
    checkpoint: Path, settings: dict[str, Any], target: Path | None = None, tta: bool = False
) -> Path:
    """A copy of ``checkpoint`` whose stored post-processing is ``settings`` (chosen on maps
    averaged over the dihedral views when ``tta``), at ``target`` (default:
    ``<stem>.tuned.ckpt`` beside it): a model for use, so what only resumes training (the
    optimizer's state, a weight average's trained weights) is left out."""
    from nucleiseg.training.checkpoints import for_use, read_checkpoint

    state = for_use(read_checkpoint(checkpoint))
    state["nucleiseg"]["postprocess"] = dict(settings)
    state["nucleiseg"]["tuned_with_tta"] = bool(tta)
    for key in ("stage1_module", "two_stage_module"):  # the modules' copy of it, too
        module_cfg = state["nucleiseg"].get("model", {}).get(key)
        if isinstance(module_cfg, dict):  # pixel metrics keep their own threshold (0.5)
            module_cfg["postprocess"] = dict(settings)
    return write_atomic(tuned_path(checkpoint, target), lambda tmp: torch.save(state, tmp))


def tuned_path(checkpoint: Path, target: Path | None = None) -> Path:
    """Where the tuned copy of ``checkpoint`` goes: ``target``, or ``<stem>.tuned.ckpt``
    beside it; never the checkpoint itself."""
    target = Path(target) if target else checkpoint.with_name(f"{checkpoint.stem}.tuned.ckpt")
    if target.resolve() == checkpoint.resolve():
        raise ValueError(f"tuned_ckpt={target} is the checkpoint itself: name another file")
    return target


def refuse_to_replace(paths: list[Path]) -> None:
    """An earlier tuning's tuned checkpoint or table is kept unless ``overwrite=true``."""
    found = [str(p) for p in paths if p.exists()]
    if found:
        raise FileExistsError(
            f"tune_postprocess would replace {', '.join(repr(f) for f in found)} of an earlier "
            "tuning: write this one elsewhere (tuned_ckpt=<file>, paths.output_dir=<dir>), or "
            "pass overwrite=true to replace them"
        )


def run(cfg: DictConfig) -> dict[str, Any]:
    from hydra.utils import instantiate

    from nucleiseg.data.mix import is_mix
    from nucleiseg.files.atomic import write_json_atomic
    from nucleiseg.inference.loading import apply_input_mpp, load_model, native_grid_datamodule

    checkpoint = Path(cfg.ckpt)
    objective = str(cfg.get("objective", "count"))
    ranking(objective)  # refused before the maps are computed
    target = tuned_path(checkpoint, cfg.get("tuned_ckpt"))
    out_dir = Path(cfg.paths.output_dir)
    if not cfg.get("overwrite", False):
        refuse_to_replace([target, out_dir / "postprocess_tuning.json"])
    module, output = load_model(checkpoint)
    module.tta = bool(cfg.get("tta", False))
    if is_mix(cfg.dataset):
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
    probs, truths, parts = validation_probabilities(module, output, datamodule)
    base = OmegaConf.to_container(cfg.postprocess, resolve=True)
    grid = OmegaConf.to_container(cfg.grid, resolve=True)
    folds = halves(parts) if cfg.get("held_out") else None
    result = tune(probs, truths, grid, base, module.input_pixels_per_model_pixel,
                  module.channels, objective, folds)  # fmt: skip
    for name, figures in (result.get("held_out") or {}).items():
        log.info("objective=%s chosen on one half of the validation images, scored on the "
                 "other: AJI %.3f, PQ %.3f, detection F1 %.3f, abs. count error %.1f %%",
                 name, figures["aji"], figures["pq"], figures["det_f1"],
                 100 * figures["relative_abs_count_error"])  # fmt: skip
    names = list(getattr(datamodule, "source_weights", None) or {})
    if len(names) > 1:
        result["chosen_by_source"] = chosen_by_source(
            result["chosen"], probs, truths, parts, names,
            module.input_pixels_per_model_pixel, module.channels,
        )  # fmt: skip
        for name, figures in result["chosen_by_source"].items():
            log.info("chosen settings on %s's validation images: AJI %.3f, PQ %.3f, detection "
                     "F1 %.3f, count %+.1f %% of the true count", name, figures["aji"],
                     figures["pq"], figures["det_f1"], figures["count_error_pct"])  # fmt: skip
    result["checkpoint"] = str(checkpoint)
    result["input_mpp"], result["model_mpp"], result["tta"] = input_mpp, module.mpp, module.tta
    tuned = write_tuned_checkpoint(checkpoint, result["chosen"], target, module.tta)
    result["tuned_checkpoint"] = str(tuned)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "postprocess_tuning.json", result)
    return result
