"""Resample image batches and logit maps between an input's pixel grid and a network's."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def scaled_size(size: tuple[int, int], factor: float) -> tuple[int, int]:
    """``size`` (h, w) times ``factor``, rounded, at least one pixel."""
    return max(1, round(size[0] * factor)), max(1, round(size[1] * factor))


def resample_batch(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) to (N, C, *size): bilinear, anti-aliased when it shrinks."""
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    shrinks = size[0] < batch.shape[-2] or size[1] < batch.shape[-1]
    # in float32: anti-aliased interpolation has no bf16 kernel on the CPU (autocast inference)
    out = F.interpolate(batch.float(), size=size, mode="bilinear", align_corners=False,
                        antialias=shrinks)  # fmt: skip
    return out.to(batch.dtype)
