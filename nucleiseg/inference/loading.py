"""Rebuild a trained model from a checkpoint alone (its config travels inside it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nucleiseg.inference.ensembling import ENSEMBLE_KEY, member_prefix
from nucleiseg.lightning.base import SegmentationModule
from nucleiseg.lightning.ensemble import EnsembleModule
from nucleiseg.training.builders import build_modules
from nucleiseg.training.checkpoints import (
    CheckpointError,
    holds_enhancer,
    read_checkpoint,
    stored_model_config,
)

__all__ = [
    "CheckpointError", "apply_input_mpp", "load_model", "native_grid_datamodule", "resolve_tta",
]  # fmt: skip
log = logging.getLogger(__name__)


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[SegmentationModule, str]:
    """The module a checkpoint holds, in eval mode, and the output to use.

    A checkpoint with enhancer weights gives the two-stage model (output ``two_stage``);
    one from phase 1 gives stage 1 alone (output ``stage1``); an ensemble's
    (``python -m nucleiseg.ensemble``) gives its members averaged, as one module.
    """
    path = Path(checkpoint)
    state = read_checkpoint(path)
    config = stored_model_config(state, path)
    if ENSEMBLE_KEY in config:
        module, output = _ensemble_module(config, state["state_dict"], path)
    else:
        module, output = _trained_module(config, state["state_dict"], f"checkpoint '{path}'")
    module.phase = str(config.get("phase", "predict"))
    module.tuned_with_tta = bool(config.get("tuned_with_tta", False))
    if module.mpp is None:
        log.warning(
            "checkpoint '%s' stores no pixel size (written before model.mpp was stored): "
            "inputs are fed to it at their own resolution, not resampled; make sure they are "
            "at the resolution it was trained at", path,
        )  # fmt: skip
    return module.to(device).eval(), output


def _trained_module(
    config: dict[str, Any], weights: dict[str, Any], where: str
) -> tuple[SegmentationModule, str]:
    """The module one trained model's stored config builds, its weights loaded (``where``
    names the model in errors)."""
    modules = build_modules(OmegaConf.create(config))
    two_stage = holds_enhancer(weights)
    module = modules["two_stage" if two_stage else "stage1"]
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"{where}: weights do not fit its stored model config ({first})"
        ) from err
    return module, "two_stage" if two_stage else "stage1"


def _ensemble_module(
    config: dict[str, Any], weights: dict[str, Any], path: Path
) -> tuple[EnsembleModule, str]:
    """An ensemble checkpoint's members, each built and loaded as its own checkpoint."""
    members, outputs = [], set()
    for index, member_config in enumerate(config[ENSEMBLE_KEY]["members"]):
        prefix = member_prefix(index)
        own = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        module, output = _trained_module(member_config, own, f"member {index} of ensemble '{path}'")
        members.append(module)
        outputs.add(output)
    if len(outputs) != 1:
        raise CheckpointError(f"ensemble '{path}' mixes outputs {sorted(outputs)}")
    ensemble = EnsembleModule(
        members, postprocess=config.get("postprocess") or None, threshold=members[0].threshold
    )
    return ensemble, outputs.pop()


def apply_input_mpp(module: SegmentationModule, input_mpp: float | None) -> float | None:
    """Tell ``module`` the µm per pixel of its inputs (resampled to the model's and back);
    returns the input pixel size used. None assumes the model's own, with a warning."""
    if input_mpp is None:
        if module.mpp is not None:
            log.warning(
                "input_mpp not given: the inputs are assumed to be at the model's %.3g µm per "
                "pixel; set input_mpp=<µm per pixel> if they are not (0.25 at 40x, 0.5 at 20x)",
                module.mpp,
            )
        module.set_input_mpp(None)
        return module.mpp
    input_mpp = float(input_mpp)
    if module.mpp is None:
        log.warning(
            "input_mpp=%.3g given, but the checkpoint stores no pixel size: inputs are not "
            "resampled", input_mpp,
        )  # fmt: skip
    elif module.input_pixels_per_model_pixel == 1.0:
        pass
    else:
        log.info("inputs at %.3g µm per pixel are resampled to the model's %.3g and back",
                 input_mpp, module.mpp)  # fmt: skip
    module.set_input_mpp(input_mpp)
    return input_mpp


def resolve_tta(module: SegmentationModule, requested: bool | None) -> bool:
    """Whether to average the 8 dihedral views: as ``requested``, or (None) as the checkpoint's
    post-processing was tuned (``tune_postprocess tta=``), with a warning where they differ."""
    tta = module.tuned_with_tta if requested is None else bool(requested)
    if tta != module.tuned_with_tta:
        log.warning(
            "the checkpoint's post-processing was tuned %s test-time augmentation and is now "
            "applied %s it: its thresholds may not fit these maps (tune_postprocess tta=%s)",
            "with" if module.tuned_with_tta else "without", "with" if tta else "without",
            str(tta).lower(),
        )  # fmt: skip
    elif tta:
        log.info("averaging the 8 dihedral views (flips x rotations) as the checkpoint was "
                 "tuned: 8x the inference time; tta=false for one view")  # fmt: skip
    return tta


def native_grid_datamodule(dataset: DictConfig, module: SegmentationModule) -> Any:
    """The datamodule of one dataset config for scoring ``module`` at the images' own pixel
    grid (the module resamples its input to the model's and back), no split file written,
    its stain normalised as the model was trained."""
    from hydra.utils import instantiate

    datamodule = instantiate(dataset.datamodule, split_output=None, model_mpp=None,
                             channels=list(module.channels))  # fmt: skip
    datamodule.set_stain_normalizer(module.stain_normalizer)
    return datamodule
