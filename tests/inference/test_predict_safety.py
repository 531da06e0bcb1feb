"""predict on folders users cannot afford to lose: nothing overwritten, nothing mixed, one bad
file never stops the rest, and every image mode read as the colours it shows."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from nucleiseg.data.io import DatasetError, read_rgb_image
from nucleiseg.inference.predictor import OutputConflictError, expand_inputs, predict_files
from nucleiseg.postprocessing.watershed import InstanceSettings

SETTINGS = InstanceSettings(threshold=0.5)


def brightness(batch: torch.Tensor) -> torch.Tensor:
    """A stand-in model: probability = mean intensity (nuclei are whatever is bright)."""
    return batch.mean(dim=1, keepdim=True)


def tile(path, seed=0, size=(40, 48)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def run(inputs, out, **kwargs):
    return predict_files(brightness, inputs, out, SETTINGS, tile=64, overlap=16, **kwargs)


def test_predict_into_its_own_input_folder_is_refused_and_every_input_is_unchanged(tmp_path):
    tile(tmp_path / "a.png")
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(tmp_path / "a_mask.png")  # ground truth
    before = snapshot(tmp_path)
    with pytest.raises(OutputConflictError, match="holds input images"):
        run(expand_inputs(str(tmp_path)), tmp_path)
    assert snapshot(tmp_path) == before


def test_same_names_in_different_folders_keep_both_outputs(tmp_path):
    for slide, seed in (("slide1", 1), ("slide2", 2)):
        (tmp_path / "slides" / slide).mkdir(parents=True)
        tile(tmp_path / "slides" / slide / "tile_0.png", seed)
    inputs = expand_inputs(str(tmp_path / "slides" / "**" / "*.png"))
    report = run(inputs, tmp_path / "pred")
    assert not report.failed
    first = (tmp_path / "pred" / "slide1" / "tile_0_mask.png").read_bytes()
    second = (tmp_path / "pred" / "slide2" / "tile_0_mask.png").read_bytes()
    assert first != second  # two different images, two outputs


def test_two_inputs_with_one_stem_in_one_folder_are_refused(tmp_path):
    tile(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((40, 48, 3), np.uint8))
    with pytest.raises(OutputConflictError, match="same outputs"):
        run(expand_inputs(str(tmp_path)), tmp_path / "pred")


def test_earlier_outputs_are_kept_unless_overwrite(tmp_path):
    tile(tmp_path / "in.png")
    inputs = [tmp_path / "in.png"]
    run(inputs, tmp_path / "pred")
    before = snapshot(tmp_path / "pred")
    with pytest.raises(OutputConflictError, match="overwrite=true"):
        run(inputs, tmp_path / "pred")
    assert snapshot(tmp_path / "pred") == before
    assert not run(inputs, tmp_path / "pred", overwrite=True).failed
    assert not list((tmp_path / "pred").glob(".*.tmp"))  # written via temp file and rename


def test_bad_files_are_named_and_skipped_while_the_good_ones_are_predicted(tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    tile(folder / "good.png")
    (folder / "broken.png").write_bytes(b"not an image")
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")  # tiny file, 400 M pixels
    tifffile.imwrite(folder / "huge.tif", np.zeros((300, 400, 3), np.uint8))
    Image.new("RGB", (48, 40), "white").save(folder / "oom.png")

    def runs_out_of_memory_on_white(batch):
        if bool((batch == 1.0).all()):
            raise MemoryError("cannot allocate")
        return brightness(batch)

    report = predict_files(runs_out_of_memory_on_white, expand_inputs(str(folder)),
                           tmp_path / "pred", SETTINGS, tile=64, overlap=16,
                           max_pixels=100_000)  # fmt: skip
    failed = {path.name: reason for path, reason in report.failed}
    assert set(failed) == {"broken.png", "bomb.png", "huge.tif", "oom.png"}
    assert "max_pixels" in failed["huge.tif"] and "MemoryError" in failed["oom.png"]
    assert (tmp_path / "pred" / "good_mask.png").is_file()


@pytest.mark.parametrize("mode", ["P", "CMYK", "1", "LA", "YCbCr", "RGBA"])
def test_every_image_mode_is_read_as_the_rgb_it_shows(tmp_path, mode):
    rgb = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]], [[255, 255, 255], [0, 0, 0]]],
                                   np.uint8))  # fmt: skip
    image = rgb.convert(mode)
    suffix = ".jpg" if mode in ("CMYK", "YCbCr") else ".png"
    path = tmp_path / f"x{suffix}"
    if suffix == ".jpg":  # full-resolution chroma: 4:2:0 would average the 2x2 colours
        image.save(path, quality=100, subsampling=0)
    else:
        image.save(path)
    got = read_rgb_image(path)
    assert got.shape == (2, 2, 3) and got.dtype == np.uint8
    shown = np.asarray(rgb, dtype=float)  # what each file shows, known without Pillow's reader
    luma = shown @ [0.299, 0.587, 0.114]  # ITU-R 601-2, how gray modes store colour
    if mode in ("P", "RGBA"):  # lossless colour
        np.testing.assert_array_equal(got, shown)
    elif mode == "LA":
        np.testing.assert_allclose(got, np.repeat(luma[..., None], 3, axis=2), atol=1)
    elif mode == "1":  # bilevel: black and white stay, as 0 and 255 (not 0 and 1)
        assert set(np.unique(got)) <= {0, 255}
        assert (got[1, 0] == 255).all() and (got[1, 1] == 0).all()
    else:  # CMYK and YCbCr JPEGs: the colours, within JPEG's loss
        np.testing.assert_allclose(got, shown, atol=12)


def test_a_missing_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_rgb_image(tmp_path / "none.png")
