"""The training loss of a model's output channels (conf/output_kind/): the paper's pixel-wise
BCE on the nucleus channel (optionally plus MONAI's soft Dice, ``loss_weights.nucleus_dice``),
and for instance-aware outputs a loss per extra channel (torch and MONAI), counted only for
samples whose source draws instances (``instance_weight`` 1). The contour channel's BCE can
weigh the pixels where two nuclei touch more (``loss_weights.touching``), as the U-Net
paper's weight map weighs the gaps between touching cells."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.transforms import SobelGradients

from nucleiseg.channels.names import check_channels, decode_offsets

_DICE = DiceLoss(sigmoid=True, reduction="none")
# the nucleus channel's Dice over the whole batch: a crop without nuclei has no Dice of its own
_BATCH_DICE = DiceLoss(sigmoid=True, batch=True)
#: ``loss_weights`` key of the soft Dice added to the nucleus channel's BCE (0 or absent: the
#: paper's BCE alone)
NUCLEUS_DICE = "nucleus_dice"
#: ``loss_weights`` key of the extra weight of the contour pixels where two nuclei touch
#: (their BCE counts ``1 + touching`` times; 0 or absent: every pixel alike)
TOUCHING = "touching"
# HoVer-Net's gradient term: each offset map's derivative along its own axis (MONAI's Sobel,
# as in monai.apps.pathology.losses.HoVerNetLoss)
_SOBEL = {
    "horizontal": SobelGradients(kernel_size=5, spatial_axes=1),
    "vertical": SobelGradients(kernel_size=5, spatial_axes=0),
}
HOVER_MSE_WEIGHT = 2.0  # HoVerNetLoss's lambda_hv_mse (its gradient term: 1)


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel-wise binary cross-entropy in the numerically stable logits form."""
    return F.binary_cross_entropy_with_logits(logits, target)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).mean(1)


def touching_contour(contour: torch.Tensor, nucleus: torch.Tensor) -> torch.Tensor:
    """1 on the contour pixels where two nuclei touch, 0 elsewhere ((N, 1, H, W) targets).

    A contour pixel at a nucleus's free edge has background beside it; where two nuclei
    touch, every pixel around it (3 x 3, within the image) is nuclear."""
    all_nuclear = -F.max_pool2d(-nucleus.float(), kernel_size=3, stride=1, padding=1)
    return contour.float() * (all_nuclear > 0.5).float()


def contour_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    nucleus: torch.Tensor | None = None,
    touching_weight: float = 0.0,
) -> torch.Tensor:
    """Per-sample BCE + soft Dice of a thin boundary channel (Dice keeps it from vanishing);
    with ``touching_weight`` and ``nucleus`` (the nucleus target), the BCE of the contour
    pixels where two nuclei touch counts ``1 + touching_weight`` times."""
    pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if touching_weight and nucleus is not None:
        pixel = pixel * (1.0 + touching_weight * touching_contour(target, nucleus))
    return _per_sample(pixel) + _per_sample(_DICE(logits.float(), target.float()))


def distance_loss(
    logits: torch.Tensor, target: torch.Tensor, nucleus: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample mean squared error of the distance map's sigmoid (targets in 0..1)."""
    return _per_sample(F.mse_loss(torch.sigmoid(logits.float()), target, reduction="none"))


def offset_loss(axis: str) -> Callable[..., torch.Tensor]:
    """HoVer-Net's loss of one offset map (``axis``: horizontal or vertical), per sample: the
    mean squared error of the offsets (-1 .. 1, decoded from the sigmoid's 0 .. 1) times 2,
    plus the mean squared error of their derivative along that axis over the nuclear pixels
    (``nucleus``: the nucleus target), which makes the jump between touching nuclei sharp."""
    sobel = _SOBEL[axis]

    def loss(logits: torch.Tensor, target: torch.Tensor, nucleus: torch.Tensor) -> torch.Tensor:
        predicted = decode_offsets(torch.sigmoid(logits.float()))
        true = decode_offsets(target.float())
        mse = _per_sample((predicted - true) ** 2)
        gradient = sobel(predicted[:, 0]).as_tensor() - sobel(true[:, 0]).as_tensor()
        focus = nucleus[:, 0].float()
        msge = (focus * gradient**2).flatten(1).sum(1) / (focus.flatten(1).sum(1) + 1e-8)
        return HOVER_MSE_WEIGHT * mse + msge

    return loss


CHANNEL_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "contour": contour_loss,
    "distance": distance_loss,
    "horizontal": offset_loss("horizontal"),
    "vertical": offset_loss("vertical"),
}


