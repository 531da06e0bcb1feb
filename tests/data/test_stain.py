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
