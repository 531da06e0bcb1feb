"""The paper's U-Net and U-Net++, from MONAI, behind the smp-style stage-1 constructor.

- ``ClassicUNet``: Ronneberger et al. 2015 (four 2x down-samplings, two 3x3 convolutions
  per block, 64 -> 1024 channels, transposed-convolution up-sampling, skip concatenation),
  MONAI's ``BasicUNet`` with BatchNorm and ReLU after every convolution.
- ``UNetPlusPlus``: Zhou et al. 2018 (nested dense skip pathways, the same block family,
  32 -> 512 channels, deep supervision: a 1x1 head on every top-level node), MONAI's
  ``BasicUNetPlusPlus(deep_supervision=True)``.

One deviation from both papers, MONAI's: the top-level transposed convolution keeps its
input width (128 -> 128 for the U-Net, 64 -> 64 for U-Net++) instead of halving it, so the
top blocks read 64 + 128 (resp. j x 32 + 64) channels. Every level's width is the papers';
the weights grow by 0.2 % for the U-Net (31,113,217 instead of 31,043,521 with BatchNorm)
and 0.8 % for U-Net++ (9,119,332 instead of 9,049,572). Writing our own networks for that
was not worth a second implementation to maintain.
Both take any input size: the input is reflect-padded to a multiple of 16 and the logits
cropped back.
"""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNet, BasicUNetPlusPlus
from torch import nn

from nucleiseg.models.padding import PadToMultiple

LEVELS = 4  # 2x down-samplings: inputs are padded to a multiple of 2**4
MULTIPLE = 2**LEVELS
BLOCK = {"act": "relu", "norm": "batch", "upsample": "deconv", "dropout": 0.0}


def widths(base_channels: int) -> tuple[int, ...]:
    """Channels per level (base, 2x, 4x, 8x, 16x) and of the top decoder block."""
    if base_channels < 1:
        raise ValueError(f"base_channels must be >= 1, got {base_channels}")
    return (*(base_channels * 2**k for k in range(LEVELS + 1)), base_channels)


class ClassicUNet(nn.Module):
    """Ronneberger's U-Net (MONAI ``BasicUNet``); ``base_channels`` 64 is the paper's width."""

    def __init__(self, in_channels: int = 3, classes: int = 1, base_channels: int = 64) -> None:
        super().__init__()
        net = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=classes,
                        features=widths(base_channels), **BLOCK)  # fmt: skip
        self.net = PadToMultiple(net, MULTIPLE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Heads(nn.Module):
    """MONAI's U-Net++ returning all four deep-supervision heads, stacked on dim 0."""

    def __init__(self, net: BasicUNetPlusPlus) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.net(x))  # (heads, N, C, H, W): one tensor through the padding


class UNetPlusPlus(nn.Module):
    """Zhou's U-Net++ with deep supervision (MONAI ``BasicUNetPlusPlus``).

    ``forward`` returns the logits of the head used at inference: the last one
    (``inference_head="last"``, default) or the mean of the four (``"mean"``).
    ``forward_with_aux`` returns the last head and the three earlier ones, which the stage-1
    loss supervises (``backbone.aux_weight: 3`` makes it the plain mean over the four heads).
    """

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 1,
        base_channels: int = 32,
        inference_head: str = "last",
    ) -> None:
        super().__init__()
        if inference_head not in ("last", "mean"):
            raise ValueError(f"inference_head must be 'last' or 'mean', got '{inference_head}'")
        self.inference_head = inference_head
        net = BasicUNetPlusPlus(spatial_dims=2, in_channels=in_channels, out_channels=classes,
                                features=widths(base_channels), deep_supervision=True,
                                **BLOCK)  # fmt: skip
        self.net = PadToMultiple(_Heads(net), MULTIPLE)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the four top-level heads, (4, N, classes, H, W), first to last."""
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = self.heads(x)
        return heads[-1] if self.inference_head == "last" else heads.mean(dim=0)

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        heads = self.heads(x)
        return heads[-1], list(heads[:-1])
