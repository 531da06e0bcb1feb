"""Ensembles: one checkpoint of several trained models whose probability maps are averaged,
used by every command as one model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nucleiseg.inference.ensembling import write_ensemble
from nucleiseg.inference.loading import CheckpointError, load_model


def perturbed_copy(checkpoint: Path, target: Path, seed: int = 1) -> Path:
    """Another model of the same kind: every floating weight moved by noise."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(seed)
    for key, value in state["state_dict"].items():
        if value.is_floating_point() and "running_var" not in key:
            state["state_dict"][key] = value + 0.05 * torch.randn(value.shape, generator=generator)
    torch.save(state, target)
    return target


def edited_copy(checkpoint: Path, target: Path, edit) -> Path:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    edit(state["nucleiseg"])
    torch.save(state, target)
    return target


@pytest.fixture(scope="module")
def members(smoke_run, tmp_path_factory) -> list[Path]:
    run_dir, _ = smoke_run
    first = run_dir / "checkpoints" / "finetune" / "best.ckpt"
    folder = tmp_path_factory.mktemp("members")
    return [first, perturbed_copy(first, folder / "second.ckpt")]


@pytest.fixture(scope="module")
def ensemble(members, tmp_path_factory) -> Path:
    return write_ensemble(members, tmp_path_factory.mktemp("ensemble") / "ensemble.ckpt")


def test_an_ensemble_averages_its_members_probabilities(members, ensemble):
    module, output = load_model(ensemble)
    assert output == "two_stage" and len(module.members) == 2 and not module.training
    image = torch.rand(2, 3, 72, 56)
    with torch.no_grad():
        averaged = torch.sigmoid(module(image)["two_stage"])
        alone = [torch.sigmoid(load_model(p)[0](image)["two_stage"]) for p in members]
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # two different models
    assert torch.allclose(averaged, (alone[0] + alone[1]) / 2, atol=1e-5)
    assert module.mpp == load_model(members[0])[0].mpp


def test_members_of_another_pixel_size_or_output_are_refused_naming_both_files(
    smoke_run, members, tmp_path
):
    run_dir, _ = smoke_run
    at_20x = edited_copy(members[1], tmp_path / "at_20x.ckpt",
                         lambda c: c["model"].update(mpp=2 * c["model"]["mpp"]))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"pixel size \(model.mpp\)") as err:
        write_ensemble([members[0], at_20x], tmp_path / "out.ckpt")
    assert str(members[0]) in str(err.value) and str(at_20x) in str(err.value)
    stage1 = run_dir / "checkpoints" / "stage1" / "best.ckpt"
    with pytest.raises(CheckpointError, match="differ in output: .*'two-stage'.*'stage-1'"):
        write_ensemble([members[0], stage1], tmp_path / "out.ckpt")
    with pytest.raises(ValueError, match="listed twice"):
        write_ensemble([members[0], members[0]], tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()


def test_an_ensemble_is_written_over_neither_an_existing_file_nor_a_member(members, tmp_path):
    existing = tmp_path / "ensemble.ckpt"
    existing.write_bytes(b"earlier work")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        write_ensemble(members, existing)
    assert existing.read_bytes() == b"earlier work"
    with pytest.raises(ValueError, match="is one of the members"):
        write_ensemble(members, members[1], overwrite=True)
    assert load_model(write_ensemble(members, existing, overwrite=True))[0].members


def test_an_ensemble_of_ensembles_is_refused(members, ensemble, tmp_path):
    with pytest.raises(CheckpointError, match="itself an ensemble; list its members"):
        write_ensemble([ensemble, members[0]], tmp_path / "nested.ckpt")


def test_a_member_config_that_would_run_code_is_refused(ensemble, tmp_path):
    def crafted(config):
        config["ensemble"]["members"][1]["backbone"]["net"]["_target_"] = "os.system"

    with pytest.raises(CheckpointError, match="refused: ensemble.members\\[1\\].backbone.net"):
        load_model(edited_copy(ensemble, tmp_path / "crafted.ckpt", crafted))


def test_an_ensemble_is_tuned_and_evaluated_as_one_model(ensemble, tmp_path):
    from nucleiseg.evaluate import evaluate
    from nucleiseg.inference.postprocess_tuning import run

    from conftest import TINY_GRID, compose_config

    tuned = tmp_path / "ensemble.tuned.ckpt"
    cfg = compose_config(["experiment=smoke", f"+ckpt={ensemble}", f"+tuned_ckpt={tuned}",
                          *(f"+{g}" for g in TINY_GRID)], tmp_path / "tuning")  # fmt: skip
    chosen = run(cfg)["chosen"]
    module, _ = load_model(tuned)
    assert len(module.members) == 2
    assert module.instance_settings.min_distance == chosen["min_distance"]
    overrides = ["experiment=smoke", f"+ckpt={tuned}", "+whole_dataset=false"]
    scored = evaluate(compose_config(overrides, tmp_path / "eval"))
    assert scored["output"] == "two_stage" and scored["images"] == 4
    assert 0.0 <= scored["test"]["two_stage"]["dice"] <= 1.0
    assert "objects" in scored["test"]["two_stage"]


def test_an_ensemble_exports_to_onnx_matching_pytorch(ensemble, tmp_path):
    from nucleiseg.inference.export import export, exported_model

    from conftest import assert_export_matches

    module, _ = load_model(ensemble)
    model = exported_model(module)
    with torch.no_grad():
        image = torch.rand(1, 3, 64, 64)
        assert torch.allclose(model(image), torch.sigmoid(module(image)["two_stage"]), atol=1e-5)
    path = export(model, tmp_path / "ensemble.onnx", "onnx")
    assert_export_matches(model, path, "onnx", [(1, 3, 64, 64), (2, 3, 150, 97)])


def test_the_ensemble_command_writes_a_checkpoint_predict_reads(members, tmp_path):
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from conftest import ROOT

    out = tmp_path / "three.ckpt"
    listed = ",".join(str(p) for p in [*members, members[0].with_name("last.ckpt")])
    command = [sys.executable, "-m", "nucleiseg.ensemble", f"members=[{listed}]", f"output={out}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ensemble of 3 models" in done.stdout
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 70, 3), dtype=np.uint8)).save(image_dir / "a.png")
    predict = [sys.executable, "-m", "nucleiseg.predict", f"ckpt={out}", f"input={image_dir}",
               f"output={tmp_path / 'pred'}", "tiling.tile=64", "tiling.overlap=16",
               "input_mpp=0.5"]  # fmt: skip
    done = subprocess.run(predict, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    mask = np.asarray(Image.open(tmp_path / "pred" / "a_mask.png"))
    assert mask.shape == (90, 70)
