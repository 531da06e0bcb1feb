"""One checkpoint file for an ensemble of trained models (``python -m nucleiseg.ensemble``).

The file holds every member's weights (``members.<i>.<key>``) and stored config, so
``predict``, ``evaluate``, ``tune_postprocess``, ``export`` and the whole-slide path load it
like any checkpoint (``nucleiseg.inference.loading``) and average the members' maps
(``nucleiseg.lightning.ensemble``). Members must be of one kind: the same output (two-stage
or stage 1), channels, pixel size and stain normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nucleiseg.files.atomic import write_atomic
from nucleiseg.training.checkpoints import (
    CheckpointError,
    holds_enhancer,
    read_checkpoint,
    stored_model_config,
)

#: the key of a checkpoint's stored config that makes it an ensemble
ENSEMBLE_KEY = "ensemble"


def member_prefix(index: int) -> str:
    return f"members.{index}."


def _kind(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """What members must share, read from one member's checkpoint."""
    model = config.get("model") or {}
    return {
        "output": "two-stage" if holds_enhancer(state["state_dict"]) else "stage-1",
        "channels": list(model.get("channels") or ["nucleus"]),
        "pixel size (model.mpp)": model.get("mpp"),
        "stain normalisation": config.get("stain_normalization") or None,
    }


def _check_same_kind(kinds: list[tuple[Path, dict[str, Any]]]) -> None:
    (first_path, first), *others = kinds
    for path, kind in others:
        for what, value in kind.items():
            if value != first[what]:
                raise CheckpointError(
                    f"ensemble members differ in {what}: '{first_path}' has {first[what]!r}, "
                    f"'{path}' has {value!r}; an ensemble averages maps of one kind: pass "
                    "checkpoints of one recipe (e.g. the seeds of one preset, each "
                    "<run>/checkpoints/finetune/best.ckpt)"
                )


def ensemble_checkpoint(members: Sequence[str | Path]) -> dict[str, Any]:
    """The contents of an ensemble checkpoint of ``members`` (checkpoint files). Its
    post-processing is the first member's until ``tune_postprocess`` chooses its own."""
    paths = [Path(p) for p in members]
    if len(paths) < 2:
        raise ValueError(f"an ensemble needs at least two member checkpoints, got {len(paths)}")
    seen: set[Path] = set()
    for path in paths:
        if path.resolve() in seen:
            raise ValueError(f"member '{path}' is listed twice; list each checkpoint once")
        seen.add(path.resolve())
    states, configs, kinds = [], [], []
    for path in paths:
        state = read_checkpoint(path)
        config = stored_model_config(state, path)
        if ENSEMBLE_KEY in config:
            raise CheckpointError(
                f"'{path}' is itself an ensemble; list its members instead (they are in "
                f"its config: {config[ENSEMBLE_KEY].get('sources')})"
            )
        states.append(state)
        configs.append(config)
        kinds.append((path, _kind(state, config)))
    _check_same_kind(kinds)
    weights = {
        member_prefix(i) + key: value
        for i, state in enumerate(states)
        for key, value in state["state_dict"].items()
    }
    first = configs[0]
    model = {"mpp": kinds[0][1]["pixel size (model.mpp)"], "channels": kinds[0][1]["channels"]}
    stored = {
        ENSEMBLE_KEY: {"members": configs, "sources": [str(p.resolve()) for p in paths]},
        "model": model,
        "postprocess": dict(first.get("postprocess") or {}),
        "stain_normalization": first.get("stain_normalization"),
        "phase": ENSEMBLE_KEY,
        "tuned_with_tta": bool(first.get("tuned_with_tta", False)),
    }
    return {"state_dict": weights, "nucleiseg": stored}


def write_ensemble(
    members: Sequence[str | Path], target: str | Path, overwrite: bool = False
) -> Path:
    """Write the ensemble of ``members`` to ``target`` (atomically); an existing file is
    replaced only with ``overwrite``, and never a member."""
    target = Path(target)
    if any(target.resolve() == Path(p).resolve() for p in members):
        raise ValueError(f"output '{target}' is one of the members: name another file")
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"'{target}' exists; pass overwrite=true to replace it, or name another output"
        )
    contents = ensemble_checkpoint(members)
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(target, lambda tmp: torch.save(contents, tmp))
