"""Inference precision: bf16 autocast and ONNX Runtime beside float32, chosen by speed
within a tolerance of float32's probabilities."""

from __future__ import annotations

import pytest
import torch

from nucleiseg.inference.loading import load_model
from nucleiseg.inference.precision import (
    TOLERANCE,
    autocast_predictor,
    choose_precision,
    onnx_predictor,
    sample_tile,
)
from nucleiseg.inference.tiling import module_predictor


@pytest.fixture(scope="module")
def model(smoke_run):
    run_dir, _ = smoke_run
    return load_model(run_dir / "checkpoints" / "finetune" / "best.ckpt")


def test_onnx_runtime_gives_the_float32_probabilities(model, tmp_path):
    module, output = model
    sample = sample_tile(128)
    with torch.no_grad():
        expected = module_predictor(module, output)(sample)
    got = onnx_predictor(module, tmp_path / "m.onnx")(sample)
    assert got.shape == expected.shape and float((got - expected).abs().max()) < 1e-4
    assert list(tmp_path.iterdir()) == [tmp_path / "m.onnx"]


def test_the_exported_model_sees_inputs_at_another_pixel_size_resampled(model, tmp_path):
    from nucleiseg.inference.loading import apply_input_mpp
    from nucleiseg.inference.tiling import at_input_grid

    module, output = model
    sample = sample_tile(96)
    apply_input_mpp(module, 1.0)  # each input pixel two model pixels wide: the module resamples
    try:
        with torch.no_grad():
            expected = module_predictor(module, output)(sample)
        onnx = onnx_predictor(module, tmp_path / "m.onnx")  # it does not: it sees its batch
        got = at_input_grid(onnx, module.input_pixels_per_model_pixel)(sample)
        unresampled = onnx(sample)
    finally:
        apply_input_mpp(module, None)
    assert got.shape == expected.shape
    gap, wrong = float((got - expected).abs().max()), float((unresampled - expected).abs().max())
    assert gap < 1e-3  # here 2e-5: probabilities resampled back, not logits
    assert wrong > 10 * max(gap, 1e-4)  # here 0.014 for the weak smoke model
    assert at_input_grid(onnx, 1.0) is onnx


def test_bf16_autocast_stays_close_to_float32(model):
    module, output = model
    predict = module_predictor(module, output)
    sample = sample_tile(128)
    with torch.no_grad():
        gap = (autocast_predictor(predict)(sample) - predict(sample)).abs().max()
    assert float(gap) < TOLERANCE


def test_auto_takes_a_faster_candidate_only_within_the_tolerance(model):
    module, output = model
    predict = module_predictor(module, output)

    def far_off():  # an "exported model" that is fast but wrong
        return lambda batch: torch.zeros(batch.shape[0], 1, *batch.shape[2:])

    chosen, name = choose_precision(predict, "auto", onnx=far_off)
    assert name in ("32", "bf16")
    assert choose_precision(predict, "32")[1] == choose_precision(predict, 32)[1] == "32"
    with pytest.raises(ValueError, match="use one of"):
        choose_precision(predict, "fp8")
