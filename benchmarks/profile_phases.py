"""Where a steady training epoch of each phase spends its time (Lightning's SimpleProfiler).

Each phase is fitted for two epochs as ``make bench`` does (a fresh Trainer from the run's
own callbacks); the profiler's per-batch records of the second epoch are split into the work
any loop does (the training step, backward, the optimizer step, the next batch) and the
framework's own: every callback and module hook, logging, the progress bar. Prints one table
per phase and writes ``benchmarks/results/profile-<date>.json``.

    python -m benchmarks.profile_phases [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.profilers import SimpleProfiler

from benchmarks.run import CPU_PROFILE, ROOT, compose_profile, machine, new_result_path
from benchmarks.training import EpochTimer, phase_setup
from nucleiseg.training.phase_runner import run_phase

# the profiler's names for the work a plain loop does too
LOOP_WORK = ("training_step", "backward", "optimizer_step", "train_dataloader_next",
             "optimizer_zero_grad")  # fmt: skip
# its summary goes to a file in the (temporary) run dir, not the terminal
PROFILER = "+trainer.profiler={_target_:lightning.pytorch.profilers.SimpleProfiler,filename:fit}"
PER_BATCH_PREFIXES = ("[Callback]", "[LightningModule]", "[Strategy]", "[_TrainingEpochLoop]",
                      "[LightningDataModule]")  # fmt: skip


class ProfilerRecords(Callback):
    """Keeps the Trainer's profiler, to read its records after ``fit``."""

    profiler: SimpleProfiler

    def on_train_end(self, trainer, pl_module) -> None:
        self.profiler = trainer.profiler


def steady_epoch_actions(profiler: SimpleProfiler, batches: int) -> dict[str, float]:
    """Seconds per action over the last ``batches`` calls of each per-batch action (the second
    epoch's); per-epoch actions (validation, checkpoints) are left out: they fall outside the
    timed window."""
    seconds: dict[str, float] = {}
    for action, durations in profiler.recorded_durations.items():
        if len(durations) < 2 * batches or not action.startswith(PER_BATCH_PREFIXES):
            continue
        if "validation" in action or "val_" in action:
            continue
        seconds[action] = float(sum(durations[-batches:]))
    return seconds


def profile_phase(cfg, phase_index: int) -> dict[str, Any]:
    """Two epochs of one phase under the SimpleProfiler; the second epoch's breakdown."""
    phases, datamodule, modules = phase_setup(cfg)
    phase = dataclasses.replace(phases[phase_index], max_epochs=2, min_epochs=2)
    batches = len(datamodule.train_dataloader())
    grab, timer = ProfilerRecords(), EpochTimer()
    with tempfile.TemporaryDirectory() as run_dir:
        loggers = [instantiate(c, save_dir=run_dir) for c in cfg.logger.values()]
        run_phase(cfg, phase, phase_index, modules[phase.module], datamodule, Path(run_dir),
                  loggers, extra_callbacks=[timer, grab], test=False)  # fmt: skip
    profiler = grab.profiler
    actions = steady_epoch_actions(profiler, batches)
    epoch_s = timer.seconds[1]
    loop = {a: s for a, s in actions.items() if a.rsplit(".", 1)[-1] in LOOP_WORK}
    hooks = {a: s for a, s in actions.items() if a not in loop and "run_training_batch" not in a}
    # the step is nested inside run_training_batch; the hooks are not
    step_s = sum(s for a, s in loop.items() if a.endswith(("training_step", "backward")))
    top = sorted(hooks.items(), key=lambda item: -item[1])[:8]
    batch_seconds = profiler.recorded_durations.get("run_training_batch", [])
    return {
        "phase": phases[phase_index].name,
        "batches": batches,
        "epoch_s": epoch_s,
        "loop_work_s": loop,
        "step_s": step_s,
        "hooks_s": sum(hooks.values()),
        "hooks_share_of_epoch": sum(hooks.values()) / epoch_s,
        "top_hooks_s": dict(top),
        "median_batch_ms": 1000 * statistics.median(batch_seconds[-batches:] or [0.0]),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    profile = [*CPU_PROFILE, *args.set]
    rows = []
    for index in range(3):
        # Lightning's SimpleProfiler, a fresh one per Trainer
        row = profile_phase(compose_profile(profile, PROFILER), index)
        rows.append(row)
        print(f"\n## {row['phase']}: steady epoch {row['epoch_s']:.2f} s over {row['batches']} "
              f"batches; framework hooks {row['hooks_s'] * 1000:.1f} ms "
              f"({100 * row['hooks_share_of_epoch']:.2f} % of the epoch)")  # fmt: skip
        print("| action | ms in the epoch |\n|---|---|")
        for action, seconds in {**row["loop_work_s"], **row["top_hooks_s"]}.items():
            print(f"| {action} | {1000 * seconds:.1f} |")
    now = dt.datetime.now()
    out = new_result_path(args.out_dir, f"profile-{now:%Y-%m-%d_%H-%M-%S}")
    report = {"machine": machine(), "profile": profile, "phases": rows}
    with out.open("x") as file:
        file.write(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
    return rows


if __name__ == "__main__":
    main()
