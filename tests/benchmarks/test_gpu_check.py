"""The GPU check's CPU side: its plan, its dry run, its result file, its no-CUDA exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

from conftest import ROOT


def test_dry_run_prints_every_step_with_its_commands_within_nine_minutes():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--tnbc-root", "/data/tnbc"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for step in ("machine", "smoke", "ddp", "flops", "bench", "predict", "tnbc"):
        assert f"\n{step} (budget" in "\n" + done.stdout
    assert "trainer=gpu compile=true" in done.stdout
    assert "dataset.root=/data/tnbc" in done.stdout
    total = int(done.stdout.strip().splitlines()[-1].split()[2])
    assert total <= 9 * 60


def test_steps_option_picks_a_subset_and_rejects_unknown_names(capsys):
    assert gpu_check.main(["--dry-run", "--steps", "smoke", "flops"]) == 0
    out = capsys.readouterr().out
    assert "smoke (budget" in out and "flops (budget" in out and "tnbc (budget" not in out
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry-run", "--steps", "warp"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA answer")
def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path, capsys):
    assert gpu_check.main(["--out-dir", str(tmp_path)]) == 2
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_result_file_is_rewritten_after_each_step_and_never_overwrites(tmp_path):
    import datetime as dt

    now = dt.datetime(2026, 11, 26, 12, 0, 0)
    first = gpu_check.ResultFile(tmp_path, now)
    first.record("machine", {"gpu": "NVIDIA H100 80GB HBM3"})
    assert json.loads(first.path.read_text())["steps"] == {
        "machine": {"gpu": "NVIDIA H100 80GB HBM3"}
    }
    first.record("smoke", {"ok": True})
    assert list(json.loads(first.path.read_text())["steps"]) == ["machine", "smoke"]
    second = gpu_check.ResultFile(tmp_path, now)
    assert second.path != first.path and Path(first.path).is_file()
    assert json.loads(first.path.read_text())["steps"]["smoke"] == {"ok": True}


def test_peak_table_knows_the_common_gpus_and_takes_an_override():
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == pytest.approx(756.0)
    assert gpu_check.peak_tflops("NVIDIA H200") == pytest.approx(989.4)
    assert gpu_check.peak_tflops("NVIDIA L4") == pytest.approx(121.0)
    assert gpu_check.peak_tflops("Some Future GPU") is None
    assert gpu_check.peak_tflops("Some Future GPU", 500.0) == 500.0


def test_flop_count_of_the_two_stage_unet_is_counted_not_assumed():
    # forward + backward of the enhancer alone on 256 px: 3 x (2 x 9 x cin x 64) + 2 x 64
    # multiply-adds per pixel forward, ~3x that with backward: a lower bound for the model
    enhancer_forward = 2 * 256 * 256 * (9 * 4 * 64 + 9 * 64 * 64 * 2 + 64)
    flops = gpu_check.flops_per_image("unet", size=256)
    assert flops > 2 * enhancer_forward
