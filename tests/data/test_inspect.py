"""Dataset inspection: per-split counts, nuclei statistics and a preview image."""

from __future__ import annotations

import numpy as np
from PIL import Image

from nucleiseg.data.inspect import format_table, summarise, write_preview
from nucleiseg.data.synthetic import SyntheticNuclei
from nucleiseg.data.tnbc import TNBCDataset


def test_summary_counts_nuclei_from_instance_maps():
    source = SyntheticNuclei(num_train=3, num_val=2, num_test=2, size=64, seed=4)
    summary = summarise(source)
    train = source.split("train")
    expected = np.mean([inst.max() for inst in train.instances])  # ids are 1..K
    assert summary["train"]["images"] == 3 and summary["val"]["images"] == 2
    assert summary["train"]["sizes"] == {"64x64": 3}
    assert summary["train"]["nuclei_per_image"]["mean"] == expected
    assert "| train | 3 | 64x64 (3) |" in format_table(summary)


def test_tnbc_summary_and_preview(tnbc_root, tmp_path):
    source = TNBCDataset(str(tnbc_root))
    summary = summarise(source)
    assert [summary[s]["images"] for s in ("train", "val", "test")] == [30, 10, 10]
    write_preview(source.split("train"), tmp_path / "preview.png", count=3)
    preview = np.asarray(Image.open(tmp_path / "preview.png").convert("RGB"))
    assert preview.shape[1] > preview.shape[0]  # a row of images
    rgb = preview.astype(int)
    green = (rgb[..., 1] > rgb[..., 0] + 80) & (rgb[..., 1] > rgb[..., 2] + 80)
    assert green.sum() > 500  # nuclei outlined in green


def test_consep_inspect_counts_nuclei_per_type(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, shared_dataset

    root = shared_dataset("consep")
    command = [sys.executable, "-m", "nucleiseg.data.inspect", "dataset=consep",
               f"dataset.root={root}", f"paths.output_dir={tmp_path}"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dataset 'consep' (0.25 µm per pixel)" in done.stdout
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [summary[s]["images"] for s in ("train", "val", "test")] == [352, 80, 224]
    per_type = summary["test"]["nuclei_per_type"]
    assert set(per_type) == {"1", "2", "3", "4"} and sum(per_type.values()) > 1000
