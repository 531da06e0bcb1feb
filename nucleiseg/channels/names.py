"""The output channels a model may predict (``output_kind.channels``, conf/output_kind/), in
one place for the data (targets), the losses, TTA and post-processing.

``horizontal`` and ``vertical`` are HoVer-Net's offsets from each nucleus's centre of mass
(-1 .. 1); like every channel they are stored as a sigmoid's 0 .. 1, ``(offset + 1) / 2``
(0.5: a nucleus's centre and the background), so ONNX export, tiling and resampling treat
them as any other map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

CHANNELS = ("nucleus", "contour", "distance", "horizontal", "vertical")
OFFSET_CHANNELS = ("horizontal", "vertical")

Array = TypeVar("Array")  # a numpy array or a torch tensor: the arithmetic is the same


def check_channels(channels: Sequence[str]) -> tuple[str, ...]:
    """The channel names, checked: ``nucleus`` first, each known, none twice, ``horizontal``
    and ``vertical`` together."""
    channels = tuple(channels)
    unknown = [c for c in channels if c not in CHANNELS]
    paired = (OFFSET_CHANNELS[0] in channels) == (OFFSET_CHANNELS[1] in channels)
    if (
        unknown
        or not channels
        or channels[0] != "nucleus"
        or len(set(channels)) < len(channels)
        or not paired
    ):
        raise ValueError(
            f"output_kind.channels must start with 'nucleus' and name each of {CHANNELS} at most "
            f"once ('horizontal' and 'vertical' together); got {list(channels)}"
        )
    return channels


def offset_indices(channels: Sequence[str]) -> tuple[int, int] | None:
    """Where ``horizontal`` and ``vertical`` are among ``channels``; None without them."""
    channels = tuple(channels)
    if OFFSET_CHANNELS[0] not in channels:
        return None
    return channels.index(OFFSET_CHANNELS[0]), channels.index(OFFSET_CHANNELS[1])


def encode_offsets(offsets: Array) -> Array:
    """Offsets (-1 .. 1) as stored and predicted (0 .. 1)."""
    return (offsets + 1.0) / 2.0


def decode_offsets(stored: Array) -> Array:
    """Stored or predicted offset maps (0 .. 1) as offsets (-1 .. 1)."""
    return 2.0 * stored - 1.0


def negated_offsets(stored: Array) -> Array:
    """The stored form of the opposite offsets (a mirrored view's): ``1 - stored``."""
    return 1.0 - stored
