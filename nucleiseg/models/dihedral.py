"""Test-time augmentation: a network's outputs averaged over the 8 dihedral views."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

Output = TypeVar("Output", torch.Tensor, dict[str, torch.Tensor])


def _each(output: Output, fn: Callable[[torch.Tensor], torch.Tensor]) -> Output:
    """``fn`` applied to a tensor, or to every tensor of a dict of them."""
    return {k: fn(v) for k, v in output.items()} if isinstance(output, dict) else fn(output)


def dihedral_tta(predict: Callable[[torch.Tensor], Output]) -> Callable[[torch.Tensor], Output]:
    """``predict`` averaged over the 8 dihedral views of its (N, C, H, W) input (4 rotations x
    optional flip), each output mapped back to the input's orientation. ``predict`` returns
    probabilities, one tensor or a dict of them (a two-stage model's outputs)."""

    def averaged(batch: torch.Tensor) -> Output:
        total = None
        for flip in (False, True):
            view = batch.flip(-1) if flip else batch
            for k in range(4):
                out = predict(torch.rot90(view, k, (-2, -1)))
                out = _each(out, lambda t, k=k: torch.rot90(t, -k, (-2, -1)))
                out = _each(out, lambda t: t.flip(-1)) if flip else out
                if total is None:
                    total = out
                elif isinstance(total, dict):
                    total = {name: total[name] + out[name] for name in total}
                else:
                    total = total + out
        return _each(total, lambda t: t / 8)

    return averaged
