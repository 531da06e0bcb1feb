"""Scale-out on CPU: DDP (gloo) matches one process; sweeps with DDP, joblib and submitit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

# no augmentation and the same global batch (2 ranks x 2 = 4). The ranks' DistributedSampler
# draws another permutation than one process, and BatchNorm statistics are per rank
# (SyncBatchNorm needs a GPU): the runs agree within tolerances, not exactly
COMMON = [
    "experiment=smoke", "trainer.enable_progress_bar=false", "trainer.deterministic=true",
    "dataset.datamodule.train_transform=null", "figures.test_images=1",
]  # fmt: skip
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
       "dataset.datamodule.batch_size=2"]  # fmt: skip


def run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    flags = [a for a in args if a == "-m"]
    rest = [a for a in args if a != "-m"]
    command = [sys.executable, "-m", "nucleiseg.train", *flags, *COMMON, *rest]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    done = run(f"hydra.run.dir={single}")
    assert done.returncode == 0, done.stderr[-3000:]
    done = run(*DDP, f"hydra.run.dir={ddp}")
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = results(single), results(ddp)
    assert two["status"] == "finished"
    assert [(p["name"], p["epochs"]) for p in two["phases"]] == [
        (p["name"], p["epochs"]) for p in one["phases"]
    ]
    for a, b in zip(one["phases"], two["phases"], strict=True):
        assert b["best_val_loss"] == pytest.approx(a["best_val_loss"], abs=5e-3)
    for output in ("stage1", "stage2_frozen", "two_stage"):
        assert two["test"][output]["dice"] == pytest.approx(one["test"][output]["dice"], abs=0.02)
    # frozen really frozen across ranks: phase 2 leaves stage 1's test output as phase 1 left it
    after_phase1, after_phase2 = (p["test"]["stage1"] for p in two["phases"][:2])
    assert after_phase2 == after_phase1
    # per-image scores come back in dataset order, gathered from both ranks
    per_image = two["test"]["two_stage"]["per_image"]
    assert per_image["index"] == list(range(len(per_image["index"])))
    assert per_image["dice"] == pytest.approx(
        one["test"]["two_stage"]["per_image"]["dice"], abs=0.05
    )
    # only rank 0 wrote: one results file, rank 1's log beside rank 0's
    assert sorted(p.name.split("-")[0] for p in ddp.glob("*.log")) == [
        "train", "train_ddp_process_1"
    ]  # fmt: skip


def test_multirun_with_ddp_writes_each_job_into_its_own_dir(tmp_path):
    sweep = tmp_path / "sweep"
    done = run("-m", "seed=0,1", "stage.max_epochs=1", *DDP, f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = job_dirs(sweep)
    assert [j.name.split("_")[0] for j in jobs] == ["0", "1"]
    for job, seed in zip(jobs, (0, 1), strict=True):
        res = results(job)
        assert res["status"] == "finished" and res["seed"] == seed
        assert (job / "checkpoints" / "finetune" / "best.ckpt").is_file()
    assert not (ROOT / "outputs" / "multirun.yaml").exists()  # ranks did not re-run the sweep


@pytest.mark.parametrize(
    "launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                 ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]],
    ids=["joblib", "submitit_local"],
)  # fmt: skip
def test_parallel_launchers_run_a_two_job_sweep(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    done = run("-m", "seed=0,1", "stage.max_epochs=1", *launcher, f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    finished = [results(j) for j in job_dirs(sweep) if (j / "results.json").is_file()]
    assert sorted(r["seed"] for r in finished) == [0, 1]
    assert all(r["status"] == "finished" for r in finished)
