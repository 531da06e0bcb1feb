"""Augmentation in DataLoader workers: each worker draws its own stream, and each epoch a
new one (albumentations keeps its own generators, which no worker seeding reaches)."""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch

from nucleiseg.data.datamodule import NucleiDataModule
from nucleiseg.data.samples import SplitSamples


class IdenticalImages:
    """Every sample the same image: what differs between samples is the augmentation."""

    def __init__(self, count: int = 8) -> None:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        instances = np.zeros((32, 32), np.int32)
        instances[8:16, 8:20] = 1
        self.samples = SplitSamples(
            [image] * count, [instances] * count, [f"i{k}" for k in range(count)]
        )

    def split(self, name: str) -> SplitSamples:
        return self.samples


def epoch_images(loader) -> list[torch.Tensor]:
    return [batch["image"][0] for batch in loader]


def datamodule(num_workers: int) -> NucleiDataModule:
    augment = A.Compose(
        [A.HorizontalFlip(p=0.5), A.Affine(rotate=(-90, 90), border_mode=4, p=1.0)], seed=0
    )
    return NucleiDataModule(
        IdenticalImages(), batch_size=1, num_workers=num_workers, train_transform=augment
    )


def test_two_workers_draw_different_augmentations():
    torch.manual_seed(0)
    images = epoch_images(datamodule(num_workers=2).train_dataloader())
    worker0, worker1 = images[0::2], images[1::2]  # batches alternate between the workers
    assert all(not torch.equal(a, b) for a, b in zip(worker0, worker1, strict=True))


def test_each_epoch_draws_new_augmentations_with_workers():
    torch.manual_seed(0)
    loader = datamodule(num_workers=2).train_dataloader()
    first, second = epoch_images(loader), epoch_images(loader)
    assert not any(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_the_same_torch_state_draws_the_same_augmentations():
    # what makes a resumed run exact: its restored torch state seeds the workers alike
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(epoch_images(datamodule(num_workers=2).train_dataloader()))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_without_workers_the_saved_augmentation_state_resumes_the_stream():
    first = datamodule(num_workers=0)
    epoch_images(first.train_dataloader())
    saved = first.state_dict()  # what a checkpoint at the end of this epoch holds
    expected = epoch_images(first.train_dataloader())
    resumed = datamodule(num_workers=0)
    resumed.load_state_dict(saved)
    assert all(
        torch.equal(a, b)
        for a, b in zip(expected, epoch_images(resumed.train_dataloader()), strict=True)
    )