def check_loss_weights(
    channels: Sequence[str], weights: Mapping[str, float] | None
) -> dict[str, float]:
    """``weights`` as a dict, each key an extra channel of ``channels``, ``nucleus_dice`` or
    (with a contour channel) ``touching``, each value a number >= 0."""
    weights = dict(weights or {})
    allowed = [*channels[1:], NUCLEUS_DICE, *([TOUCHING] if "contour" in channels else [])]
    unknown = [key for key in weights if key not in allowed]
    if unknown:
        raise ValueError(f"output_kind.loss_weights {unknown} name no loss of the channels "
                         f"{list(channels)}: use one of {allowed}")  # fmt: skip
    negative = {key: value for key, value in weights.items() if float(value) < 0}
    if negative:
        raise ValueError(f"output_kind.loss_weights {negative} must be >= 0")
    return {key: float(value) for key, value in weights.items()}


def known_channels(channels: Sequence[str]) -> tuple[str, ...]:
    """The channels, checked (:func:`~nucleiseg.channels.names.check_channels`), each after
    ``nucleus`` with a loss in ``CHANNEL_LOSSES``."""
    channels = check_channels(channels)
    missing = [c for c in channels[1:] if c not in CHANNEL_LOSSES]
    if missing:
        raise ValueError(f"output_kind.channels {missing} have no training loss: add one to "
                         "nucleiseg/lightning/output_losses.py CHANNEL_LOSSES")  # fmt: skip
    return channels


def output_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    channels: Sequence[str] = ("nucleus",),
    weights: Mapping[str, float] | None = None,
    instance_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCE of the nucleus channel (plus its soft Dice, weighted by ``weights["nucleus_dice"]``)
    plus each extra channel's weighted loss.

    ``target`` is (N, C, H, W) with the channels ``channels`` names (a binary model's is the
    nucleus mask alone); ``instance_weight`` (N,) masks the extra channels' loss per sample
    (0 for binary-only sources), averaged over the samples that count.
    """
    loss = bce(logits[:, :1], target[:, :1])
    dice_weight = (weights or {}).get(NUCLEUS_DICE, 0.0)
    if dice_weight:
        loss = loss + dice_weight * _BATCH_DICE(logits[:, :1].float(), target[:, :1].float())
    if len(channels) == 1:
        return loss
    if target.shape[1] != len(channels) or logits.shape[1] != len(channels):
        raise ValueError(
            f"output channels {list(channels)} need logits and targets of {len(channels)} "
            f"channels, got {logits.shape[1]} and {target.shape[1]}: the data module must be "
            "built with the model's channels (dataset.datamodule.channels: ${model.channels})"
        )
    count = logits.new_ones(len(logits)) if instance_weight is None else instance_weight.float()
    touching = (weights or {}).get(TOUCHING, 0.0)
    for index, name in enumerate(channels[1:], start=1):
        channel_loss = CHANNEL_LOSSES[name]
        if name == "contour" and touching:
            channel_loss = partial(contour_loss, touching_weight=touching)
        per_sample = channel_loss(
            logits[:, index : index + 1], target[:, index : index + 1], target[:, :1]
        )
        weighted = (per_sample * count).sum() / count.sum().clamp_min(1.0)
        loss = loss + (weights or {}).get(name, 1.0) * weighted
    return loss
