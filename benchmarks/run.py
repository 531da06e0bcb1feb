"""All benchmarks in one run: ``python -m benchmarks.run [--gpu] [--repeats N]`` (``make bench``).

Prints a table and writes ``benchmarks/results/<date>.json`` with the machine's details:
1. phase-1 training images/s through nucleiseg (Lightning Trainer, the real module, logging
   and checkpointing on) vs a plain PyTorch loop on the same model, data and optimizer,
   measured alternately in this process; 2. the same for phases 2 and 3 (phase 2 runs a
   frozen stage 1 under no_grad, so it must cost markedly less per image: its cost per image
   over phase 3's, with phase 2 and 3 epochs alternating, per backbone, beside the same
   ratio for bare forward/backward steps, the floor any loop has); 3. data loading
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
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from benchmarks import inference, loader, training
from benchmarks.common import CONF_DIR, ROOT

# smp's ResNet-34 U-Net on CPU: the figures below have used it since the first run; the
# paper's classic U-Net (backbone=unet, 102 GFLOPs per 256 px image): `--set backbone=unet`.
CPU_PROFILE = [
    "backbone=smp_unet", "dataset.datamodule.source.num_train=64",
    "dataset.datamodule.source.size=128", "dataset.datamodule.batch_size=8",
    "trainer.enable_progress_bar=false",
]  # fmt: skip
GPU_PROFILE = [
    "dataset.datamodule.source.num_train=256", "dataset.datamodule.source.size=256",
    "dataset.datamodule.batch_size=32", "trainer=gpu", "trainer.enable_progress_bar=false",
]  # fmt: skip
PHASE_COST_IMAGES = "dataset.datamodule.source.num_train=16"
# Micro-Net at its published width takes over 100 s per batch of 8 here: quarter width on CPU.
CPU_PHASE_OVERRIDES = {"micronet": ["backbone.net.base_channels=16"]}


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


def phase_cost_row(
    profile: list[str], overrides: list[str], repeats: int, lines: list[str]
) -> dict:
    """Phase 2 / phase 3 cost per image through the framework, beside the kernels' floor."""
    cfg = compose_profile(profile, *overrides)
    row = training.phase2_cost_vs_phase3(cfg, repeats)
    row["breakdown"] = training.phase_step_breakdown(cfg, repeats)
    row["overrides"] = overrides
    label = " ".join(
        [row["backbone"], *(o.removeprefix("backbone.net.") for o in overrides if "net." in o)]
    )
    lines.append(
        f"| phase 2 cost per image / phase 3, {label} | "
        f"{row['phase2_cost_vs_phase3']:.2f} (median step: "
        f"{row['phase2_step_cost_vs_phase3']:.2f}) | "
        f"{row['breakdown']['kernel_floor_phase2_vs_phase3']:.2f} (bare steps) | |"
    )
    return row


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


def new_result_path(out_dir: Path, stem: str) -> Path:
    """``<out_dir>/<stem>.json``, or ``<stem>-<n>.json`` where a result of that name exists."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path, count = out_dir / f"{stem}.json", 0
    while path.exists():
        count += 1
        path = out_dir / f"{stem}-{count}.json"
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="real sizes, bf16, on a GPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tile", type=int, default=1088, help="largest tile side for predict")
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--tile-batch", type=int, default=1)
    parser.add_argument(
        "--phase-backbones", nargs="*", default=["smp_unetpp", "micronet"],
        help="also time phases 2 and 3 with these stage-1 backbones (paper widths; "
        "Micro-Net at quarter width without --gpu)",
    )  # fmt: skip
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "loader", "infer"])
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="Hydra overrides added to the profile, e.g. size=small backbone=unetpp",
    )  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    profile = [*(GPU_PROFILE if args.gpu else CPU_PROFILE), *args.set]
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
            lines.append(
                f"| train {row['phase']}, median step (ms; ratio plain/framework) | "
                f"{row['framework_step_ms']:.0f} | {row['plain_step_ms']:.0f} | "
                f"{row['step_ratio']:.3f} |"
            )
        cpu_overrides = {} if args.gpu else CPU_PHASE_OVERRIDES
        report["phase_cost_by_backbone"] = [
            phase_cost_row(profile, [], args.repeats, lines)  # the profile's backbone
        ] + [  # fewer images for the others: Micro-Net is large at paper width
            phase_cost_row(
                profile,
                [f"backbone={name}", PHASE_COST_IMAGES, *cpu_overrides.get(name, [])],
                max(2, args.repeats // 2),
                lines,
            )
            for name in args.phase_backbones
        ]
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
                f"| tiled predict {row['megapixels']:.0f} MP (MP/s, own peak MB) | "
                f"{row['tiled_mp_per_s']:.3f} (+{row['tiled_added_mb']:.0f} MB) | "
                f"{row['raw_mp_per_s']:.3f} | {row['ratio']:.2f} |"
            )
    report["startup"] = startup_seconds()
    lines.append(f"| `nucleiseg.train --help` (s) | {report['startup']['train_help_s']:.2f} | | |")
    lines.append(f"| compose config (s) | {report['startup']['compose_config_s']:.3f} | | |")
    print("\n".join(lines))
    out = new_result_path(args.out_dir, f"{now:%Y-%m-%d_%H-%M-%S}")
    with out.open("x") as file:  # "x": an earlier result is never overwritten
        file.write(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
    return report


if __name__ == "__main__":
    main()
