"""Macenko stain normalisation (torchstain): undoes stain changes on real H&E, refuses bad
settings clearly, and travels in the checkpoint so evaluate and predict normalise as
training did."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nucleiseg.data.stain_normalization import (
    MacenkoNormalizer,
    fit_normalizer,
    normalizer_from_config,
)

from conftest import compose_config, smoke_overrides


def _tnbc_images(root, *indices):
    files = sorted(root.glob("Slide_*/*.png"))
    return [np.asarray(Image.open(files[i]).convert("RGB")) for i in indices]


def test_macenko_normalisation_undoes_a_stain_change_on_real_tnbc(tnbc_root):
    import albumentations as A

    reference, image = _tnbc_images(tnbc_root, 0, 30)
    normalize = MacenkoNormalizer.fit(reference)
    recolour = A.HEStain(method="preset", preset="e_heavy", intensity_scale_range=(1.2, 1.2),
                         intensity_shift_range=(0.0, 0.0), p=1.0)  # fmt: skip
    recoloured = recolour(image=image)["image"]
    change = np.abs(recoloured.astype(float) - image).mean()
    assert change > 5  # the augmentation did change the stains
    after = np.abs(normalize(recoloured).astype(float) - normalize(image)).mean()
    assert after < 0.5 * change, (change, after)
    # the reference maps (almost) onto itself; shapes and dtype are kept
    assert normalize(image).shape == image.shape and normalize(image).dtype == np.uint8
    assert np.abs(normalize(reference).astype(float) - reference).mean() < 5


def test_blank_images_and_bad_settings_get_clear_errors(tmp_path):
    blank = np.full((64, 64, 3), 245, np.uint8)
    with pytest.raises(ValueError, match="reference has 0 stained pixels"):
        MacenkoNormalizer.fit(blank)
    with pytest.raises(ValueError, match="stain_normalization.method is 'reinhard'"):
        fit_normalizer({"method": "reinhard"}, lambda: blank)
    with pytest.raises(FileNotFoundError, match="stain_normalization.reference '.*none.png'"):
        fit_normalizer({"reference": str(tmp_path / "none.png")}, lambda: blank)
    with pytest.raises(ValueError, match="no fitted stain_matrix"):
        normalizer_from_config({"method": "macenko", "stain_matrix": None})
    with pytest.raises(ValueError, match="must be 3x2"):
        normalizer_from_config({"stain_matrix": [[1, 2]], "max_concentrations": [1, 1]})
    rng = np.random.default_rng(0)
    tissue = rng.integers(40, 200, (64, 64, 3)).astype(np.uint8)
    normalize = MacenkoNormalizer.fit(tissue)
    assert np.array_equal(normalize(blank), blank)  # nothing to estimate: left as it is
    with pytest.raises(ValueError, match="RGB uint8"):
        normalize(tissue.astype(np.float32))


def test_normalisation_travels_in_the_checkpoint_and_predict_matches_evaluate(tmp_path):
    from nucleiseg.evaluate import evaluate
    from nucleiseg.inference.loading import load_model
    from nucleiseg.inference.predictor import predict_files
    from nucleiseg.inference.tiling import module_predictor, predict_tiled
    from nucleiseg.training.orchestration import train

    run_dir = tmp_path / "run"
    results = train(compose_config(smoke_overrides("+stain_normalization=macenko"), run_dir))
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    module, output = load_model(ckpt)
    normalize = module.stain_normalizer
    assert isinstance(normalize, MacenkoNormalizer)

    # fitted at training start to the first training image
    from hydra.utils import instantiate

    cfg = compose_config(smoke_overrides())
    datamodule = instantiate(cfg.dataset.datamodule)
    datamodule.setup("fit")
    first = np.asarray(datamodule.samples["train"].images[0])
    assert normalize == MacenkoNormalizer.fit(first)

    # evaluate rebuilds it from the checkpoint alone and scores as training did
    with_ckpt = [*smoke_overrides(), f"+ckpt={ckpt}", "+whole_dataset=false"]
    scored = evaluate(compose_config(with_ckpt, tmp_path / "eval"))
    assert scored["test"]["two_stage"]["dice"] == pytest.approx(
        results["test"]["two_stage"]["dice"], abs=1e-6
    )

    # predict on a raw test image gives the probabilities evaluate's inputs give
    datamodule.setup("test")
    raw = np.asarray(datamodule.samples["test"].images[0])
    datamodule.set_stain_normalizer(normalize)  # what evaluate does after load_model
    evaluated_input = np.asarray(datamodule.samples["test"].images[0])
    assert np.abs(evaluated_input.astype(int) - raw).mean() > 1
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(raw).save(inputs / "tile.png")
    from nucleiseg.postprocessing.watershed import InstanceSettings

    report = predict_files(module_predictor(module, output), [inputs / "tile.png"],
                           tmp_path / "pred", InstanceSettings(), tile=64, overlap=16,
                           save_probability=True, normalize=normalize)  # fmt: skip
    assert not report.failed
    predicted = np.load(tmp_path / "pred" / "tile_probability.npy")
    predict = module_predictor(module, output)
    expected = predict_tiled(predict, evaluated_input, tile=64, overlap=16)
    unnormalized = predict_tiled(predict, raw, tile=64, overlap=16)
    assert np.abs(predicted - expected).max() < 1e-5
    assert np.abs(predicted - unnormalized).max() > 1e-3  # the normalisation was applied

    # export writes the fitted values beside the graph, which does not hold them
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT

    before = [p.name for p in tmp_path.iterdir()]
    out = tmp_path / "model.pt"
    command = [sys.executable, "-m", "nucleiseg.export", f"ckpt={ckpt}", "format=torchscript",
               f"output={out}"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(  # no log where it ran
        ["model.pt", "model.pt.stain_normalization.json", *before]
    )
    side = json.loads((tmp_path / "model.pt.stain_normalization.json").read_text())
    assert normalizer_from_config(side) == normalize
