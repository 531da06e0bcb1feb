"""Shape adapters so that every backbone accepts any height and width.

Encoder-decoders with ``k`` pooling steps need sides divisible by ``2**k``; the wrapper
reflect-pads the input up to the next multiple and crops the logits back to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pad_image(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflect-pad ``x`` (N, C, H, W); fall back to replicate where reflection is too short."""
    if max(left, right) < x.shape[-1] and max(top, bottom) < x.shape[-2]:
        return F.pad(x, (left, right, top, bottom), mode="reflect")
    return F.pad(x, (left, right, top, bottom), mode="replicate")


class PadToMultiple(nn.Module):
    """Wraps a segmentation model that needs sides divisible by ``multiple``."""

    def __init__(self, model: nn.Module, multiple: int = 32) -> None:
        super().__init__()
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple}")
        self.model = model
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h = (-h) % self.multiple
        pad_w = (-w) % self.multiple
        if pad_h == 0 and pad_w == 0:
            return self.model(x)
        top, left = pad_h // 2, pad_w // 2
        padded = pad_image(x, left, pad_w - left, top, pad_h - top)
        out = self.model(padded)
        return out[..., top : top + h, left : left + w]
