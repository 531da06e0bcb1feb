"""Overlay colours (paper Figures 2/3), learning curves and per-run figure files."""

from __future__ import annotations

import numpy as np
from PIL import Image

from nucleiseg.viz.curves import read_phase_series
from nucleiseg.viz.overlays import FN, FOUND, FP, TP, difference_map, error_map, run_figure


def test_error_map_colours_tp_gray_fp_red_fn_green():
    truth = np.array([[1, 1, 0, 0]], bool)
    pred = np.array([[1, 0, 1, 0]], bool)
    colours = error_map(pred, truth)[0]
    assert tuple(colours[0]) == TP and tuple(colours[1]) == FN
    assert tuple(colours[2]) == FP and tuple(colours[3]) == (0, 0, 0)
    assert TP[0] == TP[1] == TP[2]  # gray
    assert FP[0] > 200 > FP[1] and FN[1] > 150 > FN[0]  # red, green


def test_difference_is_white_where_two_stage_found_what_stage1_missed():
    stage1 = np.array([[1, 0, 0, 1]], bool)
    two_stage = np.array([[1, 1, 0, 0]], bool)
    colours = difference_map(stage1, two_stage)[0]
    assert tuple(colours[1]) == FOUND == (255, 255, 255)
    assert [tuple(c) for c in colours[[0, 2, 3]]] == [(0, 0, 0)] * 3


def test_run_figure_draws_the_five_columns_in_those_colours(tmp_path):
    truth = np.zeros((1, 64, 64), bool)
    truth[0, :, :32] = True  # left half is nucleus
    stage1 = np.zeros((1, 64, 64))
    stage1[0, :, :16] = 1.0  # finds a quarter: the rest of the left half is missed
    two_stage = np.zeros((1, 64, 64))
    two_stage[0, :, :32] = 1.0
    two_stage[0, :, 48:] = 1.0  # and a false positive on the right
    data = {
        "images": np.full((1, 64, 64, 3), 200, np.uint8),
        "masks": truth,
        "stage1": stage1,
        "two_stage": two_stage,
        "names": np.array(["case"]),
    }
    run_figure(data, tmp_path / "overlays.png")
    pixels = np.asarray(Image.open(tmp_path / "overlays.png").convert("RGB")).reshape(-1, 3)
    present = {tuple(p) for p in pixels}
    for colour in (TP, FP, FN, FOUND):
        assert colour in present


def test_learning_curves_put_phases_one_after_another(smoke_run):
    run_dir, results = smoke_run
    data = read_phase_series(run_dir / "csv" / "metrics.csv", results["phases"])
    epochs = [p["epochs"] for p in results["phases"]]
    assert data["boundaries"] == [0, epochs[0], epochs[0] + epochs[1]]
    val_epochs = sorted(e for e, _ in data["series"]["val loss"])
    assert val_epochs == list(range(1, sum(epochs) + 1))


def test_smoke_run_writes_overlay_and_curve_figures(smoke_run):
    run_dir, _ = smoke_run
    figures = run_dir / "figures"
    for name in ("overlays.png", "learning_curves.png"):
        assert Image.open(figures / name).size[0] > 300
    saved = np.load(figures / "predictions.npz")
    assert saved["stage1"].shape == saved["two_stage"].shape == saved["masks"].shape
