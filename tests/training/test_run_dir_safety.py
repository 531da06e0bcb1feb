"""Run dirs and sweeps under misuse: no resume under another config, one live run per dir,
moved dirs still resume, setup failures recorded, broken results listed, exports atomic."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from nucleiseg.analysis.report import find_runs, report
from nucleiseg.training.orchestration import train
from nucleiseg.training.run_dir import RunExistsError, lock_run_dir

from conftest import compose_config, smoke_overrides

STAGE1_ONLY = ["stage=base", "stage.max_epochs=1", "figures.test_images=0"]


@pytest.fixture(scope="module")
def unfinished_run(tmp_path_factory):
    """A phase-1-only run whose results.json is set back to 'running': a crash after phase 1."""
    run_dir = tmp_path_factory.mktemp("unfinished")
    train(compose_config(smoke_overrides(*STAGE1_ONLY), run_dir))
    results = json.loads((run_dir / "results.json").read_text())
    results["status"] = "running"
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def test_resume_under_another_seed_is_refused_with_the_differing_key(unfinished_run):
    before = {p: p.read_bytes() for p in unfinished_run.rglob("*") if p.is_file()}
    cfg = compose_config(smoke_overrides(*STAGE1_ONLY, "seed=7"), unfinished_run)
    with pytest.raises(RunExistsError, match=r"seed: 0 -> 7"):
        train(cfg)
    after = {p: p.read_bytes() for p in before}
    assert after == before  # config.yaml and results.json untouched


@pytest.mark.parametrize(
    ("key", "resumes"), [("merge_convex", True), ("min_distance", False)], ids=["null", "set"]
)
def test_a_run_begun_before_a_key_existed_resumes_only_if_the_key_defaults_to_null(
    unfinished_run, tmp_path, key, resumes
):
    """A key added to conf/ after the run began (absent from its config.yaml and from the
    fingerprint it stored) is null there: at a null default the run resumes, else refused."""
    from omegaconf import OmegaConf

    from nucleiseg.training.run_dir import config_fingerprint

    run = tmp_path / "run"
    shutil.copytree(unfinished_run, run)
    begun = OmegaConf.load(run / "config.yaml")
    del begun.postprocess[key]
    OmegaConf.save(begun, run / "config.yaml")
    results = json.loads((run / "results.json").read_text())
    results["config_fingerprint"] = config_fingerprint(begun)
    (run / "results.json").write_text(json.dumps(results))
    cfg = compose_config(smoke_overrides(*STAGE1_ONLY), run)
    assert config_fingerprint(cfg) != results["config_fingerprint"]
    if resumes:
        assert train(cfg)["status"] == "finished"
    else:
        with pytest.raises(RunExistsError, match=rf"postprocess.{key}: None -> 4"):
            train(cfg)


def test_a_moved_run_dir_resumes_from_its_own_checkpoints(unfinished_run, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(unfinished_run, moved)
    record = json.loads((moved / "results.json").read_text())["phases"][0]
    assert not record["best_checkpoint"].startswith("/")
    shutil.rmtree(unfinished_run / "checkpoints")  # the old place is gone
    results = train(compose_config(smoke_overrides(*STAGE1_ONLY), moved))
    assert results["status"] == "finished"
    assert results["phases"][0] == record  # reused, not retrained


def test_a_failed_resume_keeps_the_phases_it_had_finished(unfinished_run, tmp_path):
    """A resume that fails while reusing a finished phase (here its best checkpoint is gone)
    records the failure without dropping that phase: the next resume still skips it."""
    run = tmp_path / "run"
    shutil.copytree(unfinished_run, run)
    record = json.loads((run / "results.json").read_text())["phases"][0]
    (run / record["best_checkpoint"]).unlink(missing_ok=True)
    with pytest.raises(Exception, match="best.ckpt"):
        train(compose_config(smoke_overrides(*STAGE1_ONLY), run))
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "failed" and "best.ckpt" in results["error"]
    assert results["phases"] == [record]


def test_a_second_live_run_in_one_dir_is_refused(tmp_path):
    held = lock_run_dir(tmp_path)
    try:
        with pytest.raises(RunExistsError, match="in use by a live run"):
            train(compose_config(smoke_overrides(), tmp_path))
    finally:
        held.close()
    lock_run_dir(tmp_path).close()  # free again once the first run ends


def test_a_setup_failure_is_recorded_in_results_json(tmp_path):
    cfg = compose_config(smoke_overrides("dataset=folder", f"dataset.root={tmp_path / 'none'}"),
                         tmp_path / "run")  # fmt: skip
    with pytest.raises(Exception, match="none"):
        train(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and "none" in results["error"]


def test_report_lists_corrupt_and_foreign_results_and_reports_the_rest(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    sweep = tmp_path / "sweep"
    (sweep / "0_seed=0").mkdir(parents=True)
    shutil.copy(run_dir / "results.json", sweep / "0_seed=0" / "results.json")
    (sweep / "1_seed=1").mkdir()
    (sweep / "1_seed=1" / "results.json").write_text('{"status": "finis')  # cut mid-write
    (sweep / "2_evaluate").mkdir()
    (sweep / "2_evaluate" / "results.json").write_text('{"checkpoint": "x", "test": {}}')
    runs = find_runs(sweep)
    assert len(runs.finished) == 1
    assert sorted(p.parent.name for p, _ in runs.unreadable) == ["1_seed=1", "2_evaluate"]
    text = report(sweep)
    assert "unreadable or foreign results.json" in text and "1_seed=1" in text
    assert "| U-Net | 1 |" in text


@pytest.mark.parametrize(("fmt", "name"), [("torchscript", "model.pt"), ("onnx", "model.onnx")])
def test_a_failed_export_leaves_the_good_model_in_place(tmp_path, monkeypatch, fmt, name):
    from nucleiseg.inference import export as export_module
    from nucleiseg.models import ClassicUNet, EnhancementNet

    model = export_module.ExportedModel(ClassicUNet(base_channels=4), EnhancementNet()).eval()
    target = tmp_path / name
    export_module.export(model, target, fmt)
    good = target.read_bytes()
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # every check now fails
    with pytest.raises(RuntimeError, match="nothing was written"):
        export_module.export(model, target, fmt)
    assert target.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no sidecar, no temporary file
    image = torch.rand(1, 3, 64, 64)
    got = export_module.run_exported(target, fmt, image.numpy())
    with torch.no_grad():
        assert abs(got - model(image).numpy()).max() < 1e-4


@pytest.mark.parametrize(
    ("target", "changes"),
    [
        ("lightning.pytorch.callbacks.StochasticWeightAveraging", True),
        ("lightning.pytorch.callbacks.GradientAccumulationScheduler", True),
        ("my_lab.callbacks.NotImportableHere", True),
        ("lightning.pytorch.callbacks.LearningRateMonitor", False),
    ],
)
def test_a_callback_that_may_change_training_is_part_of_the_fingerprint(target, changes, tmp_path):
    from omegaconf import open_dict

    from nucleiseg.training.run_dir import config_fingerprint

    from conftest import compose_config, smoke_overrides

    base = compose_config(smoke_overrides(), tmp_path)
    extra = compose_config(smoke_overrides(), tmp_path)
    with open_dict(extra):
        extra.callbacks.added = {"_target_": target}
    assert (config_fingerprint(extra) != config_fingerprint(base)) is changes


def test_lightnings_slurm_resume_never_finds_another_phases_checkpoint(tmp_path):
    # Lightning resumes a requeued SLURM job from the newest hpc_ckpt_<n>.ckpt in the
    # Trainer's default_root_dir; each phase has its own, so a stale one of phase 2 (or one
    # in the run dir) is not picked up by phase 3
    from nucleiseg.lightning.phases import build_phases
    from nucleiseg.training.phase_runner import phase_trainer

    from conftest import compose_config, smoke_overrides

    cfg = compose_config(smoke_overrides(), tmp_path)
    phases = build_phases(cfg)
    for folder in (tmp_path, tmp_path / "checkpoints" / "enhance"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hpc_ckpt_1.ckpt").write_bytes(b"another phase's state")
    finetune = next(p for p in phases if p.name == "finetune")
    trainer, _, _ = phase_trainer(cfg, finetune, 2, tmp_path, [])
    assert trainer.default_root_dir == str(tmp_path / "checkpoints" / "finetune")
    assert trainer._checkpoint_connector._hpc_resume_path is None
    enhance = next(p for p in phases if p.name == "enhance")
    trainer, _, _ = phase_trainer(cfg, enhance, 1, tmp_path, [])
    assert trainer._checkpoint_connector._hpc_resume_path == str(
        tmp_path / "checkpoints" / "enhance" / "hpc_ckpt_1.ckpt"
    )
