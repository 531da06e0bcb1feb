"""Whole slides: pixel size and level, tissue, seams, resumable QuPath outputs, real slides."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shapely.geometry import shape
from skimage.draw import disk as draw_disk
from skimage.draw import polygon as draw_polygon

from nucleiseg.data.io import DatasetError
from nucleiseg.postprocessing.watershed import InstanceSettings, instances_from_probability
from nucleiseg.wsi.outputs import SlideOutputConflict
from nucleiseg.wsi.run import predict_slide
from nucleiseg.wsi.seams import tile_grid
from nucleiseg.wsi.slide import SlideReader, choose_level, is_slide

from conftest import ROOT, shared_dataset

BACKGROUND, NUCLEUS = (230, 180, 210), (80, 40, 120)  # pink stroma, purple nuclei
SETTINGS = InstanceSettings(threshold=0.5, min_size=10, min_distance=4)


def darkness(batch: torch.Tensor) -> torch.Tensor:
    """A stand-in nucleus detector with a known answer: dark pixels are nucleus."""
    return torch.sigmoid((0.45 - batch.mean(dim=1, keepdim=True)) * 40)


def write_pyramid(path: Path, image: np.ndarray, mpp: float, levels: int = 1) -> Path:
    """A tiled, lossless pyramidal TIFF with its pixel size in the resolution tags."""
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            step = 2**level
            tif.write(image[::step, ::step], tile=(64, 64), compression="zlib",
                      photometric="rgb", subfiletype=1 if level else 0,
                      resolution=(1e4 / (mpp * step), 1e4 / (mpp * step)),
                      resolutionunit="CENTIMETER")  # fmt: skip
    return path


def known_nuclei(height: int = 300, width: int = 420, seed: int = 0) -> np.ndarray:
    """Separate round nuclei (radius 5-11) at random places, many across tile seams."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.int32)
    taken = np.zeros_like(labels, bool)
    label = 0
    for _ in range(400):
        r = int(rng.integers(5, 12))
        y, x = int(rng.integers(r + 1, height - r - 1)), int(rng.integers(r + 1, width - r - 1))
        rr, cc = draw_disk((y, x), r + 2, shape=labels.shape)
        if taken[rr, cc].any():
            continue
        label += 1
        taken[rr, cc] = True
        rr, cc = draw_disk((y, x), r, shape=labels.shape)
        labels[rr, cc] = label
    return labels


def painted(labels: np.ndarray) -> np.ndarray:
    image = np.empty((*labels.shape, 3), np.uint8)
    image[:] = BACKGROUND
    image[labels > 0] = NUCLEUS
    return image


def all_tissue(path: Path) -> Path:
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(path)
    return path


def run_slide(slide: Path, out: Path, **options):
    reader = SlideReader(slide, model_mpp=0.5)
    try:
        tissue = all_tissue(out.parent / "tissue.png")
        return predict_slide(reader, darkness, SETTINGS, out / slide.stem, {"test": True},
                             tissue_mask=tissue, **options)  # fmt: skip
    finally:
        reader.close()


def features(path: Path) -> list[dict]:
    return json.loads(path.read_text())["features"]


def test_nuclei_cut_by_tiles_are_kept_once_as_whole_image_post_processing_finds_them(tmp_path):
    labels = known_nuclei()
    slide = write_pyramid(tmp_path / "known.tif", painted(labels), mpp=0.5)
    out = tmp_path / "out"
    result = run_slide(slide, out, tile=96, margin=24)  # inner parts of 48 px: many seams
    whole = instances_from_probability((labels > 0).astype(np.float32), SETTINGS)
    found = features(out / "known.geojson")
    assert result.nuclei == len(found) == whole.max() == labels.max()
    matched = set()
    for feature in found:
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        rr, cc = draw_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape=labels.shape)
        drawn = np.zeros(labels.shape, bool)
        drawn[rr, cc] = True
        label = np.bincount(whole[drawn]).argmax()
        truth = whole == label
        assert (drawn & truth).sum() / (drawn | truth).sum() > 0.9
        matched.add(label)
    assert len(matched) == len(found)  # no nucleus twice at a seam
    seams = tile_grid(labels.shape, 96, 24)
    assert len(seams) * len(seams[0]) == 7 * 9


