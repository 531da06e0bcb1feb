"""Lizard (Graham et al., ICCV Workshops 2021) in its CoNIC challenge release.

``images.npy`` (N, 256, 256, 3) uint8, ``labels.npy`` (N, 256, 256, 2) with the instance map
in channel 0 and the class map in channel 1, and optionally ``patch_info.csv`` (one row per
patch, its name first). Arrays are memory-mapped, never loaded whole; all nucleus classes
are pooled into one foreground class. The paper's split is 3842/499/640 patches of 4981;
``split_by: source`` keeps all patches of one source image (name before the last ``-``)
in one split.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nucleiseg.data.io import DatasetError
from nucleiseg.data.samples import SplitSamples
from nucleiseg.data.splits import SPLITS, assign_splits

CONIC_HINT = (
    "expected the CoNIC release of Lizard (images.npy, labels.npy); see "
    "python -m nucleiseg.data.download lizard"
)


class ArrayView(Sequence):
    """Rows ``indices`` of a memory-mapped array, optionally one channel: read on access."""

    def __init__(self, array: np.ndarray, indices: np.ndarray, channel: int | None = None) -> None:
        self.array, self.indices, self.channel = array, indices, channel

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> np.ndarray:
        row = self.array[self.indices[index]]
        return np.asarray(row if self.channel is None else row[..., self.channel])


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"Lizard file '{path}' does not exist; {CONIC_HINT}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read '{path}' as a .npy array ({err}); re-download it") from err


def _patch_names(root: Path, count: int) -> list[str]:
    info = root / "patch_info.csv"
    if not info.is_file():
        return [f"patch_{i:05d}" for i in range(count)]
    with info.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if rows and len(rows) == count + 1:
        rows = rows[1:]  # header
    if len(rows) != count:
        raise DatasetError(
            f"'{info}' lists {len(rows)} patches but images.npy holds {count}; they must match"
        )
    return [row[0] for row in rows]


class LizardDataset:
    """The CoNIC release of Lizard as a source of train/val/test splits (memory-mapped)."""

    def __init__(
        self,
        root: str,
        split_sizes: Sequence[int] = (3842, 499, 640),
        split_by: str = "image",
        seed: int = 0,
        split_file: str | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"Lizard root '{self.root}' does not exist; {CONIC_HINT}")
        if split_by not in ("image", "source"):
            raise DatasetError(f"unknown split_by '{split_by}'; use image or source")
        self.images = _load_npy(self.root / "images.npy")
        self.labels = _load_npy(self.root / "labels.npy")
        self._check_arrays()
        self.names = _patch_names(self.root, len(self.images))
        self.split_sizes, self.split_by, self.seed = list(split_sizes), split_by, seed
        self.split_file = split_file
        self._assignment: dict[str, str] | None = None

    def _check_arrays(self) -> None:
        images, labels = self.images, self.labels
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise DatasetError(
                f"'{self.root / 'images.npy'}' has shape {images.shape} and dtype {images.dtype};"
                " expected (N, H, W, 3) uint8"
            )
        if labels.ndim != 4 or labels.shape[3] != 2 or labels.shape[:3] != images.shape[:3]:
            raise DatasetError(
                f"'{self.root / 'labels.npy'}' has shape {labels.shape}; expected "
                f"{(*images.shape[:3], 2)} (instance map, class map) to match images.npy"
            )
        if len(images) < 3:
            raise DatasetError(f"'{self.root / 'images.npy'}' holds {len(images)} patches; need 3+")

    def assignment(self) -> dict[str, str]:
        if self._assignment is None:
            groups = [n.rsplit("-", 1)[0] for n in self.names]  # source image of each patch
            self._assignment = assign_splits(
                self.names, groups, self.split_sizes, self.seed,
                by_group=self.split_by == "source", split_file=self.split_file,
            )  # fmt: skip
        return self._assignment

    def split(self, name: str) -> SplitSamples:
        if name not in SPLITS:
            raise KeyError(f"unknown split '{name}'; expected one of {SPLITS}")
        assignment = self.assignment()
        indices = np.array([i for i, n in enumerate(self.names) if assignment[n] == name])
        if len(indices) == 0:
            raise DatasetError(f"the Lizard {name} split is empty; check split_sizes")
        return SplitSamples(
            images=ArrayView(self.images, indices),
            instances=ArrayView(self.labels, indices, channel=0),
            names=[self.names[i] for i in indices],
            types=ArrayView(self.labels, indices, channel=1),  # CoNIC's class map
        )
