"""Build a run's networks, LightningModules and loggers from its config (``instantiate``)."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from nucleiseg.data.stain_normalization import fit_normalizer, is_fitted, normalizer_from_config
from nucleiseg.lightning.base import SegmentationModule

#: the config sections a checkpoint carries, so that predict/evaluate/export rebuild the model
MODEL_CONFIG_KEYS = ("backbone", "model", "postprocess", "stain_normalization")


def stored_sections(cfg: DictConfig) -> dict[str, Any]:
    """``MODEL_CONFIG_KEYS`` of ``cfg`` as plain values, resolved against the whole config
    (``model.mpp`` reads ``dataset.mpp``), as a checkpoint stores them."""
    sections = {}
    for key in MODEL_CONFIG_KEYS:
        if key in cfg:
            node = cfg[key]
            sections[key] = (
                OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
            )
    return sections


def build_networks(cfg: DictConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Stage 1 and the enhancer; with instance-aware outputs (``model.channels``, C > 1) both
    output C channels and the enhancer reads the image and all C of stage 1's (a checkpoint
    without ``model.channels`` is the paper's binary model)."""
    channels = len(cfg.model.get("channels") or ("nucleus",))
    if channels == 1:
        return instantiate(cfg.backbone.net), instantiate(cfg.model.enhancer)
    enhancer_cfg = cfg.model.enhancer
    reads = int(enhancer_cfg.get("in_channels", 4)) - int(enhancer_cfg.get("classes", 1))
    stage1 = instantiate(cfg.backbone.net, classes=channels)
    enhancer = instantiate(enhancer_cfg, in_channels=reads + channels, classes=channels)
    return stage1, enhancer


def check_touching_weight(cfg: DictConfig) -> None:
    """``output_kind.loss_weights.touching`` finds the seam of the 1 px contour ring: with a
    wider band (``output_kind.contour_width``) its inner rings would count as seam too."""
    touching = OmegaConf.select(cfg, "output_kind.loss_weights.touching", default=0.0) or 0.0
    width = OmegaConf.select(cfg, "model.contour_width", default=None) or 1
    if touching and width > 1:
        raise ValueError(
            f"output_kind.loss_weights.touching={touching} weighs where the 1 px contour rings "
            f"of two nuclei meet; with output_kind.contour_width={width} it would weigh the "
            "band's inner rings too: set contour_width to 1 or touching to 0"
        )


def build_modules(cfg: DictConfig) -> dict[str, SegmentationModule]:
    """Stage 1 and the two-stage module, sharing one stage-1 network."""
    check_touching_weight(cfg)
    stage1, enhancer = build_networks(cfg)
    optimizer = instantiate(cfg.model.optimizer)
    schedule = cfg.model.get("scheduler")
    shared = {"optimizer": optimizer, "scheduler": instantiate(schedule) if schedule else None}
    modules = {
        "stage1": instantiate(cfg.model.stage1_module, stage1=stage1, **shared),
        "two_stage": instantiate(
            cfg.model.two_stage_module, stage1=stage1, enhancer=enhancer, **shared
        ),
    }
    model_config = stored_sections(cfg)
    stain = cfg.get("stain_normalization")
    normalizer = normalizer_from_config(stain) if is_fitted(stain) else None
    for module in modules.values():
        module.model_config = model_config
        module.stain_normalizer = normalizer
        module.mpp = model_config.get("model", {}).get("mpp")
    if cfg.get("channels_last"):
        for module in modules.values():
            module.to(memory_format=torch.channels_last)
    if cfg.get("compile"):
        stage1.compile()  # in place: the state-dict keys, so checkpoints, stay the same
        enhancer.compile()
    return modules


def fit_stain_normalization(cfg: DictConfig, datamodule: Any) -> None:
    """With ``stain_normalization`` set: fit it if not yet fitted (to its reference image or
    the first training image) and store the fitted values in ``cfg``, so the modules' model
    config, hence every checkpoint, carries them; then normalise the datamodule's images."""
    stain = cfg.get("stain_normalization")
    if not stain:
        return
    if not is_fitted(stain):

        def first_training_image() -> Any:
            datamodule.setup("fit")
            return datamodule.samples["train"].images[0]

        settings = OmegaConf.to_container(stain, resolve=True)
        fitted = fit_normalizer(settings, first_training_image).to_config()
        with open_dict(cfg):
            cfg.stain_normalization = {**fitted, "reference": settings.get("reference")}
    datamodule.set_stain_normalizer(normalizer_from_config(cfg.stain_normalization))


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
