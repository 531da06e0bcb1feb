"""One command that proves the GPU path: ``python -m benchmarks.gpu_check`` (``make gpu-check``).

Made for short GPU slots (about 10 minutes on one H100/H200, started cold): every step has a
time budget, runs in its own process, and its figures go to
``benchmarks/results/gpu-<date>.json`` as soon as it ends, so a slot cut short still leaves
the steps that finished. Steps (``--steps`` picks a subset, ``--dry-run`` prints them):

1. ``machine``: GPU name and memory, CUDA, torch, driver; bf16 support.
2. ``smoke``: the smoke pipeline on one GPU in fp32, in bf16 mixed precision
   (``trainer=gpu``, channels-last) and bf16 with ``compile=true``; test Dice compared with
   the fp32 run of the same seed.
3. ``ddp``: with more than one GPU, the bf16 smoke run with ``trainer=ddp`` on all of them,
   compared with the single-GPU run.
4. ``flops``: model FLOPs per 256 px image (forward + backward, counted with
   ``torch.utils.flop_counter.FlopCounterMode``) of every backbone, and phase-1 training
   images/s at batch 32 in bf16, so model-FLOP utilisation against the GPU's bf16 dense peak.
5. ``bench``: ``python -m benchmarks.run --gpu`` (framework vs plain loop per phase, phase 2
   / phase 3 cost, loader, tiled predict).
6. ``predict``: tiled predict of a 4096 px image on the GPU (MP/s, peak GPU memory).
7. ``tnbc``: the TNBC paper sweep (three backbones, paper recipe, seed 0, early stopping, 40x
   images) on the GPU with its report and wall time; needs ``--tnbc-root``. Within its
   budget it may not finish: each run's ``results.json`` keeps the phases that did.

The budgets add up to 9 minutes.

Without CUDA the command says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT

#: bf16 dense tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets
BF16_PEAK_TFLOPS = {
    "H100 SXM": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H200": 989.4,
    "A100": 312.0,
    "L4": 121.0,
}
SMOKE = ["experiment=smoke", "trainer.enable_progress_bar=false", "figures.test_images=0",
         "logger=csv", "seed=0"]  # fmt: skip
BACKBONES = ("unet", "unetpp", "micronet")


@dataclass
class Step:
    """A named step: its budget in seconds and the commands it runs (for --dry-run)."""

    name: str
    budget_s: int
    commands: list[list[str]] = field(default_factory=list)
    description: str = ""


def peak_tflops(gpu_name: str, override: float | None = None) -> float | None:
    """The bf16 dense peak for a GPU name (``--peak-tflops`` wins), or None if unknown."""
    if override:
        return override
    name = gpu_name.upper()
    if "H100" in name:
        for form in ("NVL", "PCIE"):
            if form in name:
                return BF16_PEAK_TFLOPS["H100 NVL" if form == "NVL" else "H100 PCIe"]
        return BF16_PEAK_TFLOPS["H100 SXM"]
    for key in ("H200", "A100", "L4"):
        if key in name:
            return BF16_PEAK_TFLOPS[key]
    return None


class ResultFile:
    """``gpu-<date>.json``: created once (never overwriting), rewritten after every step."""

    def __init__(self, out_dir: Path, now: dt.datetime) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        path, count = out_dir / f"gpu-{now:%Y-%m-%d_%H-%M-%S}.json", 0
        while path.exists():
            count += 1
            path = out_dir / f"gpu-{now:%Y-%m-%d_%H-%M-%S}-{count}.json"
        self.path = path
        self.data: dict[str, Any] = {"date": now.isoformat(" ", "seconds"), "steps": {}}
        with path.open("x") as file:  # "x": an earlier result is never overwritten
            file.write(json.dumps(self.data, indent=2) + "\n")

    def record(self, step: str, result: dict[str, Any]) -> None:
        self.data["steps"][step] = result
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)


def train_command(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "nucleiseg.train", *SMOKE, *overrides,
            f"hydra.run.dir={run_dir}"]  # fmt: skip


def plan(work: Path, gpus: int, tnbc_root: str | None) -> list[Step]:
    """Every step with its commands; ``work`` holds the runs' outputs."""
    smoke = work / "smoke"
    sweep = work / "tnbc_sweep"
    steps = [
        Step("machine", 15, [], "GPU, CUDA, torch, driver, bf16 support"),
        Step("smoke", 120, [
            train_command(smoke / "fp32", "trainer=gpu", "trainer.precision=32-true"),
            train_command(smoke / "bf16", "trainer=gpu"),
            train_command(smoke / "bf16_compile", "trainer=gpu", "compile=true"),
        ], "smoke pipeline fp32 / bf16 / bf16+compile on one GPU; test Dice vs fp32"),
        Step("ddp", 75, [
            train_command(smoke / "ddp", "trainer=ddp", f"trainer.devices={max(gpus, 2)}",
                          "trainer.precision=bf16-mixed"),
        ], "bf16 smoke run with DDP on all GPUs vs the single-GPU run (more than one GPU)"),
        Step("flops", 75, [[sys.executable, "-m", "benchmarks.gpu_check", "--flops-only"]],
             "model FLOPs per image, phase-1 images/s in bf16, model-FLOP utilisation"),
        Step("bench", 90, [[sys.executable, "-m", "benchmarks.run", "--gpu", "--repeats", "2",
                             "--skip", "infer", "--out-dir", str(work / "bench")]],
             "benchmarks.run --gpu: framework vs plain loop, phase costs, loader"),
        Step("predict", 45, [[sys.executable, "-m", "benchmarks.gpu_check", "--predict-only"]],
             "tiled predict of a 4096 px image on the GPU"),
        Step("tnbc", 120, [
            [sys.executable, "-m", "nucleiseg.train", "-m", "dataset=tnbc",
             "backbone=unet,micronet,unetpp", "trainer=gpu", "seed=0",
             "trainer.enable_progress_bar=false", f"dataset.root={tnbc_root or '<--tnbc-root>'}",
             f"hydra.sweep.dir={sweep}"],
            [sys.executable, "-m", "nucleiseg.report", str(sweep)],
        ], "TNBC paper sweep (3 backbones, seed 0, paper recipe) and its report"),
    ]  # fmt: skip
    return steps


