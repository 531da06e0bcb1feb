"""Stage 2 of the paper: the enhancement network.

Input is the RGB image concatenated channel-wise with the stage-1 probability map
(4 channels); three 3x3 convolutions of 64 filters, each followed by ReLU, at full
resolution (no downsampling); then a 1x1 convolution whose sigmoid is the refined
probability. At the paper's sizes it has 76,289 weights.

Like segmentation-models-pytorch models, ``forward`` returns logits; the sigmoid is applied
by the loss (``BCEWithLogits``, numerically stable) and by ``predict_proba``.

Beyond the paper, ``enhance(..., residual=True)`` adds the enhancer's output to stage 1's
logit (with ``zero_init_head=True`` it starts as stage 1 exactly: ``stage=enhance_residual``).
"""

from __future__ import annotations

import torch
from torch import nn


class EnhancementNet(nn.Module):
    """Refines a stage-1 probability map by re-reading the image."""

    def __init__(
        self,
        in_channels: int = 4,
        classes: int = 1,
        width: int = 64,
        depth: int = 3,
        zero_init_head: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"EnhancementNet depth must be >= 1, got {depth}")
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, classes, kernel_size=1)
        if zero_init_head:  # a residual enhancer starts as the identity on stage 1's logit
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"EnhancementNet expects {self.in_channels} input channels "
                f"(image + stage-1 probability), got {x.shape[1]}"
            )
        return self.head(self.features(x))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward(x))


def enhance(
    enhancer: nn.Module,
    image: torch.Tensor,
    stage1_logits: torch.Tensor,
    sees_image: bool = True,
    residual: bool = False,
) -> torch.Tensor:
    """The two-stage logit: the enhancer reads the image and stage 1's probability (or the
    probability alone); ``residual`` adds its output to stage 1's logit."""
    prob1 = torch.sigmoid(stage1_logits)
    refined = enhancer(torch.cat([image, prob1], dim=1) if sees_image else prob1)
    return stage1_logits + refined if residual else refined
