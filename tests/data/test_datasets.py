"""Real-data loaders (TNBC release, Lizard CoNIC layout, folders) and their splits.

TNBC is read in place from ../shared/data; Lizard/CoNIC and folder fixtures are written to a
temporary directory from the real Lizard/CoNSeP images there.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from nucleiseg.data.datamodule import NucleiDataModule
from nucleiseg.data.folder import FolderDataset
from nucleiseg.data.io import DatasetError
from nucleiseg.data.lizard import LizardDataset
from nucleiseg.data.splits import read_split_file, scale_sizes, write_split_file
from nucleiseg.data.tnbc import TNBCDataset

SPLIT_NAMES = ("train", "val", "test")


@pytest.fixture
def folder_root(tmp_path, lizard_pairs) -> Path:
    """A user folder: PNG, TIFF, NPY and JPEG images, binary and instance masks."""
    import tifffile

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i, (stem, image, mask) in enumerate(lizard_pairs[:12]):
        image, mask = image[:200, :300], mask[:200, :300]
        if i % 4 == 0:
            Image.fromarray(image).save(tmp_path / "images" / f"{stem}.png")
            Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "masks" / f"{stem}.png")
        elif i % 4 == 1:
            tifffile.imwrite(tmp_path / "images" / f"{stem}.tif", image)
            tifffile.imwrite(tmp_path / "masks" / f"{stem}.tif", mask.astype(np.uint8))
        elif i % 4 == 2:
            np.save(tmp_path / "images" / f"{stem}.npy", image)
            np.save(tmp_path / "masks" / f"{stem}.npy", ndimage.label(mask)[0].astype(np.int32))
        else:
            Image.fromarray(image).save(tmp_path / "images" / f"{stem}.jpg", quality=95)
            Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "masks" / f"{stem}.png")
    return tmp_path


def split_sizes(source) -> list[int]:
    return [len(source.split(name)) for name in SPLIT_NAMES]


# -- TNBC -------------------------------------------------------------------------------


def test_tnbc_reads_the_full_release_with_the_papers_split(tnbc_root):
    source = TNBCDataset(str(tnbc_root))
    assert len(source.pairs) == 50
    assert len({p.group for p in source.pairs}) == 11
    assert split_sizes(source) == [30, 10, 10]
    test = source.split("test")
    image, instances = test.images[0], test.instances[0]
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8  # RGBA alpha dropped
    assert instances.shape == (512, 512) and instances.max() > 5  # nuclei as instances


def test_tnbc_split_is_deterministic_per_seed(tnbc_root):
    first = TNBCDataset(str(tnbc_root), seed=1).assignment()
    assert first == TNBCDataset(str(tnbc_root), seed=1).assignment()
    assert first != TNBCDataset(str(tnbc_root), seed=2).assignment()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tnbc_slide_split_puts_every_slide_in_one_split(tnbc_root, seed):
    source = TNBCDataset(str(tnbc_root), split_by="slide", seed=seed)
    assignment = source.assignment()
    splits_of_slide: dict[str, set[str]] = {}
    for pair in source.pairs:
        splits_of_slide.setdefault(pair.group, set()).add(assignment[pair.name])
    assert all(len(s) == 1 for s in splits_of_slide.values())
    assert Counter(assignment.values()) == {"train": 30, "val": 10, "test": 10}


def test_split_file_round_trip_reproduces_the_split(tnbc_root, tmp_path):
    original = TNBCDataset(str(tnbc_root), seed=5).assignment()
    write_split_file(tmp_path / "split.csv", original)
    assert read_split_file(tmp_path / "split.csv") == original
    reused = TNBCDataset(str(tnbc_root), seed=99, split_file=str(tmp_path / "split.csv"))
    assert reused.assignment() == original


def make_small_tnbc(tnbc_root: Path, dest: Path) -> Path:
    for slide in ("01", "02", "03"):
        for folder in (f"Slide_{slide}", f"GT_{slide}"):
            shutil.copytree(tnbc_root / folder, dest / folder)
    return dest


def test_tnbc_missing_root_names_it_and_the_download(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere.*nucleiseg.data.download tnbc"):
        TNBCDataset(str(tmp_path / "nowhere"))


def test_tnbc_root_without_slides_is_rejected(tmp_path):
    with pytest.raises(DatasetError, match="no Slide_"):
        TNBCDataset(str(tmp_path))


def test_tnbc_missing_ground_truth_names_the_file(tnbc_root, tmp_path):
    root = make_small_tnbc(tnbc_root, tmp_path / "tnbc")
    (root / "GT_02" / "02_2.png").unlink()
    with pytest.raises(DatasetError, match=r"GT_02/02_2.png"):
        TNBCDataset(str(root))


def test_corrupt_image_names_the_file_before_training(tnbc_root, tmp_path):
    root = make_small_tnbc(tnbc_root, tmp_path / "tnbc")
    (root / "Slide_03" / "03_1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    source = TNBCDataset(str(root), split_sizes=(9, 3, 3), split_file=None)
    split = source.assignment()["03_1"]
    with pytest.raises(DatasetError, match=r"Slide_03/03_1.png.*corrupt"):
        source.split(split)


def test_mask_of_another_size_names_both_files(tnbc_root, tmp_path):
    root = make_small_tnbc(tnbc_root, tmp_path / "tnbc")
    mask_path = root / "GT_01" / "01_3.png"
    Image.open(mask_path).crop((0, 0, 500, 512)).save(mask_path)
    source = TNBCDataset(str(root), split_sizes=(9, 3, 3))
    with pytest.raises(DatasetError, match=r"GT_01/01_3.png' is 500x512 .*01_3.png' is 512x512"):
        source.split(source.assignment()["01_3"])


def test_non_binary_tnbc_mask_is_rejected(tnbc_root, tmp_path):
    root = make_small_tnbc(tnbc_root, tmp_path / "tnbc")
    mask_path = root / "GT_02" / "02_1.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[:10, :10] = 128
    Image.fromarray(mask).save(mask_path)
    source = TNBCDataset(str(root), split_sizes=(9, 3, 3))
    with pytest.raises(DatasetError, match=r"GT_02/02_1.png' should be binary"):
        source.split(source.assignment()["02_1"])


# -- Lizard (CoNIC layout) --------------------------------------------------------------


def test_lizard_reads_conic_layout_memory_mapped_with_classes_pooled(conic_root):
    source = LizardDataset(str(conic_root))
    assert isinstance(source.images, np.memmap) and isinstance(source.labels, np.memmap)
    assert sum(split_sizes(source)) == 88
    train = source.split("train")
    assert train.images[0].shape == (256, 256, 3)
    labels = np.load(conic_root / "labels.npy")
    index = source.names.index(train.names[0])
    assert np.array_equal(train.instances[0], labels[index, ..., 0])


def test_lizard_paper_split_sizes_for_the_full_release(tmp_path):
    n = 4981  # the CoNIC release's patch count; tiny 8x8 patches keep the fixture small
    np.save(tmp_path / "images.npy", np.zeros((n, 8, 8, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros((n, 8, 8, 2), np.int32))
    assert Counter(LizardDataset(str(tmp_path)).assignment().values()) == {
        "train": 3842,
        "val": 499,
        "test": 640,
    }


def test_lizard_source_split_keeps_views_of_one_image_together(conic_root):
    assignment = LizardDataset(str(conic_root), split_by="source").assignment()
    by_source: dict[str, set[str]] = {}
    for name, split in assignment.items():
        by_source.setdefault(name.rsplit("-", 1)[0], set()).add(split)
    assert all(len(s) == 1 for s in by_source.values())
    assert set(assignment.values()) == set(SPLIT_NAMES)


def test_lizard_wrong_label_shape_names_the_file(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((5, 16, 16, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros((5, 16, 16), np.int32))
    with pytest.raises(DatasetError, match=r"labels.npy' has shape \(5, 16, 16\)"):
        LizardDataset(str(tmp_path))


def test_lizard_missing_arrays_are_named(tmp_path):
    with pytest.raises(DatasetError, match="images.npy' does not exist"):
        LizardDataset(str(tmp_path))


def test_scale_sizes_keeps_exact_counts_and_scales_others():
    assert scale_sizes([30, 10, 10], 50) == [30, 10, 10]
    assert scale_sizes([30, 10, 10], 20) == [12, 4, 4]
    with pytest.raises(DatasetError):
        scale_sizes([1, 1], 10)


# -- folder -----------------------------------------------------------------------------


def test_folder_pairs_mixed_formats_by_stem(folder_root, lizard_pairs):
    source = FolderDataset(str(folder_root), split_sizes=(8, 2, 2))
    assert split_sizes(source) == [8, 2, 2]
    masks = {stem: mask[:200, :300] for stem, _, mask in lizard_pairs}
    for name in SPLIT_NAMES:
        split = source.split(name)
        for stem, image, inst in zip(split.names, split.images, split.instances, strict=True):
            assert image.shape == (200, 300, 3) and image.dtype == np.uint8
            assert np.array_equal(inst > 0, masks[stem])


def test_folder_keeps_instance_masks_as_given(folder_root, lizard_pairs):
    source = FolderDataset(str(folder_root), split_sizes=(8, 2, 2))
    stem = lizard_pairs[2][0]  # stored as an .npy instance map
    split = source.split(source.assignment()[stem])
    expected = np.load(folder_root / "masks" / f"{stem}.npy")
    assert np.array_equal(split.instances[split.names.index(stem)], expected)


def test_folder_converts_rgba_and_grayscale_with_a_warning(tmp_path, lizard_pairs, caplog):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i, (stem, image, mask) in enumerate(lizard_pairs[:3]):
        pixels = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]) if i == 0 else image
        pixels = image[..., 0] if i == 1 else pixels
        Image.fromarray(pixels).save(tmp_path / "images" / f"{stem}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "masks" / f"{stem}.png")
    with caplog.at_level(logging.WARNING):
        source = FolderDataset(str(tmp_path), split_sizes=(1, 1, 1))
        images = [source.split(name).images[0] for name in SPLIT_NAMES]
    assert all(image.shape[2] == 3 for image in images)
    assert "RGBA" in caplog.text and "grayscale" in caplog.text


def test_folder_split_csv_fixes_the_split(folder_root):
    stems = sorted(p.stem for p in (folder_root / "images").iterdir())
    wanted = {s: SPLIT_NAMES[i % 3] for i, s in enumerate(stems)}
    write_split_file(folder_root / "split.csv", wanted)
    assert FolderDataset(str(folder_root)).assignment() == wanted


def test_folder_image_without_mask_is_named(folder_root):
    stray = next((folder_root / "masks").iterdir())
    stray.unlink()
    with pytest.raises(DatasetError, match=f"{stray.stem}.*has no mask"):
        FolderDataset(str(folder_root))


def test_folder_missing_images_dir_explains_the_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"images' does not exist; expected <root>/images/"):
        FolderDataset(str(tmp_path))


# -- data module ------------------------------------------------------------------------


def test_datamodule_writes_the_split_it_used_and_crops_training_images(folder_root, tmp_path):
    out = tmp_path / "run" / "split.csv"
    source = FolderDataset(str(folder_root), split_sizes=(8, 2, 2))
    dm = NucleiDataModule(source, batch_size=2, crop_size=64, split_output=str(out))
    dm.setup("fit")
    assert read_split_file(out) == source.assignment()
    assert next(iter(dm.train_dataloader()))["image"].shape == (2, 3, 64, 64)
    assert next(iter(dm.val_dataloader()))["image"].shape[-2:] == (200, 300)