def run_commands(step: Step, budget_end: float) -> dict[str, Any]:
    """Run a step's commands in turn within its budget; return codes, wall times, tails."""
    runs = []
    for command in step.commands:
        left = budget_end - time.monotonic()
        if left <= 0:
            runs.append({"command": command, "skipped": "step budget spent"})
            continue
        start = time.monotonic()
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=left)
            code, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as timeout:
            code, out, err = "timeout", str(timeout.stdout or ""), str(timeout.stderr or "")
        runs.append({"command": command, "returncode": code,
                     "wall_s": round(time.monotonic() - start, 1),
                     "stdout_tail": out[-6000:], "stderr_tail": err[-1500:]})  # fmt: skip
    return {"runs": runs, "ok": all(r.get("returncode") == 0 for r in runs)}


def test_dice(run_dir: Path) -> dict[str, float] | None:
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    return {k: v["dice"] for k, v in results.get("test", {}).items()}


def machine_step() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    driver = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    return {
        "gpu": props.name,
        "gpus": torch.cuda.device_count(),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "driver": driver,
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "capability": f"{props.major}.{props.minor}",
    }


def flops_per_image(backbone: str, size: int = 256) -> float:
    """Forward + backward FLOPs of stage 1 + enhancer for one ``size`` px image."""
    import torch

    from benchmarks.networks import build, flops

    return flops(build(backbone)["two_stage"], torch.rand(1, 3, size, size), backward=True)


