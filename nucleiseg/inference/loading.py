"""Rebuild a trained model from a checkpoint alone (its config travels inside it)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from nucleiseg.lightning.base import SegmentationModule
from nucleiseg.training.builders import build_modules
from nucleiseg.training.checkpoints import CheckpointError, read_checkpoint, stored_model_config

__all__ = ["CheckpointError", "load_model"]


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[SegmentationModule, str]:
    """The module a checkpoint holds, in eval mode, and the output to use.

    A checkpoint with enhancer weights gives the two-stage model (output ``two_stage``);
    one from phase 1 gives stage 1 alone (output ``stage1``).
    """
    path = Path(checkpoint)
    state = read_checkpoint(path)
    cfg = OmegaConf.create(stored_model_config(state, path))
    modules = build_modules(cfg)
    weights = state["state_dict"]
    two_stage = any(k.startswith("enhancer.") for k in weights)
    module = modules["two_stage" if two_stage else "stage1"]
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint '{path}' weights do not fit its stored model config ({first})"
        ) from err
    module.phase = str(cfg.get("phase", "predict"))
    return module.to(device).eval(), "two_stage" if two_stage else "stage1"
