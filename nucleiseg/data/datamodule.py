"""The LightningDataModule shared by every dataset: a source gives splits, this batches them.

A *source* is any object with ``split(name) -> SplitSamples`` for ``train``, ``val`` and
``test`` (see ``nucleiseg.data.synthetic.SyntheticNuclei``). Augmentation is an
albumentations pipeline from the config, applied to the training split only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import albumentations as A
import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, get_worker_info

from nucleiseg.channels.names import check_channels
from nucleiseg.data.instance_targets import checked_contour_width, instance_targets
from nucleiseg.data.io import DatasetError
from nucleiseg.data.resolution import resample_factor, resample_split
from nucleiseg.data.samples import SplitSamples
from nucleiseg.data.splits import SPLITS, write_split_file
from nucleiseg.data.stain_normalization import NormalizedImages

log = logging.getLogger(__name__)
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


def random_transforms(transform: Any) -> list[Any]:
    """An albumentations pipeline and every transform in it that owns random generators
    (each transform keeps its own, so all of them are saved and restored)."""
    found = [transform] if hasattr(transform, "py_random") else []
    for child in getattr(transform, "transforms", None) or []:
        found += random_transforms(child)
    return found


def seed_training_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the training loader: seed a DataLoader worker's copy of the
    augmentation from (the loader's base seed, worker, DDP rank).

    albumentations keeps its own generators, which neither ``seed_everything(workers=True)``
    nor torch reseeds in a worker, so every worker (and every rank) would otherwise draw
    the same stream. The base seed is drawn from the training loader's generator
    (``NucleiDataModule.train_generator``) each time an epoch's workers start (they are not
    persistent), so every epoch draws anew, and a resumed run, whose generator state the
    checkpoint restores, draws what the uninterrupted run drew.
    """
    rank = rank_zero_only.rank  # inherited from the rank process that started this worker
    pl_worker_init_function(worker_id, rank)  # numpy, random and torch, as Lightning does
    info = get_worker_info()
    if info is None:
        return
    # one pipeline per dataset; a mix of sources (nucleiseg.data.mix) has one per source
    transforms = getattr(info.dataset, "transforms", None) or [
        getattr(info.dataset, "transform", None)
    ]
    for number, transform in enumerate(transforms):
        if transform is not None and hasattr(transform, "set_random_seed"):
            entropy = [info.seed, rank] + ([number] if number else [])
            seed = np.random.SeedSequence(entropy).generate_state(1)[0]
            transform.set_random_seed(int(seed))


class NucleiSource(Protocol):
    def split(self, name: str) -> SplitSamples: ...


class NucleiDataset(Dataset):
    """Yields ``image`` float (3, H, W) in 0..1, ``mask`` float (1, H, W), ``instances`` int32
    (H, W) and ``index``; with instance-aware ``channels`` also ``targets`` (C, H, W) and
    ``instance_weight`` (0 where the source's masks are binary); ``contour_width``: how many
    pixels deep a contour target is drawn."""

    def __init__(
        self,
        samples: SplitSamples,
        transform: A.BasicTransform | None = None,
        repeats: int = 1,
        channels: Sequence[str] = ("nucleus",),
        contour_width: int = 1,
    ) -> None:
        if repeats < 1:
            raise ValueError(f"dataset.datamodule.train_repeats must be >= 1, got {repeats}")
        self.samples = samples
        self.transform = transform
        self.repeats = repeats
        self.channels = check_channels(channels)
        self.contour_width = contour_width

    def __len__(self) -> int:
        return len(self.samples) * self.repeats

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = index % len(self.samples)
        image = np.asarray(self.samples.images[index])
        instances = np.asarray(self.samples.instances[index])
        if self.transform is not None:
            out = self.transform(image=image, mask=instances)
            image, instances = out["image"], out["mask"]
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
        mask_t = torch.from_numpy(np.ascontiguousarray(instances > 0)).float().unsqueeze(0)
        instances_t = torch.from_numpy(np.ascontiguousarray(instances, dtype=np.int32))
        item = {"image": image_t, "mask": mask_t, "instances": instances_t, "index": index}
        if len(self.channels) > 1:  # drawn after augmentation: they follow its geometry
            item["targets"] = torch.from_numpy(
                instance_targets(instances, self.channels, self.contour_width)
            )
            # binary-only sources (TNBC) train the nucleus channel alone
            item["instance_weight"] = torch.tensor(float(self.samples.true_instances))
        return item