def flops_step(peak_override: float | None) -> dict[str, Any]:
    """FLOPs per image, phase-1 bf16 images/s at batch 32 and model-FLOP utilisation."""
    import torch

    from benchmarks import training
    from benchmarks.run import GPU_PROFILE, compose_profile

    peak = peak_tflops(torch.cuda.get_device_name(0), peak_override)
    rows = {}
    for backbone in BACKBONES:
        flops = flops_per_image(backbone)
        cfg = compose_profile(GPU_PROFILE, f"backbone={backbone}")
        torch.cuda.reset_peak_memory_stats()
        rate = training.compare_phase(cfg, 0, repeats=1)
        achieved = flops * rate["framework_images_per_s"] / 1e12
        rows[backbone] = {
            "gflops_per_image_fwd_bwd": flops / 1e9,
            "phase1_images_per_s": rate["framework_images_per_s"],
            "plain_images_per_s": rate["plain_images_per_s"],
            "framework_vs_plain": rate["ratio"],
            "achieved_tflops": achieved,
            "mfu": achieved / peak if peak else None,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
    return {"peak_bf16_tflops": peak, "backbones": rows}


def predict_step(side: int = 4096) -> dict[str, Any]:
    """Tiled predict of a ``side`` px image on the GPU with the default U-Net (random
    weights: the speed and memory do not depend on them)."""
    import numpy as np
    import torch

    from benchmarks.run import compose_profile
    from nucleiseg.inference.tiling import module_predictor, predict_tiled
    from nucleiseg.training.builders import build_modules

    module = build_modules(compose_profile([]))["two_stage"].cuda().eval()
    predict = module_predictor(module, "two_stage")
    image = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        predict_tiled(predict, image[:1088, :1088], tile=1088, overlap=64, device="cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        predict_tiled(predict, image, tile=1088, overlap=64, device="cuda")
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"megapixels": side * side / 1e6, "mp_per_s": side * side / 1e6 / seconds,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30}  # fmt: skip


def summarise(step: Step, result: dict[str, Any], work: Path) -> dict[str, Any]:
    """Step-specific figures read from the runs' outputs."""
    if step.name == "smoke":
        dice = {name: test_dice(work / "smoke" / name) for name in ("fp32", "bf16", "bf16_compile")}
        result["test_dice"] = dice
        if dice["fp32"] and dice["bf16"]:
            result["bf16_minus_fp32"] = {
                k: dice["bf16"][k] - dice["fp32"][k] for k in dice["fp32"] if k in dice["bf16"]
            }
    if step.name == "ddp":
        single, ddp = test_dice(work / "smoke" / "bf16"), test_dice(work / "smoke" / "ddp")
        result["test_dice"] = {"single": single, "ddp": ddp}
        if single and ddp:
            result["ddp_minus_single"] = {k: ddp[k] - single[k] for k in single if k in ddp}
    if step.name == "tnbc":
        result["wall_s"] = sum(r.get("wall_s", 0) for r in result["runs"])
        report = work / "tnbc_sweep" / "report.md"
        result["report"] = report.read_text() if report.is_file() else None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", nargs="*", default=None, help="run only these steps")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and commands")
    parser.add_argument("--tnbc-root", default=os.environ.get("NUCLEISEG_TNBC"))
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="bf16 dense TFLOP/s of this GPU, if not in the table")  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work-dir", type=Path, default=None, help="where runs write")
    parser.add_argument("--flops-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--predict-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.flops_only or args.predict_only:  # a step's own process: print its figures
        result = flops_step(args.peak_tflops) if args.flops_only else predict_step()
        print("RESULT", json.dumps(result))
        return 0
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="nucleiseg-gpu-check-"))
    gpus = 0
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; run it on a GPU machine (--dry-run lists "
                  "the steps)")  # fmt: skip
            return 2
        gpus = torch.cuda.device_count()
    steps = plan(work, gpus, args.tnbc_root)
    known = [s.name for s in steps]
    unknown = set(args.steps or []) - set(known)
    if unknown:
        parser.error(f"unknown step(s) {sorted(unknown)}; choose from {known}")
    chosen = [s for s in steps if args.steps is None or s.name in args.steps]
    if args.dry_run:
        for step in chosen:
            print(f"{step.name} (budget {step.budget_s} s): {step.description}")
            for command in step.commands:
                print("    " + " ".join(command))
        print(f"total budget {sum(s.budget_s for s in chosen)} s")
        return 0
    results = ResultFile(args.out_dir, dt.datetime.now())
    print(f"gpu_check: figures go to {results.path} after every step")
    for step in chosen:
        if step.name == "ddp" and gpus < 2:
            results.record(step.name, {"skipped": f"{gpus} GPU visible; DDP needs two or more"})
            continue
        if step.name == "tnbc" and not args.tnbc_root:
            results.record(step.name, {"skipped": "no --tnbc-root (or NUCLEISEG_TNBC) given"})
            continue
        start = time.monotonic()
        print(f"[{step.name}] {step.description} (budget {step.budget_s} s)", flush=True)
        if step.name == "machine":
            result = machine_step()
        else:
            result = run_commands(step, start + step.budget_s)
            for run in result["runs"]:
                lines = [
                    x for x in run.get("stdout_tail", "").splitlines() if x.startswith("RESULT")
                ]
                if lines:
                    result.update(json.loads(lines[-1][len("RESULT ") :]))
            result = summarise(step, result, work)
        result["step_wall_s"] = round(time.monotonic() - start, 1)
        results.record(step.name, result)
        print(f"[{step.name}] done in {result['step_wall_s']} s", flush=True)
    print(f"gpu_check: written to {results.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
