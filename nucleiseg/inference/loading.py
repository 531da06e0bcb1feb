"""Rebuild a trained model from a checkpoint alone (its config travels inside it)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from nucleiseg.lightning.base import SegmentationModule


class CheckpointError(ValueError):
    """The checkpoint is missing or was not written by nucleiseg training."""


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[SegmentationModule, str]:
    """The module a checkpoint holds, in eval mode, and the output to use.

    A checkpoint with enhancer weights gives the two-stage model (output ``two_stage``);
    one from phase 1 gives stage 1 alone (output ``stage1``).
    """
    from nucleiseg.training import build_modules

    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint '{path}' does not exist; use a run's checkpoints/<phase>/best.ckpt"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which
        raise CheckpointError(f"cannot read checkpoint '{path}': {err}") from err
    if "nucleiseg" not in state or "state_dict" not in state:
        raise CheckpointError(
            f"'{path}' is not a nucleiseg training checkpoint (no stored model config); "
            "use a .ckpt from a run's checkpoints/ folder"
        )
    cfg = OmegaConf.create(state["nucleiseg"])
    modules = build_modules(cfg)
    weights = state["state_dict"]
    two_stage = any(k.startswith("enhancer.") for k in weights)
    module = modules["two_stage" if two_stage else "stage1"]
    module.load_state_dict(weights, strict=True)
    module.phase = state["nucleiseg"].get("phase", "predict")
    return module.to(device).eval(), "two_stage" if two_stage else "stage1"
