"""Does stage 2 really help? Control stages, per-image scores and paired bootstrap intervals."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from nucleiseg.analysis.report import comparisons, crossed_bootstrap, find_runs, holm, report
from nucleiseg.lightning.phases import build_phases

from conftest import ROOT, compose_config


def test_bootstrap_of_identical_predictions_is_zero_width_at_zero():
    assert crossed_bootstrap(np.zeros((3, 10))) == (0.0, 0.0, 0.0, 1.0)


def test_bootstrap_of_a_constant_improvement_is_that_constant():
    # no spread to resample, yet not p = 0: the smallest p-value 9,999 resamples resolve
    assert crossed_bootstrap(np.full((3, 10), 0.04)) == pytest.approx((0.04, 0.04, 0.04, 2e-4))


def test_bootstrap_reproduces_a_hand_computed_case():
    # differences = 2 x seed + image on 2 seeds x 2 images. Each resample picks 2 seeds and
    # 2 images with replacement (16 equally likely (seed, image) draws of the weights
    # {0, 1/2, 1/2, 1}), so the statistic 2 w_seed + w_image is 0 and 3 with probability
    # 1/16 each: the 95% interval is [0, 3] and P(statistic <= 0) = 1/16, p = 2/16.
    result = crossed_bootstrap(np.array([[0.0, 1.0], [2.0, 3.0]]), resamples=20000)
    assert (result.mean, result.low, result.high) == (1.5, 0.0, 3.0)
    assert result.p_value == pytest.approx(0.125, abs=0.01)


def test_seed_variance_widens_the_interval_beyond_image_resampling():
    rng = np.random.default_rng(0)
    images = rng.normal(0.02, 0.02, 10)
    steady = np.stack([images, images, images])  # every seed gives the same differences
    shifted = steady + np.array([[-0.04], [0.0], [0.04]])  # same mean, seeds disagree
    a, b = crossed_bootstrap(steady), crossed_bootstrap(shifted)
    assert a.mean == pytest.approx(b.mean)
    assert b.high - b.low > 1.5 * (a.high - a.low)
    large = crossed_bootstrap(rng.normal(0.02, 0.05, (3, 400)))
    small = crossed_bootstrap(rng.normal(0.02, 0.05, (3, 10)))
    assert small.low <= small.mean <= small.high and large.high - large.low < small.high - small.low


def test_holm_adjusts_step_down_and_keeps_the_order():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, max(0.04 x 1, 0.06) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == [(0.03, True), (0.06, False), (0.06, False),
                                               (0.02, True)]  # fmt: skip
    assert holm([]) == []


@pytest.mark.parametrize("stage", ["base_extended", "base_wider", "enhance_no_image"])
def test_control_stages_compose(stage):
    cfg = compose_config([f"stage={stage}", "experiment=smoke"])
    phases = build_phases(cfg)
    assert cfg.stage.name == stage and phases[-1].test_as == "control"
    if stage == "enhance_no_image":
        assert cfg.model.enhancer.in_channels == 1
        assert cfg.model.two_stage_module.enhancer_sees_image is False
    if stage == "base_extended":
        assert phases[1].max_epochs == 2 * cfg.stage.max_epochs


def test_controls_run_through_the_sweep_and_appear_in_the_report(tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "nucleiseg.train", "-m",
        "stage=two_stage,base_extended,base_wider,enhance_no_image", "experiment=smoke",
        "stage.max_epochs=1", "figures.test_images=0", "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = find_runs(sweep).finished
    assert sorted(r["stage"] for r in runs) == sorted(
        ["two_stage", "base_extended", "base_wider", "enhance_no_image"]
    )
    two_stage = next(r for r in runs if r["stage"] == "two_stage")
    # same seed, same phase 1: the controls that share stage 1 train exactly the same one
    for stage in ("base_extended", "enhance_no_image"):
        control = next(r for r in runs if r["stage"] == stage)
        assert control["phases"][0]["best_val_loss"] == two_stage["phases"][0]["best_val_loss"]
        assert control["phases"][0]["test"] == two_stage["phases"][0]["test"]
    per_image = two_stage["test"]["two_stage"]["per_image"]
    assert per_image["index"] == [0, 1, 2, 3] and len(per_image["dice"]) == 4
    rows = {r["control"]: r for r in comparisons(runs)}
    assert set(rows) == {"stage1", "base_extended", "base_wider", "enhance_no_image"}
    text = report(sweep)
    assert "two-stage minus control" in text
    for control in rows:
        assert f"| {control} | 1 |" in text
    # one epoch per phase: the report names every phase the epoch cap ended
    assert "### how the phases ended" in text
    phases = sum(len(r["phases"]) for r in runs)
    assert f"{phases} phases in 4 finished runs: 0 ended by early stopping, {phases} by" in text
    assert text.count("- epoch cap: ") == phases
    # the headline table holds the two-stage run only, not the controls' stage-1 rows
    headline = text.split("### does stage 2 help")[0]
    assert "| U-Net | 1 |" in headline and headline.count("| U-Net | ") == 1


def test_training_seeds_share_the_test_images_and_split_seed_changes_them(tnbc_root):
    from hydra.utils import instantiate

    def test_names(*overrides: str) -> list[str]:
        cfg = compose_config(["dataset=tnbc", f"dataset.root={tnbc_root}", *overrides])
        datamodule = instantiate(cfg.dataset.datamodule, split_output=None)
        datamodule.setup("test")
        return list(datamodule.samples["test"].names)

    assert test_names("seed=0") == test_names("seed=1") == test_names("seed=2")
    assert test_names("dataset.split_seed=1") != test_names("dataset.split_seed=0")


def _run(stage: str, seed: int, images: list[str], dice: list[float]) -> dict:
    per_image = {"index": list(range(len(dice))), "dice": dice, "det_recall": dice}
    output = "two_stage" if stage == "two_stage" else "control"
    return {"dataset": "tnbc", "backbone": "unet", "stage": stage, "seed": seed,
            "test_images": images, "test": {output: {"per_image": per_image}}}  # fmt: skip


def test_report_refuses_to_pair_runs_whose_test_images_differ():
    from nucleiseg.analysis.report import comparison_markdown

    same = [
        _run("two_stage", 0, ["a", "b"], [0.8, 0.6]),
        _run("base_extended", 0, ["a", "b"], [0.7, 0.6]),
    ]
    (row,) = comparisons(same)
    assert row["dice"].mean == pytest.approx(0.05)
    other = [*same, _run("two_stage", 1, ["c", "d"], [0.9, 0.9]),
             _run("base_extended", 1, ["c", "d"], [0.1, 0.1])]  # fmt: skip
    (refused,) = comparisons(other)
    assert "test image lists differ" in refused["refused"]
    assert "not paired" in "\n".join(comparison_markdown([refused]))


def test_a_one_seed_comparison_is_marked_as_resampling_test_images_only():
    from nucleiseg.analysis.report import comparison_markdown

    one = [_run("two_stage", 0, ["a", "b"], [0.8, 0.6]),
           _run("base_extended", 0, ["a", "b"], [0.7, 0.5])]  # fmt: skip
    two = [*one, _run("two_stage", 1, ["a", "b"], [0.9, 0.7]),
           _run("base_extended", 1, ["a", "b"], [0.6, 0.7])]  # fmt: skip
    text = "\n".join(comparison_markdown(comparisons(one)))
    assert "| 1 ‡ |" in text and "test images only" in text
    text = "\n".join(comparison_markdown(comparisons(two)))
    assert "| 2 § |" in text and "‡" not in text  # two seeds: few, flagged


def test_a_bootstrap_p_value_never_falls_below_its_resolution():
    from nucleiseg.analysis.control_comparisons import p_value_floor

    far_from_zero = np.random.default_rng(0).normal(1.0, 0.01, (3, 20))
    result = crossed_bootstrap(far_from_zero, resamples=999)
    assert result.p_value == pytest.approx(p_value_floor(999)) and result.p_value > 0


def test_the_seed_level_sign_flip_test_is_exact():
    from nucleiseg.analysis.control_comparisons import sign_flip_p_value

    assert sign_flip_p_value([0.02, 0.03, 0.01]) == pytest.approx(0.25)  # 2 of 8 patterns
    assert sign_flip_p_value([0.02, -0.03, 0.01]) == pytest.approx(1.0)
    assert sign_flip_p_value([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)


def test_the_report_shows_p_at_its_resolution_and_flags_few_seeds():
    from nucleiseg.analysis.control_comparisons import Interval
    from nucleiseg.analysis.report import comparison_markdown

    row = {"dataset": "tnbc", "backbone": "unet", "control": "stage1", "seeds": 3,
           "dice": Interval(0.03, 0.02, 0.04, 2e-4),
           "det_recall": Interval(0.0, -0.1, 0.1, 1.0), "seed_p": 0.25,
           "holm_p": 26 * 2e-4, "holm_survives": True}  # fmt: skip
    text = "\n".join(comparison_markdown([row] * 26))
    assert "| ≤ 0.005 ✓ | 0.250 |" in text
    assert "| 0.000" not in text  # no p-value reads as zero
    assert "3 §" in text and "10 multisets" in text
