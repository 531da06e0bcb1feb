"""End-to-end runs of the real `train()` and the Hydra entry point at smoke size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nucleiseg.lightning.phases import build_phases
from nucleiseg.training.checkpoints import CheckpointError
from nucleiseg.training.orchestration import train

from conftest import ROOT, compose_config, smoke_overrides

PIXEL = ("precision", "recall", "dice", "iou")


def pixel(metrics: dict) -> dict[str, float]:
    return {k: metrics[k] for k in PIXEL}


def test_smoke_run_writes_results_for_all_three_phases(smoke_run):
    run_dir, results = smoke_run
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk == results
    assert results["status"] == "finished"
    assert (results["dataset"], results["backbone"], results["seed"]) == ("synthetic", "unet", 0)
    assert Path(results["config"]).is_file()
    assert [p["name"] for p in results["phases"]] == ["stage1", "enhance", "finetune"]
    for phase in results["phases"]:
        assert phase["epochs"] >= 1 and phase["best_val_loss"] > 0
        assert phase["stop_reason"] in {"early_stopping", "max_epochs"}
        assert not Path(phase["best_checkpoint"]).is_absolute()  # a moved run dir resumes
        assert (run_dir / phase["best_checkpoint"]).is_file()
    assert set(results["test"]) == {"stage1", "stage2_frozen", "two_stage"}
    for metrics in results["test"].values():
        assert all(0.0 <= metrics[m] <= 1.0 for m in PIXEL)
        assert "dice_per_image_mean" in metrics and "dice_per_image_std" in metrics
        objects = metrics["objects"]
        assert {"det_f1", "aji", "pq", "dq", "sq", "count_error"} <= set(objects)
        assert all(0.0 <= objects[k] <= 1.0 for k in ("det_f1", "aji", "pq"))
    comparison = results["test"]["two_stage"]["nuclei_vs_stage1"]
    assert comparison["true_nuclei"] > 0
    assert 0 <= comparison["found_by_two_stage_only"] <= comparison["true_nuclei"]


def test_smoke_run_logs_phase_keyed_metrics_to_csv(smoke_run):
    run_dir, _ = smoke_run
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("stage1/val/loss", "enhance/val/two_stage/dice", "finetune/test/two_stage/iou"):
        assert key in header


def test_stage2_frozen_result_keeps_phase1_stage1_output(smoke_run):
    _, results = smoke_run
    phase1 = results["phases"][0]["test"]["stage1"]
    phase2 = results["phases"][1]["test"]["stage1"]
    assert pixel(phase1) == pytest.approx(pixel(phase2))
    assert phase1["objects"] == pytest.approx(phase2["objects"])


def test_enhance_stage_trains_on_a_given_stage1_checkpoint(smoke_run, tmp_path):
    run_dir, first = smoke_run
    ckpt = run_dir / "checkpoints" / "stage1" / "best.ckpt"
    cfg = compose_config(smoke_overrides("stage=enhance", f"stage.init_from={ckpt}"), tmp_path)
    results = train(cfg)
    assert [p["name"] for p in results["phases"]] == ["enhance"]
    assert pixel(results["phases"][0]["test"]["stage1"]) == pytest.approx(
        pixel(first["test"]["stage1"])
    )
    assert set(results["test"]) == {"stage2_frozen"}


def test_enhance_stage_without_checkpoint_names_the_key(tmp_path):
    cfg = compose_config(smoke_overrides("stage=enhance"), tmp_path)
    with pytest.raises(ValueError, match="stage.init_from="):
        train(cfg)


def test_missing_checkpoint_file_is_named_in_the_error(tmp_path):
    missing = tmp_path / "nope.ckpt"
    cfg = compose_config(smoke_overrides("stage=finetune", f"stage.init_from={missing}"), tmp_path)
    with pytest.raises(CheckpointError, match="nope.ckpt"):
        train(cfg)


def test_base_stage_trains_stage1_only(tmp_path):
    results = train(compose_config(smoke_overrides("stage=base", "stage.max_epochs=1"), tmp_path))
    assert [p["name"] for p in results["phases"]] == ["stage1"]
    assert set(results["test"]) == {"stage1"}


@pytest.mark.parametrize("stage", ["two_stage", "base", "enhance", "finetune"])
@pytest.mark.parametrize("backbone", ["unet", "unetpp", "micronet", "smp_unet", "smp_unetpp"])
def test_every_backbone_and_stage_composes(backbone, stage):
    cfg = compose_config([f"backbone={backbone}", f"stage={stage}", "stage.init_from=x.ckpt"])
    assert cfg.backbone.name == backbone and cfg.stage.name == stage
    assert build_phases(cfg)[0].max_epochs == cfg.dataset.schedule.max_epochs


def test_backbone_sweep_runs_all_five_backbones_at_smoke_size(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "nucleiseg.train", "-m",
        "backbone=unet,micronet,unetpp,smp_unet,smp_unetpp", "experiment=smoke",
        "stage.max_epochs=1", "figures.test_images=0",
        "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit())
    expected = ["unet", "micronet", "unetpp", "smp_unet", "smp_unetpp"]
    assert [job.split(",")[0] for job in jobs] == [
        f"{i}_backbone={name}" for i, name in enumerate(expected)
    ]
    for job, name in zip(jobs, expected, strict=True):
        assert "experiment=smoke" in job  # job dirs are named after their overrides
        results = json.loads((sweep_dir / job / "results.json").read_text())
        assert results["status"] == "finished" and results["backbone"] == name


@pytest.mark.slow
def test_a_short_run_learns_far_beyond_an_untrained_model(tmp_path):
    import lightning as L
    from hydra.utils import instantiate

    from nucleiseg.training.builders import build_modules

    overrides = smoke_overrides(
        "stage.max_epochs=8", "stage.patience=8", "model.optimizer.lr=1e-3", "logger=none",
        "dataset.datamodule.source.num_train=16", "figures.test_images=0",
    )  # fmt: skip
    cfg = compose_config(overrides, tmp_path / "run")
    trained = train(cfg)["test"]["two_stage"]["dice"]
    L.seed_everything(cfg.seed)
    untrained = build_modules(cfg)["two_stage"]
    untrained.phase = "untrained"
    datamodule = instantiate(cfg.dataset.datamodule, split_output=None)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(untrained, datamodule=datamodule, verbose=False)
    baseline = untrained.split_results("test")["two_stage"]["dice"]
    assert trained > 0.8  # 8 epochs on 16 toy tiles: 0.947, 0.939, 0.955 for seeds 0-2 here
    assert trained > baseline + 0.3, (trained, baseline)


def test_a_finished_run_ends_with_one_line_of_its_test_figures(smoke_run):
    from nucleiseg.training.orchestration import results_summary

    _, results = smoke_run
    line = results_summary(results)
    dice = results["test"]["two_stage"]["dice"]
    assert line.startswith("test Dice (pixels pooled): stage1 ")
    assert f"two_stage {dice:.3f}" in line and line.endswith("s of training")
