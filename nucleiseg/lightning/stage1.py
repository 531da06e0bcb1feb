"""Stage 1 alone: an encoder-decoder trained with pixel-wise BCE (phase 1, the plain row)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nucleiseg.lightning.base import OptimizerFactory, SchedulerFactory, SegmentationModule
from nucleiseg.lightning.output_losses import bce


def stage1_logits(
    stage1: nn.Module, image: torch.Tensor, target: torch.Tensor | None, aux_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a backbone; where it has auxiliary heads and a target, supervise them too.

    One mechanism for Micro-Net's auxiliary outputs and U-Net++'s deep supervision: the
    stage-1 loss is a weighted mean of head BCEs, the main head with weight 1 and the
    auxiliary heads sharing ``aux_weight``. Returned as the extra term to add to the main
    head's BCE: ``(bce_main + w * mean(bce_aux)) / (1 + w) - bce_main``. With ``w`` equal to
    the number of auxiliary heads (U-Net++: 3) it is the plain mean over all heads.
    """
    forward_with_aux = getattr(stage1, "forward_with_aux", None)
    if forward_with_aux is None or target is None or aux_weight == 0:
        return stage1(image), image.new_zeros(())
    logits, aux = forward_with_aux(image)
    nucleus = target[:, :1]  # auxiliary heads supervise the nucleus channel
    main = bce(logits[:, :1], nucleus)
    aux_mean = torch.stack([bce(a[:, :1], nucleus) for a in aux]).mean()
    return logits, (main + aux_weight * aux_mean) / (1 + aux_weight) - main


class Stage1Module(SegmentationModule):
    """Wraps any smp-style backbone (``(N, 3, H, W) -> (N, 1, H, W)`` logits)."""

    outputs = ("stage1",)

    def __init__(
        self,
        stage1: nn.Module,
        optimizer: OptimizerFactory | None = None,
        aux_weight: float = 0.0,
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
        self.save_hyperparameters(ignore=["stage1", "optimizer", "scheduler"])
        self.stage1 = stage1
        self.aux_weight = aux_weight

    @property
    def parts(self) -> dict[str, nn.Module]:
        return {"stage1": self.stage1}

    def compute_outputs(
        self, image: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        logits, aux_loss = stage1_logits(self.stage1, image, target, self.aux_weight)
        return {"stage1": logits}, aux_loss