def test_a_killed_run_continues_to_the_same_geojson(tmp_path):
    slide = write_pyramid(tmp_path / "known.tif", painted(known_nuclei(seed=1)), mpp=0.5)
    run_slide(slide, tmp_path / "whole", tile=96, margin=24)
    stopped = run_slide(slide, tmp_path / "resumed", tile=96, margin=24, stop_after_rows=3)
    assert stopped.outputs == [] and not (tmp_path / "resumed" / "known.geojson").exists()
    partial = tmp_path / "resumed" / ".known.partial"
    with (partial / "features.jsonl").open("a") as handle:  # killed while writing a row
        handle.write('{"type": "Feature", "half')
    run_slide(slide, tmp_path / "resumed", tile=96, margin=24)
    for name in ("known.geojson", "known_nuclei.csv"):
        assert (tmp_path / "resumed" / name).read_bytes() == (
            tmp_path / "whole" / name
        ).read_bytes()
    assert not partial.exists()


def test_outputs_are_never_replaced_without_overwrite(tmp_path):
    slide = write_pyramid(tmp_path / "known.tif", painted(known_nuclei(seed=2)), mpp=0.5)
    run_slide(slide, tmp_path / "out", tile=96, margin=24)
    before = (tmp_path / "out" / "known.geojson").read_bytes()
    with pytest.raises(SlideOutputConflict, match="overwrite=true"):
        run_slide(slide, tmp_path / "out", tile=96, margin=24)
    assert (tmp_path / "out" / "known.geojson").read_bytes() == before
    run_slide(slide, tmp_path / "out", tile=96, margin=24, overwrite=True)


def test_the_level_at_or_finer_than_the_model_pixel_size_is_read(tmp_path):
    labels = known_nuclei(256, 256, seed=3)
    slide = write_pyramid(tmp_path / "pyr.tif", painted(labels), mpp=0.25, levels=3)
    assert is_slide(slide) and not is_slide(
        write_pyramid(tmp_path / "flat.tif", painted(labels), 0.25)
    )
    reader = SlideReader(slide, model_mpp=0.5)  # level 1 is 0.5 µm
    assert reader.level == 1 and reader.size == (128, 128)
    assert (reader.read(0, 0, 128, 128) == painted(labels)[::2, ::2]).all()
    assert SlideReader(slide, model_mpp=0.7).level == 1  # level 2 (1.0 µm) would lose detail
    assert SlideReader(slide, model_mpp=0.2).level == 0
    assert choose_level([1.0, 2.0, 4.0], 0.25, 1.0) == 2


def test_a_model_grid_region_is_resampled_from_the_level(tmp_path):
    labels = known_nuclei(256, 256, seed=4)
    slide = write_pyramid(tmp_path / "pyr.tif", painted(labels), mpp=0.25)
    reader = SlideReader(slide, model_mpp=0.5)  # one level: read at 0.25, shrunk 2x
    region = reader.read(10, 20, 50, 60)
    assert region.shape == (50, 60, 3)
    reference = painted(labels)[20:120, 40:160].reshape(50, 2, 60, 2, 3).mean(axis=(1, 3))
    assert np.abs(region.astype(float) - reference).mean() < 12


