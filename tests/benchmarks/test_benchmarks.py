"""The benchmark entry point runs end to end at toy size and writes its figures.

Timings themselves are not asserted (they are the benchmark's output, not a test): these
tests check that ``python -m benchmarks.run`` measures what it says and never overwrites.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import run

TOY = [
    "size=small",
    "dataset.datamodule.source.num_train=8",
    "dataset.datamodule.source.num_val=4",
    "dataset.datamodule.source.size=64",
    "dataset.datamodule.batch_size=4",
]


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out_dir = tmp_path_factory.mktemp("bench")
    argv = ["--repeats", "1", "--skip", "loader", "infer", "--phase-backbones", "unetpp"]
    report = run.main([*argv, "--out-dir", str(out_dir), "--set", *TOY])
    return out_dir, report


def test_writes_the_printed_figures_with_the_machine(toy_report) -> None:
    out_dir, report = toy_report
    (written,) = out_dir.glob("*.json")
    assert json.loads(written.read_text()) == json.loads(json.dumps(report))
    assert report["machine"]["torch_threads"] >= 1
    assert report["profile"][-len(TOY) :] == TOY


def test_times_all_three_phases_on_both_sides(toy_report) -> None:
    _, report = toy_report
    assert [row["phase"] for row in report["training"]] == ["stage1", "enhance", "finetune"]
    for row in report["training"]:
        assert row["framework_images_per_s"] > 0 and row["plain_images_per_s"] > 0
        assert len(row["framework_runs"]) == len(row["plain_runs"]) == 1
        assert row["ratio"] == pytest.approx(row["framework_runs"][0] / row["plain_runs"][0])
        # the median step of each side: one step per batch of the steady epoch (2 here)
        assert row["framework_step_ms"] > 0 and row["plain_step_ms"] > 0
        assert row["step_ratio"] == pytest.approx(row["plain_step_ms"] / row["framework_step_ms"])


def test_phase_cost_per_backbone_beside_its_kernel_floor(toy_report) -> None:
    _, report = toy_report
    rows = report["phase_cost_by_backbone"]
    assert [row["backbone"] for row in rows] == [
        "smp_unet",
        "unetpp",
    ]  # the CPU profile's, then --phase-backbones
    for row in rows:
        assert row["phase2_cost_vs_phase3"] == pytest.approx(
            row["phase3_images_per_s"] / row["phase2_images_per_s"]
        )
        parts = row["breakdown"]
        assert parts["batch_size"] == 4
        floor = (
            parts["stage1_no_grad_forward_ms"] + parts["enhancer_forward_backward_ms"]
        ) / parts["both_forward_backward_ms"]
        assert parts["kernel_floor_phase2_vs_phase3"] == pytest.approx(floor)


def test_a_second_run_adds_a_result_and_keeps_the_first(toy_report) -> None:
    out_dir, _ = toy_report
    (first,) = out_dir.glob("*.json")
    before = first.read_text()
    argv = ["--skip", "train", "loader", "infer", "--out-dir", str(out_dir), "--set", *TOY]
    report = run.main(argv)
    assert report["startup"]["train_help_s"] > 0
    assert len(list(out_dir.glob("*.json"))) == 2
    assert first.read_text() == before


def test_result_names_never_collide(tmp_path: Path) -> None:
    (tmp_path / "2026-01-01_00-00-00.json").write_text("{}")
    assert run.new_result_path(tmp_path, "2026-01-01_00-00-00").name == "2026-01-01_00-00-00-1.json"


def test_the_profile_splits_a_steady_epoch_into_loop_work_and_framework_hooks(tmp_path) -> None:
    from benchmarks import profile_phases

    rows = profile_phases.main(["--set", *TOY, "--out-dir", str(tmp_path)])
    assert [row["phase"] for row in rows] == ["stage1", "enhance", "finetune"]
    for row in rows:
        assert row["batches"] == 2  # 8 images in batches of 4
        work = row["loop_work_s"]
        assert any(name.endswith("training_step") for name in work)
        assert any(name.endswith("optimizer_step") for name in work)
        # every hook of the framework is named, and together they fit inside the epoch
        assert row["top_hooks_s"] and all(name.startswith("[") for name in row["top_hooks_s"])
        assert 0 < row["hooks_s"] < row["epoch_s"]
        assert row["step_s"] < row["epoch_s"]
    (written,) = tmp_path.glob("profile-*.json")
    assert json.loads(written.read_text())["phases"] == json.loads(json.dumps(rows))
