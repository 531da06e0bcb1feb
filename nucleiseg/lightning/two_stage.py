"""The two-stage model: stage 1's probability map, refined by the enhancement network.

Phase 2 trains the enhancer on a frozen stage 1 (run under ``no_grad`` and kept in eval
mode by ``configure_phase``, so BatchNorm statistics do not move); phase 3 fine-tunes both,
stage 1 back in train mode, the gradient of the final BCE flowing through the stage-1
probability into stage 1. ``residual=True`` (``stage=enhance_residual``) adds the
enhancer's output to stage 1's logit instead of replacing it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nucleiseg.lightning.base import OptimizerFactory, SchedulerFactory, SegmentationModule
from nucleiseg.lightning.stage1 import stage1_logits
from nucleiseg.models.enhancer import enhance


class TwoStageModule(SegmentationModule):
    """Stage 1 + enhancement network; outputs ``stage1`` and ``two_stage`` logits."""

    outputs = ("stage1", "two_stage")

    def __init__(
        self,
        stage1: nn.Module,
        enhancer: nn.Module,
        optimizer: OptimizerFactory | None = None,
        stage1_loss_weight: float = 0.0,
        aux_weight: float = 0.0,
        enhancer_sees_image: bool = True,
        residual: bool = False,
        threshold: float = 0.5,
        postprocess: dict[str, Any] | None = None,
        scheduler: SchedulerFactory | None = None,
        channels: Sequence[str] = ("nucleus",),
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(
            optimizer=optimizer, threshold=threshold, postprocess=postprocess,
            scheduler=scheduler, channels=channels, loss_weights=loss_weights,
        )  # fmt: skip
        self.save_hyperparameters(ignore=["stage1", "enhancer", "optimizer", "scheduler"])
        self.stage1 = stage1
        self.enhancer = enhancer
        self.stage1_loss_weight = stage1_loss_weight
        self.aux_weight = aux_weight
        self.enhancer_sees_image = enhancer_sees_image
        self.residual = residual

    @property
    def parts(self) -> dict[str, nn.Module]:
        return {"stage1": self.stage1, "enhancer": self.enhancer}

    def compute_outputs(
        self, image: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if "stage1" in self.frozen_parts:
            with torch.no_grad():
                logits1 = self.stage1(image)
            extra = image.new_zeros(())
        else:
            # the stage-1 loss (auxiliary heads included) counts with stage1_loss_weight
            weight = self.aux_weight if self.stage1_loss_weight > 0 else 0.0
            logits1, extra = stage1_logits(self.stage1, image, target, weight)
            extra = self.stage1_loss_weight * extra
        refined = enhance(self.enhancer, image, logits1, self.enhancer_sees_image, self.residual)
        return {"stage1": logits1, "two_stage": refined}, extra

    def loss(
        self,
        logits: dict[str, torch.Tensor],
        target: torch.Tensor,
        instance_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        loss = self.output_loss(logits["two_stage"], target, instance_weight)
        if self.stage1_loss_weight > 0 and "stage1" not in self.frozen_parts:
            stage1 = self.output_loss(logits["stage1"], target, instance_weight)
            loss = loss + self.stage1_loss_weight * stage1
        return loss
