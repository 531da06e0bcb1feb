"""Training on several sources at once (``dataset=mix``): one model for slides of many labs.

Each member of the mix is the ``NucleiDataModule`` of an existing dataset config (``tnbc``,
``consep``, ``folder``, ...), so it keeps its own split, its own µm per pixel (resampled to
the model's on load) and its own augmentation. The mix draws training batches from all
members with sampling weights (torch's ``WeightedRandomSampler``: a source of weight 2 is
drawn twice as often per image as one of weight 1, whatever its size) and gives every
member its own validation and test loader, in member order, so the modules log metrics
per source and a pooled validation loss weighted as the sources are sampled
(``SegmentationModule.configure_sources``). Training crops must share one size across
members (each member's ``crop_size``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, WeightedRandomSampler

from nucleiseg.channels.names import check_channels
from nucleiseg.data.datamodule import NucleiDataModule, NucleiDataset, seed_training_worker
from nucleiseg.data.io import DatasetError
from nucleiseg.data.samples import SplitSamples, concatenated
from nucleiseg.data.splits import SPLITS

log = logging.getLogger(__name__)


def is_mix(dataset_cfg: Mapping) -> bool:
    """Whether a dataset config is a mix of sources (``dataset=mix``) rather than one dataset."""
    return "sources" in dataset_cfg


def source_datamodule(name: str, source: Any) -> NucleiDataModule:
    """The datamodule of source ``name``: a dataset config's instantiated ``datamodule``
    (``dataset.sources.<name>``), or a datamodule itself."""
    datamodule = source.get("datamodule") if isinstance(source, Mapping) else source
    if not isinstance(datamodule, NucleiDataModule):
        raise DatasetError(
            f"dataset.sources.{name} is not a dataset (no datamodule of type "
            f"NucleiDataModule, got {type(datamodule).__name__}); add one as "
            f"+dataset@dataset.sources.{name}=<tnbc|consep|folder|...>"
        )
    return datamodule


class MixedTrainingSet(ConcatDataset):
    """The members' training datasets end to end; ``transforms`` lists each member's
    augmentation, so ``seed_training_worker`` seeds every one of them in a worker."""

    @property
    def transforms(self) -> list[Any]:
        return [d.transform for d in self.datasets]


class OffsetIndex(Dataset):
    """A member's evaluation split whose ``index`` counts in the mix's order (member after
    member), so per-image scores of the pooled test split do not collide."""

    def __init__(self, dataset: NucleiDataset, offset: int) -> None:
        self.dataset, self.offset = dataset, offset
        self.samples = dataset.samples

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        item["index"] = item["index"] + self.offset
        return item


class MixedEvaluationSet(ConcatDataset):
    """Every member's evaluation split in order, with the mix's samples (for figures)."""

    def __init__(self, datasets: Sequence[Dataset], samples: SplitSamples) -> None:
        super().__init__(datasets)
        self.samples = samples


class MixedNucleiDataModule(L.LightningDataModule):
    """Batches several sources: weighted training draws, a validation and a test loader per
    source (``source_weights`` names them, in loader order).

    ``sources``: source name -> its dataset config with the ``datamodule`` instantiated
    (``dataset.sources``, each an existing dataset config) or the datamodule itself;
    ``weights``: source name -> sampling weight (1 for a source it leaves out);
    ``split_dir``: where each member writes its ``split_<name>.csv`` (None: nowhere);
    ``channels``: the model's output channels, given to every member; ``stain_transform``
    (``+augmentation=...``) is added to every member's training augmentation.
    """

    def __init__(
        self,
        sources: Mapping[str, Any],
        weights: Mapping[str, float] | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        split_dir: str | None = None,
        channels: Sequence[str] | None = None,
        stain_transform: A.BasicTransform | None = None,
    ) -> None:
        super().__init__()
        members = {name: source_datamodule(name, s) for name, s in (sources or {}).items()}
        if not members:
            raise DatasetError("dataset.sources is empty: name at least one source of the mix")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(members))
        if unknown:
            raise DatasetError(
                f"dataset.weights names {unknown}, which are not sources of the mix "
                f"(dataset.sources: {sorted(members)})"
            )
        self.members = dict(members)
        self.weights = {name: float(weights.get(name, 1.0)) for name in self.members}
        for name, weight in self.weights.items():
            if not weight > 0:
                raise DatasetError(f"dataset.weights.{name} must be > 0, got {weight}")
        crops = {name: m.crop_size for name, m in self.members.items()}
        if any(c is None for c in crops.values()) or len(set(crops.values())) > 1:
            raise DatasetError(
                f"the sources of a mix train on crops of one size, but their crop sizes are "
                f"{crops}: set dataset.sources.<name>.datamodule.crop_size to one value for all"
            )
        for name, member in self.members.items():
            if channels is not None:
                member.channels = check_channels(channels)
            if stain_transform is not None:  # after the source's own augmentation, as there
                member.add_train_transform(copy.deepcopy(stain_transform))
            member.split_output = str(Path(split_dir) / f"split_{name}.csv") if split_dir else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_generator = torch.Generator()  # as NucleiDataModule's: checkpointed
        self.train_generator.manual_seed(torch.initial_seed())
        self.samples: dict[str, SplitSamples] = {}

    @property
    def source_weights(self) -> dict[str, float]:
        """Sampling weight of each source, summing to 1, in loader order."""
        total = sum(self.weights.values())
        return {name: weight / total for name, weight in self.weights.items()}

    def setup(self, stage: str | None = None) -> None:
        for member in self.members.values():
            member.trainer = self.trainer  # split files written by rank zero only
            member.setup(stage)
        self._combine()

    def _combine(self) -> None:
        names = list(self.members)
        for split in SPLITS:
            if all(split in m.samples for m in self.members.values()):
                parts = [self.members[n].samples[split] for n in names]
                self.samples[split] = concatenated(parts, names)

    def set_stain_normalizer(self, normalize: Callable[[np.ndarray], np.ndarray] | None) -> None:
        for member in self.members.values():
            member.set_stain_normalizer(normalize)
        self._combine()

    def _eval_sets(self, split: str) -> list[OffsetIndex]:
        sets, offset = [], 0
        for member in self.members.values():
            dataset = member.dataset(split)
            sets.append(OffsetIndex(dataset, offset))
            offset += len(dataset)
        return sets

    def dataset(self, split: str) -> Dataset:
        """A split of every source in order (training: the members' augmented datasets).
        Sets the sources up first where nothing has (a resumed run's reused phases)."""
        if split not in self.samples:
            self.setup()
        if split == "train":
            return MixedTrainingSet([m.dataset("train") for m in self.members.values()])
        sets = self._eval_sets(split)
        return MixedEvaluationSet(sets, self.samples[split])

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        # each source's share of the draws is its weight, spread evenly over its images
        per_sample = torch.cat([
            torch.full((len(d),), weight / len(d))
            for d, weight in zip(dataset.datasets, self.source_weights.values(), strict=True)
        ])  # fmt: skip
        sampler = WeightedRandomSampler(
            per_sample, num_samples=len(dataset), replacement=True, generator=self.train_generator
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            worker_init_fn=seed_training_worker if self.num_workers > 0 else None,
            generator=self.train_generator,
            pin_memory=self.pin_memory,
        )

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        return [
            member._loader(split, False, dataset)
            for member, dataset in zip(self.members.values(), self._eval_sets(split), strict=True)
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def state_dict(self) -> dict[str, Any]:
        """Every member's augmentation random states and the mix's sampling generator."""
        return {
            "train_generator": self.train_generator.get_state(),
            "members": {name: m.state_dict() for name, m in self.members.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("members", {})
        if set(saved) != set(self.members):
            raise ValueError(
                f"the checkpoint was written by a mix of {sorted(saved)}, this run mixes "
                f"{sorted(self.members)}; resume with the sources the run was started with"
            )
        for name, member in self.members.items():
            member.load_state_dict(saved[name])
        self.train_generator.set_state(state_dict["train_generator"])
