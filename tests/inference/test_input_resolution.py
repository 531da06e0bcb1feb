"""Inputs at another pixel size than the model's: resampled in, outputs at the input's grid."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from nucleiseg.inference.loading import apply_input_mpp, load_model
from nucleiseg.inference.predictor import predict_files
from nucleiseg.inference.tiling import module_predictor
from nucleiseg.postprocessing.watershed import InstanceSettings, describe_nuclei
from nucleiseg.training.checkpoints import read_checkpoint

from conftest import ROOT


def finetune_checkpoint(smoke_run):
    run_dir, _ = smoke_run
    return run_dir / "checkpoints" / "finetune" / "best.ckpt"


def test_the_checkpoint_stores_the_model_pixel_size(smoke_run):
    state = read_checkpoint(finetune_checkpoint(smoke_run))
    assert state["nucleiseg"]["model"]["mpp"] == 0.5  # synthetic data's nominal size
    module, _ = load_model(finetune_checkpoint(smoke_run))
    assert module.mpp == 0.5


def test_inputs_at_twice_the_model_pixel_size_are_upsampled_for_the_network(smoke_run):
    module, output = load_model(finetune_checkpoint(smoke_run))
    seen = []
    module.stage1.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[-2:]))
    apply_input_mpp(module, 1.0)  # each input pixel is two model pixels wide
    image = torch.rand(1, 3, 50, 70)
    with torch.no_grad():
        prob = module_predictor(module, output)(image)
    assert prob.shape == (1, 1, 50, 70)  # back at the input's grid
    assert tuple(seen[-1]) == (100, 140)  # what the network saw
    apply_input_mpp(module, 0.5)
    with torch.no_grad():
        module_predictor(module, output)(image)
    assert tuple(seen[-1]) == (50, 70)


def test_predict_at_another_pixel_size_writes_outputs_of_the_input_size(smoke_run, tmp_path):
    from PIL import Image

    from nucleiseg.data.resolution import resample_image
    from nucleiseg.data.synthetic import SyntheticNuclei

    module, output = load_model(finetune_checkpoint(smoke_run))
    mpp = apply_input_mpp(module, 1.0)
    source = tmp_path / "in"
    source.mkdir()
    tile = SyntheticNuclei(num_train=1, num_val=1, num_test=1, size=180, seed=3)
    image = resample_image(tile.split("test").images[0], (90, 110))  # at 1.0 µm per pixel
    Image.fromarray(image).save(source / "a.png")
    report = predict_files(
        module_predictor(module, output), [source / "a.png"], tmp_path / "out",
        module.input_settings(), tile=64, overlap=16, batch_size=2, mpp=mpp,
    )  # fmt: skip
    assert not report.failed
    mask = np.asarray(Image.open(tmp_path / "out" / "a_mask.png"))
    instances = np.asarray(Image.open(tmp_path / "out" / "a_instances.png"))
    assert mask.shape == instances.shape == (90, 110)


def test_post_processing_settings_are_converted_to_the_input_pixels():
    settings = InstanceSettings(min_distance=4, min_size=10, h=1.5, markers="h_maxima")
    doubled = settings.scaled(2.0)  # each model pixel is 2 input pixels wide
    assert (doubled.min_distance, doubled.min_size, doubled.h) == (8, 40, 3.0)
    assert doubled.threshold == settings.threshold and doubled.markers == "h_maxima"
    assert settings.scaled(1.0) is settings
    assert settings.scaled(0.1).min_distance == 1  # never below one pixel


def test_the_nuclei_csv_gives_areas_at_the_input_pixel_size(tmp_path):
    import csv

    from nucleiseg.inference.predictor import save_outputs

    instances = np.zeros((30, 30), np.int32)
    instances[2:6, 2:7], instances[10:20, 10:12] = 1, 2  # 20 and 20 pixels
    prob = (instances > 0).astype(np.float32)
    save_outputs(tmp_path / "a", np.zeros((30, 30, 3), np.uint8), prob, instances, 0.5, mpp=0.25)
    rows = list(csv.DictReader((tmp_path / "a_nuclei.csv").open()))
    assert [float(r["area_um2"]) for r in rows] == [1.25, 1.25]  # 20 px of 0.0625 µm²
    save_outputs(tmp_path / "b", np.zeros((30, 30, 3), np.uint8), prob, instances, 0.5)
    assert next(csv.DictReader((tmp_path / "b_nuclei.csv").open()))["area_um2"] == ""


def test_nucleus_areas_are_given_in_square_micrometres():
    instances = np.zeros((20, 20), np.int32)
    instances[2:6, 2:7] = 1  # 20 pixels
    row = describe_nuclei(instances, np.ones((20, 20)), mpp=0.5)[0]
    assert row["area"] == 20 and row["area_um2"] == pytest.approx(5.0)
    assert np.isnan(describe_nuclei(instances, np.ones((20, 20)))[0]["area_um2"])


def test_without_input_mpp_the_model_pixel_size_is_assumed_with_a_warning(smoke_run, caplog):
    module, _ = load_model(finetune_checkpoint(smoke_run))
    with caplog.at_level(logging.WARNING, logger="nucleiseg.inference.loading"):
        assert apply_input_mpp(module, None) == 0.5
    assert "input_mpp not given" in caplog.text
    assert module.input_pixels_per_model_pixel == 1.0
    with pytest.raises(ValueError, match="positive"):
        module.set_input_mpp(-1.0)


def test_resampling_works_under_bf16_autocast(smoke_run):
    from nucleiseg.inference.precision import autocast_predictor

    module, output = load_model(finetune_checkpoint(smoke_run))
    apply_input_mpp(module, 1.0)  # grows on the way in, shrinks (anti-aliased) on the way out
    predict = autocast_predictor(module_predictor(module, output))
    with torch.no_grad():
        assert predict(torch.rand(1, 3, 40, 52)).shape == (1, 1, 40, 52)
    apply_input_mpp(module, 0.25)
    with torch.no_grad():
        assert predict(torch.rand(1, 3, 40, 52)).shape == (1, 1, 40, 52)


def test_an_image_file_states_its_own_pixel_size_where_its_metadata_holds_a_microscopes(
    tmp_path,
):
    import tifffile
    from PIL import Image

    from nucleiseg.data.pixel_size import stated_mpp

    image = np.zeros((16, 16, 3), np.uint8)
    tifffile.imwrite(tmp_path / "cm.tif", image, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "imagej.tif", image, imagej=True, resolution=(4.0, 4.0),
                     metadata={"unit": "micron"})  # fmt: skip
    ome = {"axes": "YXS", "PhysicalSizeX": 0.2425, "PhysicalSizeXUnit": "µm"}
    tifffile.imwrite(tmp_path / "ome.tif", image, ome=True, metadata=ome)
    tifffile.imwrite(tmp_path / "bare.tif", image)
    Image.fromarray(image).save(tmp_path / "editor.png", dpi=(72, 72))  # 353 µm: not a pixel size
    Image.fromarray(image).save(tmp_path / "scanner.png", dpi=(25400 / 0.5, 25400 / 0.5))
    Image.fromarray(image).save(tmp_path / "photo.jpg", dpi=(300, 300))
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    stated = {p.name: stated_mpp(p) for p in sorted(tmp_path.iterdir())}
    assert stated["cm.tif"] == pytest.approx(0.5)
    assert stated["imagej.tif"] == pytest.approx(0.25)
    assert stated["ome.tif"] == pytest.approx(0.2425)
    assert stated["scanner.png"] == pytest.approx(0.5, rel=1e-3)
    for name in ("bare.tif", "editor.png", "photo.jpg", "broken.tif"):
        assert stated[name] is None, name


def test_predict_reads_each_image_at_the_pixel_size_it_states(smoke_run, tmp_path):
    import csv
    import subprocess
    import sys

    import tifffile
    from PIL import Image

    from nucleiseg.data.resolution import resample_image
    from nucleiseg.data.synthetic import SyntheticNuclei

    tile = SyntheticNuclei(num_train=1, num_val=1, num_test=1, size=160, seed=3).split("test")
    native = tile.images[0]  # at the model's 0.5 µm per pixel
    inputs = tmp_path / "in"
    (inputs / "stated").mkdir(parents=True)
    (inputs / "plain").mkdir()
    # the same tissue at 1.0 µm per pixel, saying so in its TIFF tags (pixels per cm)
    tifffile.imwrite(inputs / "stated" / "coarse.tif", resample_image(native, (80, 80)),
                     resolution=(1e4, 1e4), resolutionunit="CENTIMETER")  # fmt: skip
    Image.fromarray(native).save(inputs / "plain" / "native.png")  # states nothing
    out = tmp_path / "pred"
    command = [sys.executable, "-m", "nucleiseg.predict", f"ckpt={finetune_checkpoint(smoke_run)}",
               f"input={inputs}/**/*", f"output={out}", "tiling.tile=64",
               "tiling.overlap=16", "postprocess={threshold: 0.0, min_size: 0}"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-2000:]
    assert "state 1 µm per pixel in their metadata" in log
    assert "input_mpp not given" in log  # for the PNG, which states nothing
    coarse = np.asarray(Image.open(out / "stated" / "coarse_instances.png"))
    assert coarse.shape == (80, 80)  # outputs at the input's grid, under the set's layout
    assert np.asarray(Image.open(out / "plain" / "native_instances.png")).shape == (160, 160)
    # every pixel a nucleus (threshold 0): the CSV's areas in µm² say the size each was read at
    areas = {}
    for name, mpp in (("stated/coarse", 1.0), ("plain/native", 0.5)):
        rows = list(csv.DictReader((out / f"{name}_nuclei.csv").open()))
        for row in rows:
            assert float(row["area_um2"]) == pytest.approx(float(row["area"]) * mpp**2, abs=1e-3)
        areas[name] = sum(float(row["area_um2"]) for row in rows)
    assert areas["stated/coarse"] == pytest.approx(areas["plain/native"]) == 80 * 80 * 1.0
