"""Score a model on another split than the test split: every image of a dataset
(``WholeDataset``) or one other split (``SplitAsTest``), served as the test split."""

from __future__ import annotations

from nucleiseg.data.samples import SplitSamples, concatenated
from nucleiseg.data.splits import SPLITS


class WholeDataset:
    """Wraps a source so that ``split("test")`` holds every image it has."""

    def __init__(self, source) -> None:
        self.source = source

    def split(self, name: str) -> SplitSamples:
        return concatenated([self.source.split(s) for s in SPLITS])


class SplitAsTest:
    """Wraps a source so that ``split("test")`` holds its ``split`` (e.g. ``val``: a model
    chosen on another source's validation split, never on its test split)."""

    def __init__(self, source, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not a split; choose from {SPLITS} or all")
        self.source, self.served = source, split

    def split(self, name: str) -> SplitSamples:
        return self.source.split(self.served)
