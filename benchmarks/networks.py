"""Every stage-1 network side by side: ``python -m benchmarks.networks [--size paper|small]``.

Prints, per backbone: where it comes from, its levels, weights, forward GFLOPs per 256 px
image (counted by ``torch.utils.flop_counter.FlopCounterMode``) and CPU training images/s
(phase 1: forward, BCE, backward, Adam on 256 px crops), and writes them to
``benchmarks/results/networks-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import ROOT

SOURCES = {
    "unet": ("MONAI BasicUNet (Ronneberger 2015)", "4"),
    "unetpp": ("MONAI BasicUNetPlusPlus, deep supervision (Zhou 2018)", "4"),
    "micronet": ("nucleiseg (Raza 2019, TIAToolbox layout)", "4"),
    "smp_unet": ("smp Unet, ResNet-34 encoder", "5"),
    "smp_unetpp": ("smp UnetPlusPlus, ResNet-34 encoder", "5"),
}


def build(backbone: str, size: str = "paper"):
    """The run's modules for one backbone, composed as a command line would."""
    from benchmarks.run import compose_profile
    from nucleiseg.training.builders import build_modules

    return build_modules(compose_profile([f"backbone={backbone}", f"size={size}"]))


def flops(model: torch.nn.Module, image: torch.Tensor, backward: bool = False) -> float:
    """FLOPs of one forward (and backward) pass, counted operator by operator."""
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(image)
        if backward:
            logits = out.values() if isinstance(out, dict) else [out]
            sum(v.float().sum() for v in logits).backward()
    return float(counter.get_total_flops())


def train_images_per_s(module, side: int, batch: int, steps: int) -> float:
    """Phase-1 steps (forward, BCE with auxiliary heads, backward, Adam) on random images."""
    image = torch.rand(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
    target = (torch.rand(batch, 1, side, side) > 0.7).float()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
    module.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits, extra = module.compute_outputs(image, target)
        (module.loss(logits, target) + extra).backward()
        optimizer.step()

    step()  # warm-up: allocations, Adam state
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def measure(backbone: str, size: str, side: int, batch: int, steps: int) -> dict[str, Any]:
    module = build(backbone, size)["stage1"]
    stage1 = module.stage1
    source, levels = SOURCES.get(backbone, (backbone, "?"))
    with torch.no_grad():
        gflops = flops(stage1.eval(), torch.rand(1, 3, 256, 256)) / 1e9
    return {
        "backbone": backbone,
        "source": source,
        "levels": levels,
        "weights": sum(p.numel() for p in stage1.parameters()),
        "gflops_per_256px_image": gflops,
        "cpu_train_images_per_s": train_images_per_s(module, side, batch, steps),
        "train_side": side,
        "train_batch": batch,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="paper", choices=["paper", "small"])
    parser.add_argument("--backbones", nargs="*", default=list(SOURCES))
    parser.add_argument("--side", type=int, default=256, help="training crop side")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    rows = []
    print("| backbone | source | levels | weights | GFLOPs / 256 px | CPU train images/s |")
    print("|---|---|---|---|---|---|")
    for backbone in args.backbones:
        row = measure(backbone, args.size, args.side, args.batch, args.steps)
        rows.append(row)
        print(f"| `{backbone}` | {row['source']} | {row['levels']} | {row['weights']:,} | "
              f"{row['gflops_per_256px_image']:.1f} | {row['cpu_train_images_per_s']:.2f} |",
              flush=True)  # fmt: skip
    from benchmarks.run import machine, new_result_path

    stem = f"networks-{dt.datetime.now():%Y-%m-%d_%H-%M-%S}"
    path = new_result_path(Path(args.out_dir), stem)
    with path.open("x") as file:
        file.write(json.dumps({"machine": machine(), "size": args.size, "rows": rows}, indent=2))
    print(f"written to {path}")
    return rows


if __name__ == "__main__":
    main()