def test_tissue_only_tiles_go_to_the_network(tmp_path):
    labels = known_nuclei(512, 512, seed=5)
    image = painted(labels)
    image[:, 256:] = 245  # glass: no tissue on the right half
    slide = write_pyramid(tmp_path / "half.tif", image, mpp=0.5)
    seen = []

    def counting(batch):
        seen.append(batch.shape[0])
        return darkness(batch)

    reader = SlideReader(slide, model_mpp=0.5)
    result = predict_slide(reader, counting, SETTINGS, tmp_path / "out" / "half", {}, tile=128,
                           margin=16)  # fmt: skip
    # inner parts of 96 px: 6 x 6 tiles; tissue in the three columns left of x = 288
    assert result.tiles == 36 and result.tissue_tiles == 18
    assert sum(seen) == result.tissue_tiles
    tissue = np.asarray(Image.open(tmp_path / "out" / "half_tissue.png")) > 0
    assert tissue[:, : tissue.shape[1] // 3].mean() > 0.9 and tissue[:, -3:].mean() == 0


def test_real_slides_end_to_end_as_qupath_detections(tmp_path):
    root = shared_dataset("wsi")
    cmu = root / "CMU-1-Small-Region.svs"
    reader = SlideReader(cmu, model_mpp=0.5)
    assert reader.mpp == pytest.approx(0.499) and reader.level == 0
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255  # a third of each side: the test stays short
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result = predict_slide(reader, darkness, SETTINGS, tmp_path / "CMU", {}, tile=512, margin=48,
                           tissue_mask=tmp_path / "mask.png")  # fmt: skip
    width, height = reader.handle.dimensions
    found = features(tmp_path / "CMU.geojson")
    rows = list(csv.DictReader((tmp_path / "CMU_nuclei.csv").open()))
    assert result.nuclei == len(found) == len(rows) > 200
    for feature in found:
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        assert properties["classification"]["name"] == "Nucleus"
        polygon = shape(feature["geometry"])
        assert polygon.is_valid and polygon.geom_type == "Polygon"
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1]  # closed
        x0, y0, x1, y1 = polygon.bounds
        assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height
    row = rows[0]
    assert float(row["area_um2"]) == pytest.approx(float(row["area_px"]) * 0.499**2, rel=1e-2)
    assert float(row["centroid_x_um"]) == pytest.approx(
        float(row["centroid_x_px"]) * 0.499, rel=1e-3
    )
    for name in ("CMU_tissue.png", "CMU_overlay.png"):
        assert (tmp_path / name).is_file()


def test_a_slide_without_a_pixel_size_needs_input_mpp(tmp_path):
    tcga = shared_dataset("wsi") / "TCGA-CR-7395-01A-01-TS1.svs"
    with pytest.raises(DatasetError, match="input_mpp="):
        SlideReader(tcga, model_mpp=0.5)
    reader = SlideReader(tcga, model_mpp=0.5, input_mpp=0.25)  # JPEG 2000, two levels
    assert reader.level == 1 and reader.size == (1784, 2222)
    assert reader.read(800, 1000, 64, 64).std() > 5  # decoded tissue, not a blank
    mask = np.zeros((8, 8), np.uint8)
    mask[3:5, 3:5] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result = predict_slide(reader, darkness, SETTINGS, tmp_path / "TCGA", {}, tile=512, margin=48,
                           tissue_mask=tmp_path / "mask.png")  # fmt: skip
    found = features(tmp_path / "TCGA.geojson")
    assert result.nuclei == len(found) > 0
    assert all(shape(f["geometry"]).bounds[2] <= 4443 for f in found)  # level-0 pixels


