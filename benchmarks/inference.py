"""Inference cost: raw model forward vs tiled ``predict`` (megapixels/s, peak memory).

Each image size runs in its own process. ``tiled_added_mb`` is the tiled call's own peak
resident memory above what the process held before it (model, image, warm-up), sampled
while it runs; ``peak_rss_mb`` (``ru_maxrss``) is the whole process's, which the warm-up's
batch of windows dominates.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

SIZES_MP = (1, 4, 16)


def measure(megapixels: int, tile: int, overlap: int, batch: int, overrides: list[str]) -> dict:
    """Run in a child process: tiled predict of a square image of ``megapixels``."""
    from hydra import compose, initialize_config_dir

    from benchmarks.common import CONF_DIR, PeakResidentMemory
    from nucleiseg.inference.tiling import module_predictor, predict_tiled
    from nucleiseg.training.builders import build_modules

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["paths.output_dir=/tmp/nucleiseg-bench", *overrides])
    module = build_modules(cfg)["two_stage"].eval()
    predict = module_predictor(module, "two_stage")
    side = int(round((megapixels * 1e6) ** 0.5))
    image = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    with torch.inference_mode():
        tiles = torch.rand(batch, 3, tile, tile)
        predict(tiles)  # warm-up
        start = time.perf_counter()
        reps = 3
        for _ in range(reps):
            predict(tiles)
        raw = reps * batch * tile * tile / 1e6 / (time.perf_counter() - start)
        start = time.perf_counter()
        with PeakResidentMemory() as memory:  # the tiled path's own peak, above the warm-up
            predict_tiled(predict, image, tile=tile, overlap=overlap, batch_size=batch)
        tiled = side * side / 1e6 / (time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"megapixels": side * side / 1e6, "raw_mp_per_s": raw, "tiled_mp_per_s": tiled,
            "ratio": tiled / raw, "peak_rss_mb": peak_mb,
            "tiled_added_mb": memory.added_mb}  # fmt: skip


def run(tile: int, overlap: int, batch: int, overrides: list[str]) -> list[dict]:
    rows = []
    for mp in SIZES_MP:
        code = (
            "import json, sys; from benchmarks.inference import measure; "
            f"print('RESULT', json.dumps(measure({mp}, {tile}, {overlap}, {batch}, "
            f"{overrides!r})))"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT")]
        if not line:
            raise RuntimeError(f"inference benchmark at {mp} MP failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(line[0][len("RESULT ") :]))
    return rows
