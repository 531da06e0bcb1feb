"""How inference computes: float32, bf16 autocast, or the exported model in ONNX Runtime.

``precision=auto`` times the candidates on a sample tile and takes the fastest that keeps
its probabilities within ``TOLERANCE`` of float32's (bf16 only where the CPU computes it
natively: emulated bf16 is slower than float32).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from nucleiseg.inference.tiling import Predictor
from nucleiseg.training.precision import native_cpu_bf16

log = logging.getLogger(__name__)
TOLERANCE = 1e-2
PRECISIONS = ("auto", "32", "bf16", "onnx")
SAMPLE_SIZE = 512


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
    predict: Predictor,
    precision: str = "auto",
    device: str = "cpu",
    onnx: Callable[[], Predictor] | None = None,
) -> tuple[Predictor, str]:
    """The predictor to use and its precision (``32``, ``bf16`` or ``onnx``).

    ``auto`` times every candidate on a sample tile and takes the fastest whose
    probabilities stay within ``TOLERANCE`` of float32's: bf16 autocast where the CPU
    computes bf16 natively (emulated bf16 is slower), and ONNX Runtime when ``onnx``
    (which exports the model and returns its predictor) is given."""
    precision = str(precision)  # precision=32 on a command line arrives as a number
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "32":
        return predict, "32"
    if precision == "bf16":
        return autocast_predictor(predict, device), "bf16"
    if precision == "onnx":
        if onnx is None:
            raise ValueError("precision=onnx runs the exported model on the CPU: use device=cpu")
        return onnx(), "onnx"
    candidates: dict[str, Predictor] = {}
    if torch.device(device).type != "cpu" or native_cpu_bf16():
        candidates["bf16"] = autocast_predictor(predict, device)
    if onnx is not None:
        try:
            candidates["onnx"] = onnx()
        except Exception as err:  # no onnxruntime, or a model it cannot take: not a candidate
            log.info("ONNX Runtime not used (%s: %s)", type(err).__name__, err)
    sample = sample_tile(SAMPLE_SIZE).to(device)
    reference, float32_time = _timed(predict, sample)
    chosen, name, best_time = predict, "32", float32_time
    for label, candidate in candidates.items():
        probs, seconds = _timed(candidate, sample)
        gap = float((probs - reference).abs().max())
        log.info(
            "%s: %.2f s per %d px sample tile against float32's %.2f s; probabilities within "
            "%.2g of float32's", label, seconds, SAMPLE_SIZE, float32_time, gap,
        )  # fmt: skip
        if gap <= TOLERANCE and seconds < best_time:
            chosen, name, best_time = candidate, label, seconds
    return chosen, name


def _timed(predict: Predictor, sample: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Probabilities of ``sample`` and the faster of two timed runs (after one warm-up)."""
    import time

    with torch.no_grad():
        probs = predict(sample).float()
        times = []
        for _ in range(2):
            start = time.perf_counter()
            predict(sample)
            times.append(time.perf_counter() - start)
    return probs, min(times)


def onnx_predictor(module, path=None) -> Predictor:
    """The module exported to ONNX (nucleiseg.inference.export; at ``path``, or in a
    temporary folder deleted once loaded) and run by ONNX Runtime on the CPU:
    (N, 3, h, w) in 0..1 -> (N, 1, h, w) probabilities."""
    import shutil
    import tempfile
    from pathlib import Path

    import onnxruntime

    from nucleiseg.inference.export import export, exported_model

    folder = None if path is not None else Path(tempfile.mkdtemp(prefix="nucleiseg_onnx_"))
    try:
        target = Path(path) if path is not None else folder / "model.onnx"
        export(exported_model(module), target, "onnx")
        session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def run(batch: torch.Tensor) -> torch.Tensor:
        image = batch.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(session.run(None, {"image": image})[0])

    return run