def test_predict_command_refuses_a_slide_without_mpp_and_goes_on(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    root = shared_dataset("wsi")
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    mask = np.zeros((16, 16), np.uint8)
    mask[4:6, 4:6] = 255  # a small part of each slide: the test stays short
    Image.fromarray(mask).save(tmp_path / "mask.png")
    command = [sys.executable, "-m", "nucleiseg.predict", f"ckpt={ckpt}", f"input={root}",
               f"output={tmp_path / 'out'}", "tiling.tile=512", "tiling.overlap=32",
               f"slide.tissue_mask={tmp_path / 'mask.png'}", "precision=32"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1  # TCGA has no pixel size
    printed = done.stdout + done.stderr
    assert "TCGA-CR-7395-01A-01-TS1.svs" in printed and "input_mpp=" in printed
    cmu = json.loads((tmp_path / "out" / "CMU-1-Small-Region.geojson").read_text())
    assert cmu["type"] == "FeatureCollection"
    assert not (tmp_path / "out" / "TCGA-CR-7395-01A-01-TS1.geojson").exists()


def test_a_corrupt_slide_is_refused_by_name_with_both_readers_reasons(tmp_path):
    broken = tmp_path / "broken.svs"
    broken.write_bytes((shared_dataset("wsi") / "CMU-1-Small-Region.svs").read_bytes()[:5000])
    with pytest.raises(DatasetError, match=r"broken\.svs.*tiffslide.*openslide"):
        SlideReader(broken, model_mpp=0.5)


def test_input_mpp_against_the_slide_s_own_is_warned_about(caplog):
    import logging

    cmu = shared_dataset("wsi") / "CMU-1-Small-Region.svs"
    with caplog.at_level(logging.WARNING, logger="nucleiseg.wsi.slide"):
        reader = SlideReader(cmu, model_mpp=0.5, input_mpp=0.25)
    assert "says 0.499" in caplog.text and reader.mpp == 0.25
    assert reader.size == (1484, 1110)  # read as 40x: half the model pixels per slide pixel


def test_geojson_can_be_gzipped(tmp_path):
    import gzip

    slide = write_pyramid(tmp_path / "known.tif", painted(known_nuclei(seed=6)), mpp=0.5)
    result = run_slide(slide, tmp_path / "out", tile=96, margin=24, gz=True)
    with gzip.open(tmp_path / "out" / "known.geojson.gz", "rt") as handle:
        assert len(json.load(handle)["features"]) == result.nuclei > 0


SEAM = (150, 110, 170)  # the painted boundary ring of each nucleus


def nucleus_and_contour(batch: torch.Tensor) -> torch.Tensor:
    """A stand-in instance-aware detector: nucleus = dark or ring pixels, contour = ring."""
    seam = torch.tensor(SEAM, dtype=batch.dtype).view(1, 3, 1, 1) / 255
    ring = (batch - seam).abs().amax(dim=1, keepdim=True)
    nucleus = torch.sigmoid((0.65 - batch.mean(dim=1, keepdim=True)) * 40)
    return torch.cat([nucleus, torch.sigmoid((0.04 - ring) * 200)], dim=1)


def test_an_instance_aware_model_splits_touching_nuclei_across_a_slide(tmp_path):
    from skimage.segmentation import find_boundaries

    labels = np.zeros((200, 300), np.int32)
    for index, (y, x) in enumerate((y, x) for y in range(10, 190, 30) for x in range(10, 270, 45)):
        labels[y : y + 12, x : x + 12] = 2 * index + 1  # two 12 px nuclei touching along an edge
        labels[y : y + 12, x + 12 : x + 24] = 2 * index + 2
    image = painted(labels)
    image[find_boundaries(labels, mode="inner")] = SEAM
    slide = write_pyramid(tmp_path / "pairs.tif", image, mpp=0.5)
    reader = SlideReader(slide, model_mpp=0.5)
    tissue = all_tissue(tmp_path / "tissue.png")
    try:
        channels = ("nucleus", "contour")
        aware = InstanceSettings(threshold=0.5, min_size=10, marker_threshold=0.5,
                                 channels=channels)  # fmt: skip
        result = predict_slide(reader, nucleus_and_contour, aware, tmp_path / "aware" / "pairs",
                               {}, tile=128, margin=24, tissue_mask=tissue)  # fmt: skip
        binary = InstanceSettings(threshold=0.5, min_size=10, markers="h_maxima", h=1.0)
        merged = predict_slide(reader, nucleus_and_contour, binary, tmp_path / "binary" / "pairs",
                               {}, tile=128, margin=24, tissue_mask=tissue)  # fmt: skip
    finally:
        reader.close()
    assert result.nuclei == labels.max() == 72  # every pair split, none lost at tile seams
    assert merged.nuclei == labels.max() // 2  # the nucleus channel alone: pairs merge
    areas = [shape(f["geometry"]).area for f in features(tmp_path / "aware" / "pairs.geojson")]
    assert min(areas) > 0.8 * 144 and max(areas) < 1.2 * 144
