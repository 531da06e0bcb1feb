"""Checkpoints written before the package layout changed keep loading: the model config they
carry names the modules of that time (tests/fixtures/pre_layout_checkpoint_config.json is the
``nucleiseg`` section of a finetune checkpoint written by the flat layout's smoke run)."""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
from omegaconf import OmegaConf

from nucleiseg.inference.loading import load_model
from nucleiseg.inference.tiling import module_predictor
from nucleiseg.training.builders import build_modules

from conftest import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "pre_layout_checkpoint_config.json"


def stored_targets(config) -> set[str]:
    if isinstance(config, dict):
        own = {config["_target_"]} if "_target_" in config else set()
        return own.union(*(stored_targets(v) for v in config.values()))
    if isinstance(config, list):
        return set().union(*(stored_targets(v) for v in config))
    return set()


def test_a_checkpoint_from_the_flat_layout_loads_and_predicts(tmp_path, caplog):
    stored = json.loads(FIXTURE.read_text())
    assert "nucleiseg.lightning.TwoStageModule" in stored_targets(stored)  # what it names
    weights = build_modules(OmegaConf.create(stored))["two_stage"].state_dict()
    checkpoint = tmp_path / "pre_layout.ckpt"
    torch.save({"state_dict": weights, "nucleiseg": stored, "epoch": 1}, checkpoint)

    with caplog.at_level(logging.WARNING, logger="nucleiseg.inference.loading"):
        module, output = load_model(checkpoint)

    assert output == "two_stage" and module.phase == "finetune"
    # written before checkpoints stored model.mpp: loads, fed at the input's own resolution
    assert "stores no pixel size" in caplog.text and module.mpp is None
    assert module.input_pixels_per_model_pixel == 1.0
    # written before output channels were stored: the paper's binary model, post-processed
    # by the distance-transform watershed as before
    assert "channels" not in stored["model"] and module.channels == ("nucleus",)
    assert module.instance_settings.channels == ("nucleus",)
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    image = torch.from_numpy(np.random.default_rng(0).random((1, 3, 48, 40), dtype=np.float32))
    with torch.no_grad():
        probability = module_predictor(module, output)(image)
    assert probability.shape == (1, 1, 48, 40)
    assert float(probability.min()) >= 0 and float(probability.max()) <= 1
