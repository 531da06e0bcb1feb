"""Re-staining labelled images as another lab's slide (evaluate restain_like=...)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nucleiseg.data.io import DatasetError, read_rgb_image
from nucleiseg.data.stain_normalization import MacenkoNormalizer, stained_fraction
from nucleiseg.wsi.restaining import (
    Chained,
    densest_window,
    restain_datamodule,
    restainer,
    slide_reference,
)

from conftest import compose_config, shared_dataset, smoke_overrides


@pytest.fixture(scope="module")
def slides():
    return shared_dataset("wsi")


def test_densest_window_finds_the_stained_block():
    overview = np.full((200, 300, 3), 245, np.uint8)
    overview[120:160, 30:70] = (110, 60, 140)  # haematoxylin-dark tissue
    overview[10:30, 200:290] = (150, 100, 160)  # a thinner, smaller smear
    assert densest_window(overview, 40) == (120, 30)
    assert densest_window(overview, 500) == (0, 0)  # larger than the overview: all of it


def test_a_slides_reference_is_its_densest_tissue(slides):
    import tiffslide

    path = slides / "CMU-1-Small-Region.svs"
    region = slide_reference(path)
    with tiffslide.TiffSlide(path) as handle:
        overview = np.asarray(handle.get_thumbnail((2048, 2048)).convert("RGB"))
    assert region.shape == (1024, 1024, 3) and region.dtype == np.uint8
    # a quarter of the skin biopsy's overview is stained; the chosen window is mostly tissue
    assert stained_fraction(region).mean() > 2 * stained_fraction(overview).mean()
    assert stained_fraction(region).mean() > 0.5


@pytest.mark.parametrize("slide", ["CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs"])
def test_restained_images_take_the_reference_slides_stains(slides, tnbc_root, slide):
    restain = restainer(slides / slide)
    image = read_rgb_image(tnbc_root / "Slide_01" / "01_1.png")
    target = np.asarray(restain.stain_matrix)
    own = np.asarray(MacenkoNormalizer.fit(image).stain_matrix)
    after = np.asarray(MacenkoNormalizer.fit(restain(image)).stain_matrix)
    assert np.abs(own - target).max() > 0.15  # another lab's stains
    assert np.abs(after - target).max() < 0.05  # now the slide's
    assert restain(image).shape == image.shape


def test_chained_restains_before_the_models_own_normalisation():
    seen = []
    chained = Chained(lambda im: seen.append("restain") or im + 1,
                      lambda im: seen.append("model") or im * 2)  # fmt: skip
    assert chained(np.ones(2, int)).tolist() == [4, 4] and seen == ["restain", "model"]
    assert Chained(lambda im: im + 1)(np.zeros(1, int)).tolist() == [1]


def test_a_missing_or_blank_reference_is_refused_naming_it(tmp_path):
    with pytest.raises(DatasetError, match="restain_like .*nowhere.png' does not exist"):
        restainer(tmp_path / "nowhere.png")
    blank = tmp_path / "glass.png"
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(blank)
    with pytest.raises(DatasetError, match="restain_like .*glass.png': cannot fit its stains"):
        restainer(blank)


def test_evaluate_scores_restained_images_and_records_the_stains(smoke_run, tnbc_root, tmp_path):
    from nucleiseg.evaluate import evaluate
    from nucleiseg.inference.loading import load_model, native_grid_datamodule

    run_dir, _ = smoke_run
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    reference = tnbc_root / "Slide_01" / "01_1.png"
    base = [*smoke_overrides(), f"+ckpt={ckpt}", "+whole_dataset=false"]
    plain = evaluate(compose_config(base, tmp_path / "plain"))
    cfg = compose_config([*base, f"+restain_like={reference}"], tmp_path / "re")
    restained = evaluate(cfg)
    assert plain["restained_like"] is None
    record = restained["restained_like"]
    assert record["path"] == str(reference.resolve())
    fitted = MacenkoNormalizer.fit(read_rgb_image(reference))
    assert np.allclose(record["stain_matrix"], fitted.stain_matrix)
    assert restained["images"] == plain["images"]

    # what the model is given: each test image with the reference's stains
    module, _ = load_model(ckpt)
    datamodule = native_grid_datamodule(cfg.dataset, module)
    datamodule.setup("test")
    raw = np.asarray(datamodule.samples["test"].images[0])
    restain_datamodule(datamodule, module.stain_normalizer, reference)
    given = np.asarray(datamodule.samples["test"].images[0])
    assert np.array_equal(given, fitted(raw)) and np.abs(given.astype(int) - raw).mean() > 5
