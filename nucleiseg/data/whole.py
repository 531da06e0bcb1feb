"""Score a model on every image of a dataset: all of its splits served as the test split."""

from __future__ import annotations

from nucleiseg.data.samples import SplitSamples
from nucleiseg.data.splits import SPLITS


class WholeDataset:
    """Wraps a source so that ``split("test")`` holds every image it has."""

    def __init__(self, source) -> None:
        self.source = source

    def split(self, name: str) -> SplitSamples:
        parts = [self.source.split(s) for s in SPLITS]
        return SplitSamples(
            images=[im for p in parts for im in p.images],
            instances=[inst for p in parts for inst in p.instances],
            names=[n for p in parts for n in p.names],
            types=(
                [t for p in parts for t in p.types]
                if all(p.types is not None for p in parts)
                else None
            ),
            true_instances=all(p.true_instances for p in parts),
        )
