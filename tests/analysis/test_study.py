"""The study: phase 1 trained once per seed and shared by branching arms; interrupted and
rerun, it continues and never retrains a finished run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from nucleiseg.analysis.study import plan, run_study, study_call
from nucleiseg.training.branching import BranchError

from conftest import CONF_DIR, compose_config, smoke_overrides

TINY = ["experiment=smoke", "stage.max_epochs=1", "figures.test_images=0",
        "trainer.enable_progress_bar=false"]  # fmt: skip


def study_config(out, **changes):
    cfg = OmegaConf.load(CONF_DIR / "study.yaml")
    cfg.pop("hydra")
    plan = {
        "output_dir": str(out),
        "backbones": ["unet"],
        "seeds": [0],
        "splits": ["default"],
        "arms": ["two_stage", "base_extended"],
        "extra_arms": {},
        "overrides": TINY,
    }
    for key, value in {**plan, **changes}.items():  # assigned, not merged
        cfg[key] = value
    return cfg


def test_plan_puts_each_two_stage_run_before_the_arms_that_branch_from_it(tmp_path):
    cfg = study_config(tmp_path, backbones=["unet", "micronet"], seeds=[0, 1],
                       arms=["base_wider", "enhance_no_image", "two_stage"],
                       extra_arms={"unet": ["enhance_residual"]})  # fmt: skip
    runs = plan(cfg)
    assert len(runs) == 2 * (4 + 3)
    for run in runs:
        if run.arm in ("enhance_no_image", "enhance_residual"):
            assert run.branch_from == run.run_dir.parent / "two_stage"
            assert runs.index(run) > [r.run_dir for r in runs].index(run.branch_from)
        else:
            assert run.branch_from is None
    assert {r.arm for r in runs if r.backbone == "micronet"} == {
        "two_stage",
        "base_wider",
        "enhance_no_image",
    }
    with pytest.raises(ValueError, match="not recipes the study knows"):
        plan(study_config(tmp_path, arms=["two_stage", "base_deeper"]))


def test_a_study_stopped_after_its_first_run_continues_without_retraining_it(tmp_path):
    first = run_study(study_config(tmp_path, max_runs=1))  # as if killed after one run
    assert (first["finished"], first["left"]) == (1, 1)
    assert first["left_runs"] == ["default/unet/seed_0/base_extended"]
    two_stage = tmp_path / "default" / "unet" / "seed_0" / "two_stage"
    stamps = {p: p.stat().st_mtime_ns for p in two_stage.rglob("*") if p.is_file()}

    second = run_study(study_config(tmp_path))
    assert (second["finished"], second["left"], second["trained_this_call"]) == (2, 0, 1)
    assert {p: p.stat().st_mtime_ns for p in two_stage.rglob("*") if p.is_file()} == stamps
    control_dir = two_stage.parent / "base_extended"
    control = json.loads((control_dir / "results.json").read_text())
    source = json.loads((two_stage / "results.json").read_text())
    shared = control["phases"][0]
    assert shared["branched_from"] == str(two_stage)
    assert shared["best_val_loss"] == source["phases"][0]["best_val_loss"]
    assert shared["test"] == source["phases"][0]["test"]
    assert not (control_dir / "checkpoints" / "stage1").exists()  # phase 1 not retrained
    assert control["phases"][1]["name"] == "extend" and control["status"] == "finished"
    third = run_study(study_config(tmp_path))  # nothing left: nothing trained
    assert third["trained_this_call"] == 0 and (tmp_path / "study_progress.json").is_file()


def test_a_part_with_a_failed_run_still_reports_and_publishes_the_rest(tmp_path):
    out, docs = tmp_path / "study", tmp_path / "docs"
    docs.mkdir()
    (docs / "README.md").write_text("written by hand")
    cfg = study_config(out, arms=["two_stage"], backbones=["unet", "no_such_backbone"],
                       docs_dir=str(docs))  # fmt: skip
    assert study_call(cfg) == 1  # the unknown backbone's run fails
    progress = json.loads((docs / "study_progress.json").read_text())
    assert (progress["finished"], progress["left"]) == (1, 1)
    assert [f["run"] for f in progress["failed_this_call"]] == [
        "default/no_such_backbone/seed_0/two_stage"
    ]
    assert (docs / "report.md").read_text() == (out / "report.md").read_text()
    assert "U-Net" in (docs / "report.md").read_text()
    assert (docs / "README.md").read_text() == "written by hand"


def test_branching_refuses_a_source_trained_differently(tmp_path):
    from nucleiseg.training.orchestration import train

    source = tmp_path / "two_stage"
    train(compose_config(smoke_overrides(*TINY[1:]), source))
    other_seed = smoke_overrides(*TINY[1:], "stage=base_extended", "seed=1",
                                 f"stage.branch_from={source}")  # fmt: skip
    with pytest.raises(BranchError, match="seed: 0 -> 1"):
        train(compose_config(other_seed, tmp_path / "control"))
    wider = smoke_overrides(*TINY[1:], "stage=base_wider", f"stage.branch_from={source}")
    with pytest.raises(BranchError, match="no finished phase that starts this recipe"):
        train(compose_config(wider, tmp_path / "wider"))
    missing = smoke_overrides(*TINY[1:], "stage=base_extended",
                              f"stage.branch_from={tmp_path / 'none'}")  # fmt: skip
    with pytest.raises(BranchError, match="holds no run"):
        train(compose_config(missing, tmp_path / "control2"))


def test_residual_enhancer_starts_at_stage_one_and_then_learns():
    from nucleiseg.inference.export import exported_model
    from nucleiseg.lightning.phases import build_phases
    from nucleiseg.training.builders import build_modules

    cfg = compose_config(smoke_overrides("stage=enhance_residual"))
    module = build_modules(cfg)["two_stage"]
    enhance = build_phases(cfg)[1]
    module.configure_phase(enhance, 1)
    image = torch.rand(2, 3, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    logits, _ = module.compute_outputs(image, target)
    assert torch.equal(logits["two_stage"], logits["stage1"])  # phase 2 starts at stage 1
    optimizer = torch.optim.Adam(module.enhancer.parameters(), lr=1e-2)
    module.loss(logits, target).backward()
    optimizer.step()
    module.eval()
    with torch.no_grad():
        after = module(image)
        exported = exported_model(module)(image)
    assert not torch.equal(after["two_stage"], after["stage1"])
    assert np.allclose(exported.numpy(), torch.sigmoid(after["two_stage"]).numpy(), atol=1e-6)


def test_branching_ignores_paths_inside_each_run_dir(tmp_path, tnbc_root):
    """Real datasets write split.csv into the run dir: that path differs between the
    source and the branch and must not block sharing phase 1."""
    from nucleiseg.lightning.phases import build_phases
    from nucleiseg.training.branching import branched_phases

    tnbc = ["dataset=tnbc", f"dataset.root={tnbc_root}", *TINY]
    source = tmp_path / "two_stage"
    source_cfg = compose_config(tnbc, source)
    assert str(source) in str(source_cfg.dataset.datamodule.split_output)
    (source / "checkpoints" / "stage1").mkdir(parents=True)
    (source / "checkpoints" / "stage1" / "best.ckpt").write_bytes(b"weights")
    OmegaConf.save(source_cfg, source / "config.yaml", resolve=True)
    record = {"name": "stage1", "best_checkpoint": "checkpoints/stage1/best.ckpt", "epochs": 3}
    (source / "results.json").write_text(json.dumps({"phases": [record]}))
    branch = tmp_path / "base_extended"
    cfg = compose_config([*tnbc, "stage=base_extended", f"stage.branch_from={source}"], branch)
    (shared,) = branched_phases(cfg, build_phases(cfg), branch)
    assert shared["epochs"] == 3
    assert (branch / shared["best_checkpoint"]).resolve() == source / "checkpoints/stage1/best.ckpt"


def test_make_study_command_parses_and_points_every_run_at_data(tmp_path):
    """The Makefile's study line runs as printed (Hydra's grammar) and passes DATA on."""
    import shlex
    import subprocess
    import sys

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from conftest import ROOT

    # Under `make test` (CI) this make is nested: --no-print-directory keeps its
    # "Entering directory" line out of what it prints.
    docs = tmp_path / "docs"
    printed = subprocess.run(["make", "--no-print-directory", "-n", "study", "DATA=/data/here",
                              f"STUDY_DIR={tmp_path}", f"STUDY_DOCS={docs}", "MAX_RUNS=0",
                              f"PYTHON={sys.executable}"],
                             cwd=ROOT, check=True, capture_output=True,
                             text=True).stdout.splitlines()[0]  # fmt: skip
    argv = shlex.split(printed)
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    progress = json.loads((tmp_path / "study_progress.json").read_text())
    assert progress["runs"] == progress["left"] == 78 and progress["trained_this_call"] == 0
    assert json.loads((docs / "study_progress.json").read_text()) == progress
    (overrides,) = [a for a in argv if a.startswith("overrides=")]
    per_run = OverridesParser.create().parse_overrides([overrides])[0].value()
    cfg = compose_config([*per_run, "backbone=smp_unet", "stage=two_stage"], tmp_path / "run")
    assert cfg.dataset.root == "/data/here/TNBC_NucleiSegmentation"
