"""The training loss of a model's output channels (conf/output/): the paper's pixel-wise BCE
on the nucleus channel, and for instance-aware outputs a loss per extra channel (torch and
MONAI), counted only for samples whose source draws instances (``instance_weight`` 1)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

_DICE = DiceLoss(sigmoid=True, reduction="none")


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel-wise binary cross-entropy in the numerically stable logits form."""
    return F.binary_cross_entropy_with_logits(logits, target)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).mean(1)


def contour_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample BCE + soft Dice of a thin boundary channel (Dice keeps it from vanishing)."""
    pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return _per_sample(pixel) + _per_sample(_DICE(logits.float(), target.float()))


def distance_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error of the distance map's sigmoid (targets in 0..1)."""
    return _per_sample(F.mse_loss(torch.sigmoid(logits.float()), target, reduction="none"))


CHANNEL_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "contour": contour_loss,
    "distance": distance_loss,
}


def known_channels(channels: Sequence[str]) -> tuple[str, ...]:
    """The channels, checked against the losses this module has: ``nucleus`` first, then
    channels with a loss in ``CHANNEL_LOSSES``, none twice."""
    channels = tuple(channels)
    known = channels[:1] == ("nucleus",) and all(c in CHANNEL_LOSSES for c in channels[1:])
    if not known or len(set(channels)) < len(channels):
        raise ValueError(
            f"output_kind.channels must start with 'nucleus', followed by any of "
            f"{sorted(CHANNEL_LOSSES)} at most once; got {list(channels)}"
        )
    return channels


def output_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    channels: Sequence[str] = ("nucleus",),
    weights: Mapping[str, float] | None = None,
    instance_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCE of the nucleus channel plus each extra channel's weighted loss.

    ``target`` is (N, C, H, W) with the channels ``channels`` names (a binary model's is the
    nucleus mask alone); ``instance_weight`` (N,) masks the extra channels' loss per sample
    (0 for binary-only sources), averaged over the samples that count.
    """
    loss = bce(logits[:, :1], target[:, :1])
    if len(channels) == 1:
        return loss
    if target.shape[1] != len(channels) or logits.shape[1] != len(channels):
        raise ValueError(
            f"output channels {list(channels)} need logits and targets of {len(channels)} "
            f"channels, got {logits.shape[1]} and {target.shape[1]}: the data module must be "
            "built with the model's channels (dataset.datamodule.channels: ${model.channels})"
        )
    count = logits.new_ones(len(logits)) if instance_weight is None else instance_weight.float()
    for index, name in enumerate(channels[1:], start=1):
        per_sample = CHANNEL_LOSSES[name](
            logits[:, index : index + 1], target[:, index : index + 1]
        )
        weighted = (per_sample * count).sum() / count.sum().clamp_min(1.0)
        loss = loss + (weights or {}).get(name, 1.0) * weighted
    return loss
