"""Test-time augmentation: a network's outputs averaged over the 8 dihedral views.

Scalar maps (nucleus, contour, distance) are only turned back; offset maps (``horizontal``
and ``vertical``: a vector at each pixel, stored as ``(offset + 1) / 2``) are turned back
and their vectors rotated and mirrored with them, so every view's offsets point the same
way before they are averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from nucleiseg.channels.names import negated_offsets, offset_indices

Output = TypeVar("Output", torch.Tensor, dict[str, torch.Tensor])


def _each(output: Output, fn: Callable[[torch.Tensor], torch.Tensor]) -> Output:
    """``fn`` applied to a tensor, or to every tensor of a dict of them."""
    return {k: fn(v) for k, v in output.items()} if isinstance(output, dict) else fn(output)


def _offsets_back(
    maps: torch.Tensor, turns: int, flipped: bool, horizontal: int, vertical: int
) -> torch.Tensor:
    """The offsets a view predicted, in the input's frame: the view was the input mirrored
    (``flipped``) then turned ``turns`` quarter turns by ``torch.rot90`` over (H, W).

    One such turn moves the offset (dy, dx) to (-dx, dy); so a view's (h, v) is the input's
    (v, -h) after one turn, and mirroring negates h."""
    h, v = maps[:, horizontal], maps[:, vertical]
    for _ in range(turns % 4):  # undo one turn: input (h, v) = (-v', h')
        h, v = negated_offsets(v), h
    if flipped:
        h = negated_offsets(h)
    maps = maps.clone()
    maps[:, horizontal], maps[:, vertical] = h, v
    return maps


def dihedral_tta(
    predict: Callable[[torch.Tensor], Output], channels: Sequence[str] = ("nucleus",)
) -> Callable[[torch.Tensor], Output]:
    """``predict`` averaged over the 8 dihedral views of its (N, C, H, W) input (4 rotations x
    optional flip), each output mapped back to the input's orientation. ``predict`` returns
    probabilities of ``channels`` (the model's output channels), one tensor or a dict of them
    (a two-stage model's outputs)."""
    channels = tuple(channels)
    offsets = offset_indices(channels)

    def back(t: torch.Tensor, turns: int, flipped: bool) -> torch.Tensor:
        t = torch.rot90(t, -turns, (-2, -1))
        t = t.flip(-1) if flipped else t
        return _offsets_back(t, turns, flipped, *offsets) if offsets else t

    def averaged(batch: torch.Tensor) -> Output:
        total = None
        for flip in (False, True):
            view = batch.flip(-1) if flip else batch
            for k in range(4):
                out = predict(torch.rot90(view, k, (-2, -1)))
                out = _each(out, lambda t, k=k, flip=flip: back(t, k, flip))
                if total is None:
                    total = out
                elif isinstance(total, dict):
                    total = {name: total[name] + out[name] for name in total}
                else:
                    total = total + out
        return _each(total, lambda t: t / 8)

    return averaged
