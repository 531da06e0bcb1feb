"""The in-memory (or memory-mapped) form every dataset source hands to the data module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class SplitSamples:
    """One split: RGB uint8 images (H, W, 3), int instance maps (H, W; 0 = background), names,
    and, where the dataset has them, per-pixel nucleus-type maps (H, W; 0 = background).

    ``images`` and ``instances`` may be lists or memory-mapped arrays: only indexing is used.
    ``types`` are kept with the samples for later use; nothing trains on them yet.
    ``true_instances`` is False where the instance maps are connected components of binary
    masks (TNBC): touching nuclei are merged there, so instance-aware targets (contours,
    distance maps) are not trained on them.
    """

    images: Sequence[np.ndarray]
    instances: Sequence[np.ndarray]
    names: list[str]
    types: Sequence[np.ndarray] | None = None
    true_instances: bool = True

    def __post_init__(self) -> None:
        if not len(self.images) == len(self.instances) == len(self.names):
            raise ValueError(
                f"split has {len(self.images)} images, {len(self.instances)} masks and "
                f"{len(self.names)} names; they must pair one to one"
            )
        if self.types is not None and len(self.types) != len(self.names):
            raise ValueError(
                f"split has {len(self.names)} images but {len(self.types)} type maps; "
                "they must pair one to one"
            )

    def __len__(self) -> int:
        return len(self.names)


def concatenated(
    parts: Sequence[SplitSamples], prefixes: Sequence[str] | None = None
) -> SplitSamples:
    """One split holding every sample of ``parts`` in order (names prefixed ``<prefix>/``
    where ``prefixes`` are given); it has true instances only where every part has them."""
    prefixes = prefixes or [""] * len(parts)
    has_types = all(p.types is not None for p in parts)
    return SplitSamples(
        images=[image for p in parts for image in p.images],
        instances=[inst for p in parts for inst in p.instances],
        names=[
            f"{pre}/{n}" if pre else n
            for p, pre in zip(parts, prefixes, strict=True)
            for n in p.names
        ],  # fmt: skip
        types=[t for p in parts for t in p.types] if has_types else None,
        true_instances=all(p.true_instances for p in parts),
    )