class NucleiDataModule(L.LightningDataModule):
    """Batches a source's train/val/test splits; augmentation on train only.

    ``mpp`` is the data's µm per pixel and ``model_mpp`` the model's: when they differ,
    every split is resampled to the model's resolution once, on load (crops are cut after).
    ``train_repeats`` draws each training image that many times per epoch (with random
    crops, a different crop each time), so short epochs on a few large images still see
    most of their area. ``stain_transform`` (``+augmentation=stain``) runs after the
    dataset's own augmentation, on training images only.
    """

    def __init__(
        self,
        source: NucleiSource,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_transform: A.BasicTransform | None = None,
        eval_transform: A.BasicTransform | None = None,
        pin_memory: bool = False,
        crop_size: int | None = None,
        split_output: str | None = None,
        train_repeats: int = 1,
        stain_transform: A.BasicTransform | None = None,
        mpp: float | None = None,
        model_mpp: float | None = None,
        channels: Sequence[str] = ("nucleus",),
        contour_width: int | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_channels(channels)
        self.contour_width = checked_contour_width(contour_width)  # refused before any data
        if model_mpp is not None and mpp is None:
            raise DatasetError(
                f"model.mpp={model_mpp} asks for the data at {model_mpp} µm per pixel, but "
                "dataset.mpp (the data's own pixel size) is not set: set dataset.mpp=<µm per "
                "pixel> (e.g. 0.25 at 40x, 0.5 at 20x)"
            )
        self.mpp, self.model_mpp = mpp, model_mpp
        self.source = source
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.crop_size = crop_size
        crop = (  # train on random crops; evaluate on whole images
            A.RandomCrop(crop_size, crop_size, pad_if_needed=True, border_mode=4)
            if crop_size
            else None
        )
        self.train_transform = train_transform
        for step in (crop, stain_transform):
            if step is not None:
                self.add_train_transform(step, first=step is crop)
        self.split_output = split_output
        self.train_repeats = train_repeats
        self.eval_transform = eval_transform
        self.pin_memory = pin_memory
        # the training loader's own generator: its shuffle and its workers' base seeds come
        # from it, not from the global torch generator that validation loaders draw from
        # too, so checkpointing it (state_dict) resumes both exactly
        self.train_generator = torch.Generator()
        self.train_generator.manual_seed(torch.initial_seed())
        self.samples: dict[str, SplitSamples] = {}
        self.stain_normalizer: Callable[[np.ndarray], np.ndarray] | None = None

    def add_train_transform(self, transform: A.BasicTransform, first: bool = False) -> None:
        """Add ``transform`` to the training augmentation, after it (``first``: before)."""
        current = self.train_transform
        steps = [transform, current] if first else [current, transform]
        # the outer Compose reseeds everything inside it: keep the configured seed
        seed = getattr(current, "seed", None)
        self.train_transform = A.Compose([s for s in steps if s is not None], seed=seed)

    def set_stain_normalizer(self, normalize: Callable[[np.ndarray], np.ndarray] | None) -> None:
        """Stain-normalise every whole image (once, before crops and augmentation) with
        ``normalize`` (``nucleiseg.data.stain_normalization``); None switches it off."""
        self.stain_normalizer = normalize
        for name in list(self.samples):
            self.samples[name] = self._normalized(self.samples[name])

    def _normalized(self, samples: SplitSamples) -> SplitSamples:
        images = samples.images
        if isinstance(images, NormalizedImages):
            images = images.images
        if self.stain_normalizer is not None:
            images = NormalizedImages(images, self.stain_normalizer)
        return dataclasses.replace(samples, images=images)

    def setup(self, stage: str | None = None) -> None:
        for name in STAGE_SPLITS.get(stage, SPLITS):
            if name in self.samples:
                continue
            samples = self.source.split(name)
            factor = resample_factor(self.mpp, self.model_mpp)
            if factor != 1.0:
                log.info("%s split resampled from %.3g to %.3g µm per pixel (x%.3g)",
                         name, self.mpp, self.model_mpp, factor)  # fmt: skip
                samples = resample_split(samples, factor)
            if len(samples) == 0:
                raise ValueError(
                    f"the {name} split of {type(self.source).__name__} is empty; "
                    "check the dataset root and split settings"
                )
            self.samples[name] = self._normalized(samples)
        assignment = getattr(self.source, "assignment", None)
        if self.split_output and assignment is not None and self.trainer_is_global_zero:
            write_split_file(self.split_output, assignment())

    @property
    def trainer_is_global_zero(self) -> bool:
        return self.trainer is None or self.trainer.is_global_zero

    def dataset(self, split: str) -> NucleiDataset:
        if split not in self.samples:
            self.setup()
        if split == "train":  # each image several times per epoch, a fresh crop each time
            return NucleiDataset(self.samples[split], self.train_transform,
                                 self.train_repeats, self.channels, self.contour_width)  # fmt: skip
        return NucleiDataset(self.samples[split], self.eval_transform, channels=self.channels,
                             contour_width=self.contour_width)  # fmt: skip

    def eval_batch_size_for(self, split: str) -> int:
        """Whole images are batched only when they share one size (after eval_transform):
        a folder of mixed sizes is evaluated one image at a time instead of failing to
        collate."""
        samples = self.samples[split]
        if self.eval_batch_size == 1 or self.eval_transform is not None:
            return self.eval_batch_size
        sizes = {np.shape(samples.images[i])[:2] for i in range(len(samples))}
        if len(sizes) > 1:
            log.info("the %s images differ in size (%d sizes): evaluated one at a time",
                     split, len(sizes))  # fmt: skip
            return 1
        return self.eval_batch_size

    def _loader(self, split: str, shuffle: bool, dataset: Dataset | None = None) -> DataLoader:
        dataset = dataset if dataset is not None else self.dataset(split)
        sampler = None
        if (
            split != "train"
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            # a DistributedSampler would pad val/test with repeated images: metrics inexact
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        train = split == "train"
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size_for(split),
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            # training workers start afresh each epoch, seeded anew (seed_training_worker)
            persistent_workers=self.num_workers > 0 and not train,
            worker_init_fn=seed_training_worker if train and self.num_workers > 0 else None,
            generator=self.train_generator if train else None,
            pin_memory=self.pin_memory,
            drop_last=False,
        )

    def state_dict(self) -> dict[str, Any]:
        """The augmentation's random generators, checkpointed by Lightning, so a resumed run
        draws the same crops and flips as an uninterrupted one."""
        return {
            "augmentation": [
                (t.random_generator.bit_generator.state, t.py_random.getstate())
                for t in random_transforms(self.train_transform)
            ],
            "train_generator": self.train_generator.get_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("augmentation", [])
        transforms = random_transforms(self.train_transform)
        if len(saved) != len(transforms):
            raise ValueError(
                f"the checkpoint holds {len(saved)} augmentation random states but "
                f"dataset.datamodule.train_transform has {len(transforms)} random transforms; "
                "resume with the augmentation the run was started with"
            )
        for transform, (numpy_state, python_state) in zip(transforms, saved, strict=True):
            transform.random_generator.bit_generator.state = numpy_state
            transform.py_random.setstate(python_state)
        if "train_generator" in state_dict:  # checkpoints before it shuffled from torch's
            self.train_generator.set_state(state_dict["train_generator"])

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
