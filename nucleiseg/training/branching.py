"""Start a run from the finished leading phases of another (``stage.branch_from=<run dir>``).

The study's arms that begin with the paper's phase 1 (``two_stage``, ``base_extended``,
``enhance_no_image``, ``enhance_residual``) train the same stage 1 for a seed: each arm
branches from the ``two_stage`` run instead of training it again. Only phases defined
identically in both recipes are taken, and only when everything else that shapes them
(data, backbone, seed, optimiser, trainer) is the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nucleiseg.lightning.phases import Phase, build_phases
from nucleiseg.training.run_dir import comparable_config

#: keys that may differ between a run and the run it branches from: the recipe itself and
#: the enhancer, which no phase-1 step touches (each shared phase is compared in full)
RECIPE_KEYS = ("stage.", "model.enhancer.", "model.two_stage_module.")


class BranchError(ValueError):
    """The run named by ``stage.branch_from`` cannot give this run its first phases."""


def _shaping_config(cfg: DictConfig) -> dict[str, Any]:
    """The config without the recipe keys; paths inside the run's own dir (its split.csv,
    ...) are written relative to it, since each run has its own dir."""
    flat = comparable_config(cfg)
    run_dir = str(cfg.paths.output_dir)
    return {k: v.replace(run_dir, "<run dir>") if isinstance(v, str) else v
            for k, v in flat.items() if not k.startswith(RECIPE_KEYS)}  # fmt: skip


def branched_phases(cfg: DictConfig, phases: list[Phase], run_dir: Path) -> list[dict[str, Any]]:
    """The source run's records of the leading phases this run shares with it, their best
    checkpoints addressed relative to ``run_dir``; refuses a source that cannot serve."""
    source = Path(str(cfg.stage.branch_from))
    results_path, config_path = source / "results.json", source / "config.yaml"
    if not results_path.is_file() or not config_path.is_file():
        raise BranchError(
            f"stage.branch_from '{source}' holds no run (results.json and config.yaml); "
            "train the run to branch from first"
        )
    results = json.loads(results_path.read_text())
    source_cfg = OmegaConf.load(config_path)
    mine, theirs = _shaping_config(cfg), _shaping_config(source_cfg)
    keys = sorted(set(mine) | set(theirs))
    differing = [f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in keys
                 if mine.get(k) != theirs.get(k)]  # fmt: skip
    if differing:
        raise BranchError(
            f"stage.branch_from '{source}' was trained under another config ("
            + "; ".join(differing[:6])
            + "): its phases are not this run's"
        )
    shared: list[dict[str, Any]] = []
    source_phases = build_phases(source_cfg)
    for mine_phase, their_phase, record in zip(
        phases, source_phases, results.get("phases", []), strict=False
    ):
        if asdict(mine_phase) != asdict(their_phase) or record.get("name") != mine_phase.name:
            break
        checkpoint = source / record["best_checkpoint"]
        if not checkpoint.is_file():
            raise BranchError(f"stage.branch_from: '{checkpoint}' is missing")
        shared.append({**record, "best_checkpoint": os.path.relpath(checkpoint, run_dir),
                       "branched_from": str(source.resolve())})  # fmt: skip
    if not shared:
        raise BranchError(
            f"stage.branch_from '{source}' has no finished phase that starts this recipe "
            f"({[p.name for p in phases]}); branch only recipes that share its first phase"
        )
    return shared
