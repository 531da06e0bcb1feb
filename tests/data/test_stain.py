"""Stain augmentation: colours change, masks never do, and only training images see it."""

from __future__ import annotations

import numpy as np
from hydra.utils import instantiate

from conftest import compose_config, smoke_overrides


def test_stain_augmentation_changes_colours_and_never_the_mask():
    cfg = compose_config(smoke_overrides("+augmentation=stain"))
    datamodule = instantiate(cfg.dataset.datamodule)
    datamodule.setup("fit")
    plain = instantiate(compose_config(smoke_overrides()).dataset.datamodule)
    plain.setup("fit")
    stained, unstained = datamodule.dataset("train"), plain.dataset("train")
    changed = 0
    for i in range(8):
        a, b = stained[i], unstained[i]
        assert np.array_equal(a["mask"].numpy(), b["mask"].numpy())  # same geometry, same mask
        assert np.array_equal(a["instances"].numpy(), b["instances"].numpy())
        changed += not np.allclose(a["image"].numpy(), b["image"].numpy(), atol=2 / 255)
    assert changed >= 4  # p=0.8 per image
    val_a, val_b = datamodule.dataset("val")[0], plain.dataset("val")[0]
    assert np.array_equal(val_a["image"].numpy(), val_b["image"].numpy())


def robust_datasets(*levers: str):
    """The smoke training and validation sets with +augmentation=robust and ``levers``, and
    the same without it (same seed: the same crops and flips)."""
    cfg = compose_config(smoke_overrides("+augmentation=robust", *levers))
    robust = instantiate(cfg.dataset.datamodule)
    plain = instantiate(compose_config(smoke_overrides()).dataset.datamodule)
    for datamodule in (robust, plain):
        datamodule.setup("fit")
    return robust, plain


def test_robust_appearance_levers_change_colours_of_training_images_only():
    no_scale = "robustness.scale=0"
    always = ["robustness.stain=1", "robustness.colour=1", "robustness.noise=1"]
    robust, plain = robust_datasets(no_scale, *always)
    for i in range(8):
        a, b = robust.dataset("train")[i], plain.dataset("train")[i]
        assert np.array_equal(a["instances"].numpy(), b["instances"].numpy())
        assert not np.allclose(a["image"].numpy(), b["image"].numpy(), atol=2 / 255)
    for split in ("val", "test"):
        a, b = robust.dataset(split)[0], plain.dataset(split)[0]
        assert np.array_equal(a["image"].numpy(), b["image"].numpy())


def test_robust_scale_jitter_moves_masks_with_their_images():
    only_scale = ["robustness.scale=1", "robustness.stain=0", "robustness.colour=0",
                  "robustness.blur=0", "robustness.noise=0", "robustness.jpeg=0"]  # fmt: skip
    robust, plain = robust_datasets(*only_scale)
    areas = []
    for i in range(8):
        a, b = robust.dataset("train")[i], plain.dataset("train")[i]
        mask = a["mask"][0].numpy() > 0
        areas.append(mask.mean() / max((b["mask"][0].numpy() > 0).mean(), 1e-6))
        darkness = 1 - a["image"].numpy().mean(0)  # nuclei are dark: the mask sits on them
        if mask.any() and (~mask).any():
            assert darkness[mask].mean() > darkness[~mask].mean() + 0.1
    assert any(abs(r - 1) > 0.05 for r in areas)  # zoomed: the nuclei's share of the crop moved
    for split in ("val", "test"):
        a, b = robust.dataset(split)[0], plain.dataset(split)[0]
        assert np.array_equal(a["instances"].numpy(), b["instances"].numpy())


def test_robust_appearance_preset_keeps_every_lever_but_scale():
    cfg = compose_config(smoke_overrides("+augmentation=robust_appearance"))
    levers = cfg.robustness
    assert levers.scale == 0 and min(levers.stain, levers.colour, levers.blur) > 0
    assert min(levers.noise, levers.jpeg) > 0
    robust, plain = robust_datasets("robustness.scale=0")
    appearance = instantiate(cfg.dataset.datamodule)
    appearance.setup("fit")
    changed = 0
    for i in range(8):
        a, b, c = (
            appearance.dataset("train")[i],
            plain.dataset("train")[i],
            robust.dataset("train")[i],
        )
        assert np.array_equal(a["instances"].numpy(), b["instances"].numpy())  # no zoom
        assert np.array_equal(a["image"].numpy(), c["image"].numpy())  # robust, scale off
        changed += not np.allclose(a["image"].numpy(), b["image"].numpy(), atol=2 / 255)
    assert changed >= 2


def test_robust_gray_lever_greys_training_images_only():
    only_gray = ["robustness.gray=1", "robustness.stain=0", "robustness.colour=0",
                 "robustness.scale=0", "robustness.blur=0", "robustness.noise=0",
                 "robustness.jpeg=0"]  # fmt: skip
    robust, plain = robust_datasets(*only_gray)
    for i in range(4):
        a, b = robust.dataset("train")[i], plain.dataset("train")[i]
        image = a["image"].numpy()
        assert np.allclose(image[0], image[1], atol=1 / 255)  # grey: R = G = B
        assert np.allclose(image[1], image[2], atol=1 / 255)
        assert not np.allclose(b["image"].numpy()[0], b["image"].numpy()[2], atol=0.05)
        assert np.array_equal(a["instances"].numpy(), b["instances"].numpy())
    off = compose_config(smoke_overrides("+augmentation=robust_appearance")).robustness.gray
    assert off == 0  # the presets keep colour unless asked
    for split in ("val", "test"):
        a, b = robust.dataset(split)[0], plain.dataset(split)[0]
        assert np.array_equal(a["image"].numpy(), b["image"].numpy())


def test_the_generalist_trains_with_the_appearance_levers_and_grey_images():
    cfg = compose_config(["experiment=generalist_cpu", "paths.data_dir=/my/data"])
    levers = cfg.robustness
    assert levers.scale == 0 and levers.gray == 0.2
    assert min(levers.stain, levers.colour, levers.blur, levers.noise, levers.jpeg) > 0
    transforms = cfg.dataset.datamodule.stain_transform.transforms
    names = [t._target_.rsplit(".", 1)[1] for t in transforms]
    assert {"HEStain", "HueSaturationValue", "ToGray", "ImageCompression"} <= set(names)
