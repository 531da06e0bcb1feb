"""The embedded synthetic H&E-like dataset and the shared data module."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from nucleiseg.data.datamodule import NucleiDataModule, NucleiDataset
from nucleiseg.data.synthetic import SyntheticNuclei


def test_synthetic_tiles_are_deterministic_per_seed():
    a = SyntheticNuclei(num_train=3, seed=7).split("train")
    b = SyntheticNuclei(num_train=3, seed=7).split("train")
    c = SyntheticNuclei(num_train=3, seed=8).split("train")
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images, strict=True))
    assert not np.array_equal(a.images[0], c.images[0])


def test_synthetic_splits_hold_different_tiles():
    source = SyntheticNuclei(num_train=2, num_val=2, num_test=2, seed=0)
    train, test = source.split("train"), source.split("test")
    assert not np.array_equal(train.images[0], test.images[0])
    assert set(train.names).isdisjoint(test.names)


def test_synthetic_instance_maps_are_exact_and_contiguous():
    split = SyntheticNuclei(num_train=4, size=96, seed=1).split("train")
    for image, inst in zip(split.images, split.instances, strict=True):
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert inst.shape == (96, 96) and inst.dtype == np.int32
        ids = np.unique(inst)
        assert ids[0] == 0 and np.array_equal(ids, np.arange(len(ids)))
        assert len(ids) > 5  # several nuclei per tile


def test_synthetic_nuclei_look_like_hematoxylin_on_eosin():
    split = SyntheticNuclei(num_train=4, seed=2).split("train")
    image = np.stack(split.images).astype(float)
    nuclei = np.stack(split.instances) > 0
    background, nucleus = image[~nuclei].mean(0), image[nuclei].mean(0)
    assert background[0] > background[2] > background[1]  # pink: red > blue > green
    assert nucleus.sum() < background.sum()  # nuclei are darker
    assert nucleus[2] / nucleus[0] > background[2] / background[0]  # and bluer


def test_synthetic_tiles_include_touching_nuclei():
    split = SyntheticNuclei(num_train=8, seed=3).split("train")
    touching = 0
    for inst in split.instances:
        horizontal = (inst[:, 1:] != inst[:, :-1]) & (inst[:, 1:] > 0) & (inst[:, :-1] > 0)
        touching += int(horizontal.sum())
    assert touching > 0


def test_dataset_yields_unit_range_image_and_binary_mask():
    split = SyntheticNuclei(num_train=2, size=64).split("train")
    item = NucleiDataset(split)[1]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["image"].min() >= 0.0 and item["image"].max() <= 1.0
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(item["mask"][0].bool(), torch.from_numpy(split.instances[1] > 0))


def test_augmentation_moves_mask_with_image():
    split = SyntheticNuclei(num_train=1, size=64).split("train")
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    plain, flipped = NucleiDataset(split)[0], NucleiDataset(split, flip)[0]
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert torch.equal(flipped["mask"], plain["mask"].flip(-1))


def test_datamodule_batches_every_split():
    dm = NucleiDataModule(SyntheticNuclei(num_train=5, num_val=3, num_test=2, size=32), 2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 1, 32, 32)
    assert sum(len(b["image"]) for b in dm.test_dataloader()) == 2


def test_train_repeats_draw_each_image_with_a_fresh_crop_each_time():
    source = SyntheticNuclei(num_train=3, num_val=2, num_test=2, size=64)
    dm = NucleiDataModule(source, 2, crop_size=16, train_repeats=4)
    dm.setup("fit")
    train = dm.dataset("train")
    assert len(train) == 12 and len(dm.dataset("val")) == 2  # val/test never repeated
    assert all(train[i]["index"] == i % 3 for i in range(12))
    crops = [train[i]["image"] for i in (0, 3, 6, 9)]  # image 0, four draws
    assert not all(torch.equal(crops[0], c) for c in crops[1:])
    with pytest.raises(ValueError, match="train_repeats"):
        NucleiDataset(source.split("train"), repeats=0)


def test_random_crops_follow_the_augmentation_seed():
    def first_crops(seed: int) -> list[torch.Tensor]:
        augment = A.Compose([A.HorizontalFlip(p=0.5)], seed=seed)
        source = SyntheticNuclei(num_train=4, num_val=1, num_test=1, size=64)
        dm = NucleiDataModule(source, 2, crop_size=16, train_transform=augment)
        dm.setup("fit")
        return [dm.dataset("train")[i]["image"] for i in range(4)]

    same, again, other = first_crops(3), first_crops(3), first_crops(4)
    assert all(torch.equal(a, b) for a, b in zip(same, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(same, other, strict=True))
