"""The numeric precision of inference: float32, or bf16 autocast where it is fast and close.

``precision=auto`` takes bf16 autocast only where the CPU computes bf16 natively (emulated
bf16 is slower than float32) and only when it keeps the probabilities of a sample tile
within ``TOLERANCE`` of float32's; otherwise float32.
"""

from __future__ import annotations

import logging

import torch

from nucleiseg.inference.tiling import Predictor

log = logging.getLogger(__name__)
TOLERANCE = 1e-2
PRECISIONS = ("auto", "32", "bf16")


def autocast_predictor(predict: Predictor, device: str = "cpu") -> Predictor:
    """``predict`` under bf16 autocast, returning float32 probabilities."""

    def under_autocast(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            return predict(batch).float()

    return under_autocast


def sample_tile(size: int = 256) -> torch.Tensor:
    """An H&E-like tile (the synthetic generator's) as a (1, 3, size, size) batch."""
    from nucleiseg.data.synthetic import SyntheticNuclei

    image = SyntheticNuclei(num_train=1, num_val=1, num_test=1, size=size, seed=0)
    array = image.split("test").images[0]
    return torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255


def choose_precision(
    predict: Predictor, precision: str = "auto", device: str = "cpu"
) -> tuple[Predictor, str]:
    """The predictor to use and its precision (``32`` or ``bf16``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "32":
        return predict, "32"
    fast = autocast_predictor(predict, device)
    if precision == "bf16":
        return fast, "bf16"
    if torch.device(device).type == "cpu":
        from nucleiseg.training.precision import native_cpu_bf16

        if not native_cpu_bf16():
            return predict, "32"
    sample = sample_tile().to(device)
    with torch.no_grad():
        gap = float((fast(sample) - predict(sample).float()).abs().max())
    if gap > TOLERANCE:
        log.info("bf16 moves probabilities by up to %.3g (> %g): float32 used", gap, TOLERANCE)
        return predict, "32"
    log.info("bf16 autocast: probabilities within %.2g of float32 on a sample tile", gap)
    return fast, "bf16"
