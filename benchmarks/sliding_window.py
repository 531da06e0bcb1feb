"""nucleiseg's tiled inference vs MONAI's ``SlidingWindowInferer`` (Gaussian blending):
``python -m benchmarks.sliding_window``.

Both run the same small classic U-Net over the same image with the same window (512 px),
overlap (64 px) and one window per forward pass. Printed per image size: megapixels/s,
peak resident memory (each measurement in its own process) and the error against one
forward pass over the whole image, where the seams of a tiling would show.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

WINDOW, OVERLAP = 512, 64


def model() -> torch.nn.Module:
    from nucleiseg.models import ClassicUNet

    torch.manual_seed(0)
    return ClassicUNet(base_channels=8).eval()


def image(side: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (side // 16 + 1, side // 16 + 1, 3)).astype(np.uint8)
    return np.kron(small, np.ones((16, 16, 1), np.uint8))[:side, :side]  # blobs, not noise


def run_nucleiseg(net, img: np.ndarray) -> np.ndarray:
    from nucleiseg.inference.tiling import predict_tiled

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(net(batch))

    return predict_tiled(predict, img, tile=WINDOW, overlap=OVERLAP, batch_size=1)


def run_monai(net, img: np.ndarray) -> np.ndarray:
    from monai.inferers import SlidingWindowInferer

    inferer = SlidingWindowInferer(
        roi_size=(WINDOW, WINDOW), sw_batch_size=1, overlap=OVERLAP / WINDOW, mode="gaussian",
        padding_mode="reflect",
    )  # fmt: skip
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    return torch.sigmoid(inferer(x, net))[0, 0].numpy()


def measure(which: str, side: int) -> dict[str, float]:
    """In a child process: speed, peak memory and error against the whole-image pass."""
    net, img = model(), image(side)
    run = run_nucleiseg if which == "nucleiseg" else run_monai
    with torch.inference_mode():
        start = time.perf_counter()
        prob = run(net, img)
        seconds = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        whole = torch.sigmoid(net(x))[0, 0].numpy() if side <= 2048 else None
    error = float(np.abs(prob - whole).max()) if whole is not None else float("nan")
    return {"which": which, "side": side, "mp_per_s": side * side / 1e6 / seconds,
            "peak_rss_mb": peak_mb, "max_error_vs_whole": error}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", nargs="*", type=int, default=[1024, 2048])
    args = parser.parse_args(argv)
    rows = []
    print("| inferer | image | MP/s | peak RSS (MB) | max error vs whole image |")
    print("|---|---|---|---|---|")
    for side in args.sides:
        for which in ("nucleiseg", "monai"):
            code = ("import json; from benchmarks.sliding_window import measure; "
                    f"print('RESULT', json.dumps(measure({which!r}, {side})))")  # fmt: skip
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT")]
            if not line:
                raise RuntimeError(f"{which} at {side} px failed:\n{done.stderr[-2000:]}")
            row = json.loads(line[0][len("RESULT ") :])
            rows.append(row)
            print(f"| {which} | {side} px | {row['mp_per_s']:.3f} | {row['peak_rss_mb']:.0f} | "
                  f"{row['max_error_vs_whole']:.2e} |", flush=True)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
