"""All benchmarks in one run: ``python -m benchmarks.run [--gpu] [--repeats N]`` (``make bench``).

Prints a table and writes ``benchmarks/results/<date>.json`` with the machine's details:
1. phase-1 training images/s through nucleiseg (Lightning Trainer, the real module, logging
   and checkpointing on) vs a plain PyTorch loop on the same model, data and optimizer,
   measured alternately in this process; 2. the same for phases 2 and 3 (phase 2 runs a
   frozen stage 1 under no_grad, so it must cost markedly less per image); 3. data loading
   vs training samples/s; 4. raw forward vs tiled predict (MP/s, peak memory at 1/4/16 MP);
   5. start-up time of ``python -m nucleiseg.train --help`` and of composing the config.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time

import torch
from hydra import compose, initialize_config_dir

from benchmarks import inference, loader, training
from benchmarks.common import CONF_DIR, ROOT

CPU_PROFILE = [
    "dataset.datamodule.source.num_train=64", "dataset.datamodule.source.size=128",
    "dataset.datamodule.batch_size=8", "trainer.enable_progress_bar=false",
]  # fmt: skip
GPU_PROFILE = [
    "dataset.datamodule.source.num_train=256", "dataset.datamodule.source.size=256",
    "dataset.datamodule.batch_size=32", "trainer=gpu", "trainer.enable_progress_bar=false",
]  # fmt: skip
PHASE_COST_IMAGES = "dataset.datamodule.source.num_train=16"


def compose_profile(profile: list[str], *extra: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(
            "config", overrides=["paths.output_dir=/tmp/nucleiseg-bench", *profile, *extra]
        )


def startup_seconds() -> dict[str, float]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nucleiseg.train", "--help"], cwd=ROOT,
                   capture_output=True, check=True)  # fmt: skip
    help_s = time.perf_counter() - start
    start = time.perf_counter()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        compose("config", overrides=["paths.output_dir=/tmp/x"])
    return {"train_help_s": help_s, "compose_config_s": time.perf_counter() - start}


def machine() -> dict[str, str | int]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="real sizes, bf16, on a GPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tile", type=int, default=1088, help="largest tile side for predict")
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--tile-batch", type=int, default=1)
    parser.add_argument(
        "--phase-backbones", nargs="*", default=["unetpp", "micronet"],
        help="also time phases 2 and 3 with these stage-1 backbones (paper widths)",
    )  # fmt: skip
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "loader", "infer"])
    args = parser.parse_args(argv)
    profile = GPU_PROFILE if args.gpu else CPU_PROFILE
    cfg = compose_profile(profile)
    now = dt.datetime.now()
    report: dict = {"machine": machine(), "profile": profile, "date": now.isoformat(" ", "seconds")}
    lines = ["| benchmark | nucleiseg | plain / raw | ratio |", "|---|---|---|---|"]
    if "train" not in args.skip:
        report["training"] = [training.compare_phase(cfg, i, args.repeats) for i in range(3)]
        for row in report["training"]:
            lines.append(
                f"| train {row['phase']} (images/s) | {row['framework_images_per_s']:.2f} | "
                f"{row['plain_images_per_s']:.2f} | {row['ratio']:.3f} |"
            )
        p2, p3 = report["training"][1], report["training"][2]
        share = p3["framework_images_per_s"] / p2["framework_images_per_s"]
        report["phase2_cost_vs_phase3"] = share
        lines.append(f"| phase 2 cost per image / phase 3, U-Net | {share:.2f} | | |")
        report["phase_cost_by_backbone"] = []
        for backbone in args.phase_backbones:  # fewer images: Micro-Net is large at paper width
            bcfg = compose_profile(profile, f"backbone={backbone}", PHASE_COST_IMAGES)
            row = training.phase2_cost_vs_phase3(bcfg, max(1, args.repeats // 2))
            report["phase_cost_by_backbone"].append(row)
            lines.append(
                f"| phase 2 cost per image / phase 3, {backbone} | "
                f"{row['phase2_cost_vs_phase3']:.2f} | | |"
            )
    if args.gpu and "train" not in args.skip:  # a training step in bf16 vs fp32
        report["precision"] = {}
        for precision in ("bf16-mixed", "32-true"):
            pcfg = compose_profile(profile, f"trainer.precision={precision}")
            row = training.compare_phase(pcfg, 0, args.repeats)
            report["precision"][precision] = row["framework_images_per_s"]
            lines.append(
                f"| train phase 1, {precision} (images/s) | "
                f"{row['framework_images_per_s']:.1f} | | |"
            )
    if "loader" not in args.skip:
        report["loader"] = loader.main(profile)
        lines.append(
            f"| loader vs training (samples/s) | {report['loader']['loader_samples_per_s']:.0f} "
            f"| {report['loader']['train_samples_per_s']:.2f} | {report['loader']['ratio']:.0f}x |"
        )
    if "infer" not in args.skip:
        report["inference"] = inference.run(args.tile, args.overlap, args.tile_batch, profile)
        for row in report["inference"]:
            lines.append(
                f"| tiled predict {row['megapixels']:.0f} MP (MP/s, peak MB) | "
                f"{row['tiled_mp_per_s']:.3f} ({row['peak_rss_mb']:.0f} MB) | "
                f"{row['raw_mp_per_s']:.3f} | {row['ratio']:.2f} |"
            )
    report["startup"] = startup_seconds()
    lines.append(f"| `nucleiseg.train --help` (s) | {report['startup']['train_help_s']:.2f} | | |")
    lines.append(f"| compose config (s) | {report['startup']['compose_config_s']:.3f} | | |")
    print("\n".join(lines))
    out = ROOT / "benchmarks" / "results" / f"{now:%Y-%m-%d_%H-%M-%S}.json"  # never overwrites
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
    return report


if __name__ == "__main__":
    main()
