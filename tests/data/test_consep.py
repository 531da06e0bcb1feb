"""CoNSeP, read in place from ../shared/data/consep: every tile, the official split by
source image, instance and type maps that reach the metrics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from nucleiseg.data.consep import (
    IMAGE_SIZE,
    TILE_SIZE,
    CoNSePDataset,
    assemble_tiles,
    find_consep_pairs,
    tile_origin,
)
from nucleiseg.data.io import DatasetError
from nucleiseg.data.splits import write_split_file
from nucleiseg.metrics.objects import NucleusMetrics

from conftest import compose_config, reference_pq_aji, shared_dataset


@pytest.fixture(scope="module")
def consep_root():
    return shared_dataset("consep")


@pytest.fixture(scope="module")
def consep(consep_root) -> CoNSePDataset:
    return CoNSePDataset(str(consep_root))


def source_images(names) -> set[str]:
    return {name.rsplit("_", 1)[0] for name in names}


def test_every_tile_of_the_shared_copy_is_read_with_its_instances_and_types(consep):
    splits = {name: consep.split(name) for name in ("train", "val", "test")}
    assert sum(len(s) for s in splits.values()) == 656
    assert len(splits["test"]) == 14 * 16
    labels = 0
    for samples in splits.values():
        assert samples.types is not None and len(samples.types) == len(samples)
        for image, instances, types in zip(
            samples.images, samples.instances, samples.types, strict=True
        ):
            assert image.shape == (256, 256, 3) and image.dtype == np.uint8
            assert instances.shape == types.shape == (256, 256)
            assert set(np.unique(types).tolist()) <= {0, 1, 2, 3, 4}
            assert ((types > 0) == (instances > 0)).all()  # every nucleus pixel has a type
            labels += len(np.unique(instances)) - 1
    assert labels == 28546  # as SOURCE.txt counts them


def test_no_source_image_is_in_two_splits(consep):
    images = {name: source_images(consep.split(name).names) for name in ("train", "val", "test")}
    assert not images["train"] & images["val"]
    assert not (images["train"] | images["val"]) & images["test"]
    assert (len(images["train"]), len(images["val"]), len(images["test"])) == (22, 5, 14)
    assert all(name.startswith("test_") for name in images["test"])  # the official test split
    counts = Counter(consep.assignment()[n] for n in consep.assignment())
    assert counts == {"train": 22 * 16, "val": 5 * 16, "test": 14 * 16}


def test_the_validation_images_follow_the_split_seed(consep_root, consep):
    other = CoNSePDataset(str(consep_root), seed=1)
    val = source_images(consep.split("val").names)
    assert source_images(CoNSePDataset(str(consep_root)).split("val").names) == val
    assert source_images(other.split("val").names) != val


def test_a_stratified_draw_takes_one_group_from_each_stratum():
    from nucleiseg.data.splits import stratified_draw

    values = {f"image_{i}": float(i) for i in range(10)}  # strata {0, 1}, {2, 3}, ... {8, 9}
    for seed in range(6):
        drawn = sorted(int(name.split("_")[1]) // 2 for name in stratified_draw(values, 5, seed))
        assert drawn == [0, 1, 2, 3, 4]
    assert stratified_draw(values, 5, 3) == stratified_draw(values, 5, 3)
    assert len({frozenset(stratified_draw(values, 5, seed)) for seed in range(6)}) > 1
    with pytest.raises(DatasetError, match="cannot draw 11 of 10"):
        stratified_draw(values, 11, 0)


def test_the_validation_images_span_the_training_images_nuclei_per_tile(consep_root, consep):
    train_images = sorted(source_images(consep.split("train").names))
    val_images = sorted(source_images(consep.split("val").names))
    density = consep.nuclei_per_tile(train_images + val_images)
    val_mean = np.mean([density[g] for g in val_images])
    train_mean = np.mean([density[g] for g in train_images])
    assert abs(val_mean - train_mean) < 0.25 * train_mean  # 40.5 against 42.5
    # the random draw of earlier sessions (val_stratify: null) is still the same images
    random = CoNSePDataset(str(consep_root), val_stratify=None, cache=False)
    drawn = sorted(source_images(n for n, s in random.assignment().items() if s == "val"))
    assert drawn == ["train_11", "train_12", "train_20", "train_27", "train_5"]
    assert np.mean([density[g] for g in drawn]) < 0.35 * train_mean  # 12.7: the sparse tail
    with pytest.raises(DatasetError, match="dataset.val_stratify='density' is not known"):
        CoNSePDataset(str(consep_root), val_stratify="density")


def test_dataset_consep_config_builds_the_datamodule_at_native_resolution(consep_root, tmp_path):
    cfg = compose_config(["dataset=consep", f"dataset.root={consep_root}"], tmp_path)
    assert cfg.dataset.mpp == cfg.model.mpp == 0.25
    datamodule = instantiate(cfg.dataset.datamodule, split_output=None, num_workers=0)
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    assert batch["image"].shape[-2:] == (256, 256)


def test_instance_masks_reach_the_metrics(consep_root, tmp_path):
    """AJI of a tile scored through the test loader equals the published definition
    computed here on the label map read from its file."""
    from scipy.ndimage import binary_erosion

    cfg = compose_config(["dataset=consep", f"dataset.root={consep_root}"], tmp_path)
    datamodule = instantiate(
        cfg.dataset.datamodule, split_output=None, num_workers=0, eval_batch_size=1
    )
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    name = datamodule.samples["test"].names[int(batch["index"][0])]
    truth = np.asarray(Image.open(consep_root / "test" / "masks" / f"{name}.png")).astype(np.int32)
    assert (batch["instances"][0].numpy() == truth).all()  # ids as stored, not re-labelled
    # a prediction: every nucleus eroded, two neighbours merged
    pred = np.where(binary_erosion(truth > 0), truth, 0)
    ids = [i for i in np.unique(truth) if i][:2]
    pred[pred == ids[1]] = ids[0]
    metric = NucleusMetrics()
    metric.update(pred[None], batch["instances"])
    _, aji = reference_pq_aji(pred, truth)
    assert float(metric.compute()["aji"]) == pytest.approx(aji)
    assert 0.3 < aji < 1.0


@pytest.fixture(scope="module")
def consep_whole(consep_root) -> CoNSePDataset:
    return CoNSePDataset(str(consep_root), whole_images=True)


def test_whole_images_put_each_images_sixteen_tiles_back_where_they_were_cut(
    consep_root, consep, consep_whole
):
    for split in ("train", "val", "test"):  # the same images in every split
        assert set(consep_whole.split(split).names) == source_images(consep.split(split).names)
    test = consep_whole.split("test")
    assert len(test) == 14
    for image, instances, name in zip(test.images, test.instances, test.names, strict=True):
        assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and instances.shape == image.shape[:2]
        tile_ids = set()
        for tile in range(16):
            stem = f"{name}_{tile:03d}"
            truth = np.asarray(Image.open(consep_root / "test" / "masks" / f"{stem}.png"))
            y, x = tile_origin(tile)
            # ids are the source image's: every tile's window holds its own map exactly
            assert (instances[y : y + TILE_SIZE, x : x + TILE_SIZE] == truth).all(), stem
            tile_ids |= set(np.unique(truth).tolist())
        assert set(np.unique(instances).tolist()) == tile_ids  # no id lost or made up
    corner = np.asarray(Image.open(consep_root / "test" / "images" / f"{test.names[0]}_015.jpg"))
    assert (test.images[0][-TILE_SIZE:, -TILE_SIZE:] == corner).all()


def test_a_run_on_tiles_split_file_splits_whole_images_the_same(consep_root, consep, tmp_path):
    split_file = tmp_path / "split.csv"
    write_split_file(split_file, consep.assignment())  # as a run on tiles writes it
    whole = CoNSePDataset(str(consep_root), whole_images=True, split_file=str(split_file))
    assert whole.assignment() == {
        name.rsplit("_", 1)[0]: split for name, split in consep.assignment().items()
    }


def test_tiles_that_disagree_where_they_overlap_or_are_missing_are_refused():
    rng = np.random.default_rng(0)
    source = rng.integers(1, 50, (IMAGE_SIZE, IMAGE_SIZE)).astype(np.int32)
    tiles = {}
    for index in range(16):
        y, x = tile_origin(index)
        window = source[y : y + TILE_SIZE, x : x + TILE_SIZE].copy()
        image = np.zeros((TILE_SIZE, TILE_SIZE, 3), np.uint8)
        tiles[index] = (Path(f"test_1_{index:03d}.jpg"), (image, window, None))
    assert (assemble_tiles(tiles)[1] == source).all()
    tiles[12][1][1][0, 0] += 1  # tile 12 overlaps tile 2 in its first 24 columns
    with pytest.raises(DatasetError, match=r"'test_1_012\.jpg' does not agree"):
        assemble_tiles(tiles)
    del tiles[12]
    with pytest.raises(DatasetError, match=r"missing: \[12\]"):
        assemble_tiles(tiles)


def test_dataset_consep_whole_images_reaches_the_test_loader(consep_root, tmp_path):
    overrides = ["dataset=consep", f"dataset.root={consep_root}", "dataset.whole_images=true"]
    cfg = compose_config(overrides, tmp_path)
    datamodule = instantiate(
        cfg.dataset.datamodule, split_output=None, num_workers=0, eval_batch_size=1
    )
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    assert batch["image"].shape[-2:] == batch["instances"].shape[-2:] == (1000, 1000)


def test_a_tile_not_named_for_its_source_image_is_refused(consep_root, tmp_path):
    for part in ("images", "masks", "types"):
        (tmp_path / "train" / part).mkdir(parents=True)
        (tmp_path / "test" / part).mkdir(parents=True)
    stem = "train_1_000"
    for part, suffix in (("images", "jpg"), ("masks", "png"), ("types", "png")):
        source = consep_root / "train" / part / f"{stem}.{suffix}"
        (tmp_path / "train" / part / f"tile.{suffix}").write_bytes(source.read_bytes())
    with pytest.raises(DatasetError, match="not named train_<image>_<tile>"):
        find_consep_pairs(tmp_path)


def test_a_missing_type_map_names_the_file(consep_root, tmp_path):
    for part in ("images", "masks", "types"):
        (tmp_path / "train" / part).mkdir(parents=True)
        (tmp_path / "test" / part).mkdir(parents=True)
    stem = "train_1_000"
    for part, suffix in (("images", "jpg"), ("masks", "png")):
        source = consep_root / "train" / part / f"{stem}.{suffix}"
        (tmp_path / "train" / part / f"{stem}.{suffix}").write_bytes(source.read_bytes())
    with pytest.raises(DatasetError, match=r"types/train_1_000\.png"):
        find_consep_pairs(tmp_path)


def test_a_missing_root_says_where_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="nucleiseg.data.download consep"):
        CoNSePDataset(str(tmp_path / "nowhere"))
