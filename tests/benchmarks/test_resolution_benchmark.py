"""``python -m benchmarks.resolution`` scores one checkpoint on the same images at two pixel
sizes: the upsampled copy keeps every nucleus, and the model sees it at its own size."""

from __future__ import annotations

import json

import pytest

from benchmarks import resolution

from conftest import shared_dataset


def test_the_same_nuclei_are_scored_at_every_pixel_size(smoke_run, tmp_path, capsys):
    root = shared_dataset("consep")
    run_dir, _ = smoke_run
    out = tmp_path / "resolution.json"
    ckpt = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    args = ["--ckpt", str(ckpt), "--root", str(root), "--limit", "2", "--out", str(out)]
    assert resolution.main(args) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["input_mpp"] for r in runs.values()] == [0.25, 0.125, 0.25]
    assert len({r["true_per_image"] for r in runs.values()}) == 1  # ids survive upsampling
    assert "| upsampled, right input_mpp | 0.125 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:  # an existing --out is never overwritten
        resolution.main(args)
    assert stop.value.code == 2
    assert json.loads(out.read_text())["runs"] == runs
