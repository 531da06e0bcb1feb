"""Never lose a run: atomic checkpoints, resume after SIGKILL/SIGTERM, NaN guard, refusal to
overwrite a finished run, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nucleiseg.analysis.report import find_runs
from nucleiseg.training.callbacks.checkpoint_io import AtomicCheckpointIO

from conftest import EMA_OVERRIDES, ROOT

BASE = [
    "experiment=smoke", "stage.max_epochs=3", "stage.patience=5", "trainer.deterministic=true",
    "trainer.enable_progress_bar=false", "figures.test_images=1",
]  # fmt: skip
# the resume tests run two DataLoader workers: the augmentation runs in them, so they also
# check that the workers' streams restart where they were (0 workers:
# tests/data/test_augmentation_workers.py)
WORKERS = "dataset.datamodule.num_workers=2"
# the test-only callbacks live beside this file; each training subprocess imports them from it
FAULTS_DIR = Path(__file__).resolve().parent
KILL = "fault_injection.KillInEpoch"
CORRUPT = "fault_injection.CorruptBatch"


def run_train(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    flags = [o for o in overrides if o == "-m"]  # Hydra wants -m before the overrides
    rest = [o for o in overrides if o != "-m"]
    command = [sys.executable, "-m", "nucleiseg.train", *flags, *BASE, *rest]
    path = os.pathsep.join(p for p in (str(FAULTS_DIR), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def pixel_tests(res: dict) -> dict[str, float]:
    """Every test pixel metric, flat (``"two_stage/dice": ...``), and each phase's best
    validation loss, which moves with every weight: a smoke model's test Dice alone can be
    the same for different training (all pixels one class)."""
    metrics = ("precision", "recall", "dice", "iou")
    found = {f"{k}/{m}": v[m] for k, v in res["test"].items() for m in metrics}
    found.update({f"{p['name']}/best_val_loss": p["best_val_loss"] for p in res["phases"]})
    return found


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    done = run_train(f"hydra.run.dir={run_dir}", WORKERS)
    assert done.returncode == 0, done.stderr[-3000:]
    return results(run_dir)


def resume_and_compare(run_dir: Path, uninterrupted: dict, *overrides: str) -> dict:
    """Rerun into ``run_dir`` (with ``overrides``, else two workers): it continues, finishes,
    and ends where the uninterrupted run did, epoch for epoch and in every figure; its results."""
    resumed = run_train(f"hydra.run.dir={run_dir}", *(overrides or (WORKERS,)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continues from" in resumed.stdout + resumed.stderr
    final = results(run_dir)
    assert final["status"] == "finished"
    assert [p["epochs"] for p in final["phases"]] == [p["epochs"] for p in uninterrupted["phases"]]
    assert pixel_tests(final) == pytest.approx(pixel_tests(uninterrupted), abs=1e-6)
    return final


def test_sigkill_in_phase2_then_resume_gives_the_uninterrupted_results(uninterrupted, tmp_path):
    kill = [f"+callbacks.kill._target_={KILL}", "+callbacks.kill.phase=enhance",
            "+callbacks.kill.epoch=1"]  # fmt: skip
    killed = run_train(f"hydra.run.dir={tmp_path}", WORKERS, *kill)
    assert killed.returncode == -9  # SIGKILL: no chance to clean up
    state = results(tmp_path)
    assert state["status"] == "running" and [p["name"] for p in state["phases"]] == ["stage1"]
    last = torch.load(tmp_path / "checkpoints" / "enhance" / "last.ckpt", weights_only=False)
    timer = next(v for k, v in last["callbacks"].items() if k.startswith("Timer"))
    trained_before_kill = timer["time_elapsed"]["train"]
    assert trained_before_kill > 0
    final = resume_and_compare(tmp_path, uninterrupted)
    # the resumed phase's wall time counts the training done before the kill
    assert final["phases"][1]["wall_seconds"] >= trained_before_kill
    # the learning curves of the phase finished before the kill survive the resume
    import csv

    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert sum(1 for r in rows if r.get("stage1/val/loss")) == final["phases"][0]["epochs"]
    assert any(r.get("finetune/val/loss") for r in rows)


def test_a_killed_run_with_a_weight_average_resumes_the_average(tmp_path):
    whole = run_train(f"hydra.run.dir={tmp_path / 'whole'}", *EMA_OVERRIDES)
    assert whole.returncode == 0, whole.stderr[-3000:]
    kill = [f"+callbacks.kill._target_={KILL}", "+callbacks.kill.phase=stage1",
            "+callbacks.kill.epoch=1"]  # fmt: skip
    killed = run_train(f"hydra.run.dir={tmp_path / 'resumed'}", *EMA_OVERRIDES, *kill)
    assert killed.returncode == -9
    last = torch.load(tmp_path / "resumed/checkpoints/stage1/last.ckpt", weights_only=True)
    assert "current_model_state" in last  # the trained weights beside the average
    # restarting the average from the trained weights would end elsewhere
    resume_and_compare(tmp_path / "resumed", results(tmp_path / "whole"), *EMA_OVERRIDES)


def test_deterministic_runs_with_one_seed_agree(uninterrupted, tmp_path):
    again = run_train(f"hydra.run.dir={tmp_path}", WORKERS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert pixel_tests(results(tmp_path)) == pixel_tests(uninterrupted)


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(uninterrupted, tmp_path):
    term = [f"+callbacks.kill._target_={KILL}", "+callbacks.kill.phase=finetune",
            "+callbacks.kill.epoch=0", "+callbacks.kill.signal_name=SIGTERM"]  # fmt: skip
    stopped = run_train(f"hydra.run.dir={tmp_path}", WORKERS, *term)
    assert stopped.returncode == 143, stopped.stderr[-3000:]  # 128 + SIGTERM, not 0
    assert results(tmp_path)["status"] == "interrupted"
    last = tmp_path / "checkpoints" / "finetune" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["callbacks"]["PhaseController"]["phase"]["name"] == "finetune"
    assert saved["epoch"] == 1  # the epoch the signal ended, saved whole
    resume_and_compare(tmp_path, uninterrupted)


def test_sigterm_during_validation_keeps_the_last_whole_epoch_and_the_run_resumes(tmp_path):
    # Lightning cannot resume a checkpoint written between two validation batches: it skips
    # the rest of that validation and early stopping finds no validation loss to check.
    term = [f"+callbacks.kill._target_={KILL}", "+callbacks.kill.phase=stage1",
            "+callbacks.kill.epoch=1", "+callbacks.kill.signal_name=SIGTERM",
            "+callbacks.kill.during=validation",
            "dataset.datamodule.eval_batch_size=2"]  # fmt: skip
    stopped = run_train(f"hydra.run.dir={tmp_path}", *term)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    last = torch.load(tmp_path / "checkpoints" / "stage1" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 0  # epoch 0's, written after its validation, not epoch 1's half
    resumed = run_train(f"hydra.run.dir={tmp_path}", "dataset.datamodule.eval_batch_size=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert results(tmp_path)["status"] == "finished"
    assert results(tmp_path)["phases"][0]["epochs"] == 3  # stage.max_epochs: none lost


def test_nan_batch_fails_its_job_clearly_and_the_sweep_goes_on(tmp_path):
    # job 0 corrupts a batch in the second epoch of phase 2; job 1 never reaches step 10**6
    sweep = [
        "-m", f"+callbacks.corrupt._target_={CORRUPT}", "+callbacks.corrupt.phase=enhance",
        "+callbacks.corrupt.step=2,1000000", f"hydra.sweep.dir={tmp_path}",
    ]  # fmt: skip
    done = run_train(*sweep)
    assert done.returncode == 0, done.stderr[-3000:]
    failed_dir, ok_dir = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    failed = results(failed_dir)
    assert failed["status"] == "failed"
    assert "non-finite training loss" in failed["error"]
    assert "phase 'enhance' at step 2" in failed["error"]
    good = torch.load(failed_dir / "checkpoints" / "enhance" / "last.ckpt", weights_only=True)
    assert all(
        torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point()
    )
    assert results(ok_dir)["status"] == "finished"
    sweep_runs = find_runs(tmp_path)
    assert [Path(j) for j, _ in sweep_runs.incomplete] == [failed_dir]
    assert len(sweep_runs.finished) == 1


def test_rerunning_a_finished_run_dir_leaves_its_files_byte_identical(smoke_run):
    run_dir, _ = smoke_run
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    done = run_train(f"hydra.run.dir={run_dir}")
    assert done.returncode != 0
    assert "holds a finished run" in done.stderr and "overwrite=true" in done.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_atomic_checkpoint_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def dies_midway(self, checkpoint, target, storage_options=None):
        Path(target).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(
        "lightning.pytorch.plugins.io.TorchCheckpointIO.save_checkpoint", dies_midway
    )
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))


def test_submitit_preemption_saves_a_checkpoint_then_requeues_and_the_run_finishes(tmp_path):
    # submitit signals USR2 before a time limit (or on preemption) and requeues the job: the
    # phase must end with last.ckpt written first, and the requeued job continue from it
    sweep = tmp_path / "sweep"
    usr2 = [f"+callbacks.kill._target_={KILL}", "+callbacks.kill.phase=enhance",
            "+callbacks.kill.epoch=0", "+callbacks.kill.signal_name=SIGUSR2"]  # fmt: skip
    done = run_train("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                     f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job", *usr2)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    job = sweep / "job"
    final = results(job)
    assert final["status"] == "finished"
    assert [p["name"] for p in final["phases"]] == ["stage1", "enhance", "finetune"]
    submitit_logs = "".join(p.read_text() for p in sweep.rglob("*_log.*"))
    assert "Caught signal SIGUSR2" in submitit_logs and "Requeued job" in submitit_logs
    train_logs = "".join(p.read_text() for p in job.glob("train*.log"))
    assert "stopped by SIGTERM; a resumable checkpoint was saved" in train_logs  # saved first
    assert "phase 'enhance' continues from" in train_logs
