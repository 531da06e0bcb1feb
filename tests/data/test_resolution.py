"""Pixel sizes: images and label maps resampled to the model's µm per pixel, ids kept."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

from nucleiseg.data.datamodule import NucleiDataModule
from nucleiseg.data.io import DatasetError
from nucleiseg.data.resolution import (
    resample_factor,
    resample_image,
    resample_labels,
    resample_split,
)
from nucleiseg.data.samples import SplitSamples
from nucleiseg.data.synthetic import SyntheticNuclei

from conftest import compose_config, shared_dataset


def label_map(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros((64, 80), np.int32)
    for k, label in enumerate((3, 17, 300, 65_000, 70_001)):  # past uint16 too
        y, x = rng.integers(0, 52), rng.integers(0, 68)
        labels[y : y + 10 + k, x : x + 9] = label
    return labels


def test_instance_ids_survive_nearest_neighbour_resampling():
    labels = label_map()
    up = resample_labels(labels, (128, 160))
    assert up.dtype == labels.dtype
    assert set(np.unique(up)) == set(np.unique(labels))  # no new or blended ids
    assert (resample_labels(up, (64, 80)) == labels).all()  # 2x up and down: the same map
    assert (up[::2, ::2] == labels).all()


def test_images_are_resampled_smoothly_and_stay_uint8():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    small = resample_image(image, (32, 40))
    assert small.shape == (32, 40, 3) and small.dtype == np.uint8
    assert small.std() < image.std()  # anti-aliased: noise averaged, not picked
    assert abs(float(small.mean()) - float(image.mean())) < 2


def test_resample_factor_is_source_over_target_and_one_when_unknown():
    assert resample_factor(0.25, 0.5) == 0.5
    assert resample_factor(0.5, 0.25) == 2.0
    assert resample_factor(0.25, 0.25000001) == 1.0
    assert resample_factor(None, 0.5) == resample_factor(0.25, None) == 1.0
    with pytest.raises(DatasetError, match="positive"):
        resample_factor(0.25, 0.0)


def test_a_split_is_resampled_with_its_type_maps():
    labels = label_map()
    samples = SplitSamples(
        [np.zeros((64, 80, 3), np.uint8)], [labels], ["a"], types=[(labels > 0).astype(np.uint8)]
    )
    half = resample_split(samples, 0.5)
    assert half.images[0].shape == (32, 40, 3)
    assert half.instances[0].shape == half.types[0].shape == (32, 40)
    assert resample_split(samples, 1.0) is samples


def test_the_datamodule_serves_every_split_at_the_model_resolution():
    source = SyntheticNuclei(num_train=4, num_val=2, num_test=2, size=64, seed=0)
    datamodule = NucleiDataModule(source, batch_size=2, mpp=0.25, model_mpp=0.5, crop_size=16)
    datamodule.setup()
    for split in ("train", "val", "test"):
        assert np.shape(datamodule.samples[split].images[0])[:2] == (32, 32)
    assert next(iter(datamodule.train_dataloader()))["image"].shape[-2:] == (16, 16)
    native = source.split("test").instances[0]
    assert set(np.unique(datamodule.samples["test"].instances[0])) <= set(np.unique(native))


def test_a_model_resolution_without_the_data_s_pixel_size_is_refused():
    source = SyntheticNuclei(num_train=4, num_val=2, num_test=2, size=64, seed=0)
    with pytest.raises(DatasetError, match=r"set dataset\.mpp="):
        NucleiDataModule(source, mpp=None, model_mpp=0.5)


def test_every_dataset_config_states_its_pixel_size(tmp_path):
    expected = {"tnbc": 0.25, "consep": 0.25, "lizard": 0.5, "synthetic": 0.5, "folder": None}
    for name, mpp in expected.items():
        cfg = compose_config([f"dataset={name}", "dataset.root=x"] if name != "synthetic"
                             else [], tmp_path)  # fmt: skip
        assert cfg.dataset.mpp == mpp and cfg.model.mpp == mpp, name
        assert cfg.dataset.datamodule.model_mpp == mpp, name
    cfg = compose_config(["dataset=consep", "dataset.root=x", "model.mpp=0.5"], tmp_path)
    assert (cfg.dataset.datamodule.mpp, cfg.dataset.datamodule.model_mpp) == (0.25, 0.5)


def test_consep_at_20x_is_served_as_128_px_tiles_with_its_instances(tmp_path):
    root = shared_dataset("consep")
    cfg = compose_config(["dataset=consep", f"dataset.root={root}", "model.mpp=0.5"], tmp_path)
    datamodule = instantiate(cfg.dataset.datamodule, split_output=None, num_workers=0)
    datamodule.setup("validate")
    samples = datamodule.samples["val"]
    assert len(samples) == 80
    assert samples.images[0].shape == (128, 128, 3) and samples.types[0].shape == (128, 128)
    assert samples.instances[0].max() > 0
