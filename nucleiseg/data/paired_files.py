"""A source of image/mask file pairs: split assignment, validation and decoding cache.

Shared by the TNBC and folder datasets. Every file is decoded and checked once, when its
split is first asked for (so a bad file stops the run before any training); decoded arrays
are kept in memory when ``cache`` is on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nucleiseg.data.io import (
    DatasetError,
    check_pair,
    is_binary,
    read_array,
    to_instances,
    to_rgb,
    to_type_map,
)
from nucleiseg.data.samples import SplitSamples
from nucleiseg.data.splits import SPLITS, assign_splits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    name: str
    image: Path
    mask: Path
    group: str
    types: Path | None = None  # a per-pixel nucleus-type map, where the dataset has one


class LazyPairs(Sequence):
    """Decodes pair ``i`` on access (used when ``cache`` is off)."""

    def __init__(self, pairs: list[Pair], part: str, load) -> None:
        self.pairs, self.part, self.load = pairs, part, load

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.load(self.pairs[index])[("image", "instances", "types").index(self.part)]


class PairedFilesSource:
    """Image/mask pairs split into train/val/test by item or by group, or from a split file."""

    def __init__(
        self,
        pairs: list[Pair],
        split_sizes: Sequence[int],
        seed: int = 0,
        split_by: str = "image",
        split_file: str | None = None,
        mask_kind: str = "auto",
        cache: bool = True,
        warn_color: bool = True,
    ) -> None:
        if split_by not in ("image", "group", "slide"):
            raise DatasetError(f"unknown split_by '{split_by}'; use image or slide (group)")
        if not pairs:
            raise DatasetError("no image/mask pairs found")
        self.pairs = pairs
        self.split_sizes = list(split_sizes)
        self.seed = seed
        self.split_by = split_by
        self.split_file = split_file
        self.mask_kind = mask_kind
        self.cache = cache
        self.warn_color = warn_color
        self._assignment: dict[str, str] | None = None

    def assignment(self) -> dict[str, str]:
        """Split of every item name (computed once, deterministic from the seed)."""
        if self._assignment is None:
            self._assignment = assign_splits(
                [p.name for p in self.pairs], [p.group for p in self.pairs], self.split_sizes,
                self.seed, by_group=self.split_by != "image", split_file=self.split_file,
            )  # fmt: skip
        return self._assignment

    def load_pair(self, pair: Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Image, instance map and (where the pair has one) type map, checked."""
        image = to_rgb(read_array(pair.image), pair.image, warn=self.warn_color)
        instances = to_instances(read_array(pair.mask), pair.mask, self.mask_kind)
        check_pair(image, instances, pair.image, pair.mask)
        types = None
        if pair.types is not None:
            types = to_type_map(read_array(pair.types), pair.types)
            check_pair(image, types, pair.image, pair.types)
        return image, instances, types

    def true_instances(self, pair: Pair) -> bool:
        """Whether the masks draw each nucleus (instance maps), not only nuclear pixels: binary
        masks (``mask_kind: binary``, or ``auto`` on a binary first mask) do not."""
        if self.mask_kind != "auto":
            return self.mask_kind == "instance"
        return not is_binary(read_array(pair.mask))

    def split(self, name: str) -> SplitSamples:
        if name not in SPLITS:
            raise KeyError(f"unknown split '{name}'; expected one of {SPLITS}")
        assignment = self.assignment()
        pairs = [p for p in self.pairs if assignment[p.name] == name]
        if not pairs:
            raise DatasetError(
                f"the {name} split is empty ({len(self.pairs)} items in all); "
                "check split_sizes or the split file"
            )
        with_types = all(p.types is not None for p in pairs)
        images, instances, types = [], [], []
        progress = tqdm(pairs, desc=f"checking {name} split", disable=len(pairs) < 100)
        for pair in progress:  # decode everything once: bad files fail before training
            image, inst, type_map = self.load_pair(pair)
            if self.cache:
                images.append(image)
                instances.append(inst)
                types.append(type_map)
        if not self.cache:
            images, instances, types = (
                LazyPairs(pairs, part, self.load_pair) for part in ("image", "instances", "types")
            )
        return SplitSamples(
            images=images, instances=instances, names=[p.name for p in pairs],
            types=types if with_types else None, true_instances=self.true_instances(pairs[0]),
        )  # fmt: skip
