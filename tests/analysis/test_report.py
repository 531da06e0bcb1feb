"""The sweep report: tables with both rows per backbone, seeds aggregated, paper numbers."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nucleiseg.analysis.report import build_rows, find_runs, main, report

from conftest import ROOT


def fake_run(job: Path, dataset: str, backbone: str, seed: int, dice1: float, dice2: float):
    job.mkdir(parents=True)
    (job / ".hydra").mkdir()

    def metrics(d):
        return {"precision": d, "recall": d, "dice": d, "iou": d / (2 - d)}

    results = {
        "dataset": dataset, "backbone": backbone, "seed": seed, "stage": "two_stage",
        "status": "finished", "phases": [],
        "test": {"stage1": metrics(dice1), "stage2_frozen": metrics(dice2),
                 "two_stage": metrics(dice2)},
    }  # fmt: skip
    (job / "results.json").write_text(json.dumps(results))


def test_rows_aggregate_seeds_and_pair_the_dagger_change(tmp_path):
    fake_run(tmp_path / "0", "tnbc", "unet", 0, 0.80, 0.83)
    fake_run(tmp_path / "1", "tnbc", "unet", 1, 0.70, 0.75)
    rows = build_rows(find_runs(tmp_path).finished)
    plain, dagger = rows
    assert plain["model"] == "U-Net" and dagger["model"] == "U-Net †"
    assert plain["dice"] == pytest.approx((0.75, 0.05))
    assert dagger["dice"] == pytest.approx((0.79, 0.04))
    assert dagger["dice_change"] == pytest.approx((0.04, 0.01))
    assert plain["paper_dice"] == 0.827 and dagger["paper_dice"] == 0.832


def test_the_papers_dice_stands_only_beside_the_papers_image_split(tmp_path):
    fake_run(tmp_path / "0", "tnbc", "unet", 0, 0.80, 0.83)
    fake_run(tmp_path / "1", "tnbc", "unet", 0, 0.70, 0.75)
    results = json.loads((tmp_path / "1" / "results.json").read_text())
    (tmp_path / "1" / "results.json").write_text(json.dumps({**results, "split_by": "slide"}))
    rows = build_rows(find_runs(tmp_path).finished)
    assert [(r["dataset"], r["paper_dice"]) for r in rows] == [
        ("tnbc", 0.827), ("tnbc", 0.832), ("tnbc (slide split)", None),
        ("tnbc (slide split)", None)]  # fmt: skip


def test_smp_networks_stand_beside_the_papers_network_of_their_family_marked(tmp_path):
    fake_run(tmp_path / "0", "tnbc", "smp_unet", 0, 0.80, 0.81)
    rows = build_rows(find_runs(tmp_path).finished)
    assert [r["paper_dice"] for r in rows] == [0.827, 0.832]
    assert all(r["paper_counterpart"] for r in rows)
    text = report(tmp_path)
    assert "| U-Net (smp, ResNet) † | 1 |" in text and "| 0.832 ° |" in text


def test_report_lists_failed_runs_and_writes_md_csv_tex(tmp_path, capsys):
    fake_run(tmp_path / "0", "lizard", "micronet", 0, 0.7, 0.72)
    (tmp_path / "1" / ".hydra").mkdir(parents=True)  # a job that died before results.json
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| Micro-Net † | 1 |" in out and "0.790" in out  # paper's two-stage Dice
    assert "failed or unfinished" in out and str(tmp_path / "1") in out
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [r["model"] for r in rows] == ["Micro-Net", "Micro-Net †"]
    assert "$^\\dagger$" in (tmp_path / "report.tex").read_text()


def test_report_of_missing_dir_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_smoke_sweep_report_has_both_rows_per_backbone_over_two_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "nucleiseg.train", "-m", "backbone=unet,micronet,unetpp",
        "seed=0,1", "experiment=smoke", "stage.max_epochs=1", "figures.test_images=1",
        "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    text = report(sweep)
    for model in ("U-Net", "Micro-Net", "U-Net++"):
        assert f"| {model} | 2 | " in text and f"| {model} † | 2 | " in text
    assert text.count("±") >= 6 * 4
    assert (sweep / "figure_synthetic.png").is_file()
    shutil.rmtree(sweep)


def test_every_arm_row_keeps_per_image_and_pooled_dice_apart_and_counts_its_training(tmp_path):
    from nucleiseg.analysis.arm_summary import arm_rows

    def phase(name, epochs, seconds):
        return {"name": name, "epochs": epochs, "wall_seconds": seconds}

    def output(pooled, per_image):
        scores = {"index": [0, 1], "dice": per_image, "det_recall": per_image}
        return {"precision": pooled, "recall": pooled, "dice": pooled, "iou": pooled / 2,
                "per_image": scores}  # fmt: skip

    shared = phase("stage1", 30, 120)
    for seed, extra in ((0, 10), (1, 20)):
        two_stage = {"dataset": "tnbc", "backbone": "unet", "seed": seed, "stage": "two_stage",
                     "status": "finished", "phases": [shared, phase("enhance", extra, 60),
                                                      phase("finetune", 5, 60)],
                     "test": {"stage1": output(0.7, [0.6, 0.7]),
                              "two_stage": output(0.8, [0.7, 0.8 + seed / 10])}}  # fmt: skip
        control = {"dataset": "tnbc", "backbone": "unet", "seed": seed, "stage": "base_wider",
                   "status": "finished", "phases": [phase("joint", 50, 300)],
                   "test": {"control": output(0.1, [0.0, 0.1])}}  # fmt: skip
        for name, run in (("two_stage", two_stage), ("base_wider", control)):
            job = tmp_path / str(seed) / name
            (job / ".hydra").mkdir(parents=True)
            (job / "results.json").write_text(json.dumps(run))
    rows = {r["arm"]: r for r in arm_rows(find_runs(tmp_path).finished)}
    assert list(rows) == ["stage1", "two_stage", "base_wider"]  # study order
    assert rows["stage1"]["epochs"] == (30, 0) and rows["stage1"]["minutes"] == (2, 0)
    assert rows["two_stage"]["epochs"] == pytest.approx((50, 5))  # 30 shared + 10/20 + 5
    assert rows["two_stage"]["dice_pixels"] == pytest.approx((0.8, 0))
    assert rows["two_stage"]["dice_per_image"] == pytest.approx((0.775, 0.025))
    assert rows["base_wider"]["dice_per_image"] == pytest.approx((0.05, 0))
    text = report(tmp_path)
    assert "| tnbc | U-Net | base_wider | 2 | 0.050 ± 0.000 | 0.100 ± 0.000 | 50 ± 0 |" in text
