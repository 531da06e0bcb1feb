"""Build a run's networks, LightningModules and loggers from its config (``instantiate``)."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nucleiseg.lightning.base import SegmentationModule

#: the config sections a checkpoint carries, so that predict/evaluate/export rebuild the model
MODEL_CONFIG_KEYS = ("backbone", "model", "postprocess")


def build_modules(cfg: DictConfig) -> dict[str, SegmentationModule]:
    """Stage 1 and the two-stage module, sharing one stage-1 network."""
    stage1 = instantiate(cfg.backbone.net)
    enhancer = instantiate(cfg.model.enhancer)
    optimizer = instantiate(cfg.model.optimizer)
    schedule = cfg.model.get("scheduler")
    shared = {"optimizer": optimizer, "scheduler": instantiate(schedule) if schedule else None}
    modules = {
        "stage1": instantiate(cfg.model.stage1_module, stage1=stage1, **shared),
        "two_stage": instantiate(
            cfg.model.two_stage_module, stage1=stage1, enhancer=enhancer, **shared
        ),
    }
    model_config = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, list(MODEL_CONFIG_KEYS)), resolve=True
    )
    for module in modules.values():
        module.model_config = model_config
    if cfg.get("channels_last"):
        for module in modules.values():
            module.to(memory_format=torch.channels_last)
    if cfg.get("compile"):
        stage1.compile()  # in place: the state-dict keys, so checkpoints, stay the same
        enhancer.compile()
    return modules


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
