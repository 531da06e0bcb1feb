"""Checkpoints from elsewhere: nothing they store is built unless it is one of ours, and odd
files get one clear line naming the file."""

from __future__ import annotations

import pytest
import torch

from nucleiseg.inference.loading import load_model
from nucleiseg.training.builders import build_modules
from nucleiseg.training.checkpoints import CheckpointError, load_weights, read_checkpoint

from conftest import compose_config, smoke_overrides


def crafted(tmp_path, net: dict) -> str:
    """A checkpoint whose stored config builds ``net`` as stage 1."""
    path = tmp_path / "shared.ckpt"
    config = {"backbone": {"net": net, "aux_weight": 0.0}, "model": {}, "postprocess": {}}
    torch.save({"state_dict": {}, "nucleiseg": config}, path)
    return str(path)


def test_a_checkpoint_that_would_write_a_file_is_refused_and_nothing_is_written(tmp_path):
    victim = tmp_path / "written_by_the_checkpoint.txt"
    net = {"_target_": "pathlib.Path.write_text", "_args_": [str(victim), "owned"]}
    with pytest.raises(CheckpointError, match=r"backbone\.net\._target_ is 'pathlib\.Path"):
        load_model(crafted(tmp_path, net))
    assert not victim.exists()


@pytest.mark.parametrize(
    "net",
    [
        {"_target_": "torch.load", "_args_": ["x.pt"], "weights_only": False},
        {"_target_": "nucleiseg.models.MicroNet", "inner": {"_target_": "os.system",
                                                           "_args_": ["true"]}},
        {"_target_": "torch.optim.Optimizer.__init__"},
        {"_args_": ["rm -rf /"]},
    ],
    ids=["torch.load", "nested", "not-a-class", "args-without-target"],
)  # fmt: skip
def test_only_our_networks_and_torch_optimisers_may_be_built(tmp_path, net):
    with pytest.raises(CheckpointError, match="refused"):
        load_model(crafted(tmp_path, net))


def test_a_stored_encoder_download_is_switched_off(tmp_path):
    cfg = compose_config(smoke_overrides("backbone=smp_unet"))
    module = build_modules(cfg)["stage1"]
    state = {"state_dict": module.state_dict(), "nucleiseg": dict(module.model_config)}
    state["nucleiseg"]["backbone"]["net"]["encoder_weights"] = "imagenet"  # would download
    path = tmp_path / "stage1.ckpt"
    torch.save(state, path)
    from nucleiseg.training.checkpoints import stored_model_config

    # what load_model builds from: no download asked for, with or without a network
    built_from = stored_model_config(torch.load(path, weights_only=True), path)
    assert built_from["backbone"]["net"]["encoder_weights"] is None
    loaded, output = load_model(path)
    assert output == "stage1"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), "cannot read checkpoint"),
        (lambda p: p.write_text("101"), "cannot read checkpoint"),
        (lambda p: torch.save(torch.zeros(3), p), "holds no state_dict"),
        (lambda p: torch.save({"state_dict": {}}, p), "no stored model config"),
    ],
    ids=["directory", "empty", "text", "bare-tensor", "no-config"],
)
def test_odd_files_get_one_clear_line_naming_the_file(tmp_path, make, message):
    path = tmp_path / "model.ckpt"
    make(path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "make", [lambda p: p.write_bytes(b""), lambda p: torch.save(torch.zeros(3), p)],
    ids=["empty", "bare-tensor"],
)  # fmt: skip
def test_init_from_reads_through_the_same_reader(tmp_path, make):
    path = tmp_path / "init.ckpt"
    make(path)
    module = build_modules(compose_config(smoke_overrides()))["two_stage"]
    with pytest.raises(CheckpointError, match=str(path)):
        load_weights(module, path)
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "missing.ckpt")


def with_stored(tmp_path, edit) -> tuple[str, dict]:
    """A real checkpoint (stage 1 + enhancer of the smoke config) whose stored config ``edit``
    changed in place."""
    import json

    from conftest import ROOT

    stored = json.loads((ROOT / "tests/fixtures/pre_layout_checkpoint_config.json").read_text())
    weights = build_modules(compose_config(smoke_overrides()))["two_stage"].state_dict()
    edit(stored)
    path = tmp_path / "shared.ckpt"
    torch.save({"state_dict": weights, "nucleiseg": stored}, path)
    return str(path), stored


def writes(victim) -> str:
    """An interpolation that, once resolved, builds a call writing ``victim``."""
    path = f'{{_target_: pathlib.Path, _args_: ["{victim}"]}}'
    inner = f"{{_target_: pathlib.Path.write_text, _args_: [{path}, pwned]}}"
    return "${oc.create:'" + inner + "'}"


INTERPOLATIONS = {
    "oc.create": (lambda s, v: s["backbone"].__setitem__("net", writes(v)), "backbone.net"),
    "oc.decode": (
        lambda s, v: s["backbone"]["net"].__setitem__("base_channels", "${oc.decode:'4'}"),
        "backbone.net.base_channels",
    ),
    "oc.env": (
        lambda s, v: s["model"]["optimizer"].__setitem__("lr", "${oc.env:HOME}"),
        "model.optimizer.lr",
    ),
    "inside a list": (
        lambda s, v: s["model"]["enhancer"].__setitem__("extra", [1, {"a": writes(v)}]),
        r"model.enhancer.extra\[1\].a",
    ),
    "our own resolver": (
        lambda s, v: s["backbone"]["net"].__setitem__("base_channels", "${mul:2,2}"),
        "backbone.net.base_channels",
    ),
}


@pytest.mark.parametrize("kind", sorted(INTERPOLATIONS))
def test_an_interpolation_in_a_stored_config_is_refused_naming_the_key(tmp_path, kind):
    edit, key = INTERPOLATIONS[kind]
    victim = tmp_path / "written_by_the_checkpoint.txt"
    path, _ = with_stored(tmp_path, lambda s: edit(s, victim))
    with pytest.raises(CheckpointError, match=rf"refused: {key} holds an interpolation") as err:
        load_model(path)
    assert "\n" not in str(err.value)
    assert not victim.exists()


def test_the_predict_command_refuses_the_crafted_checkpoint_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    victim = tmp_path / "written_by_the_checkpoint.txt"
    path, _ = with_stored(tmp_path, lambda s: s["backbone"].__setitem__("net", writes(victim)))
    (tmp_path / "in").mkdir()
    command = [sys.executable, "-m", "nucleiseg.predict", f"ckpt={path}",
               f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "backbone.net holds an interpolation" in done.stderr
    assert not victim.exists()
    written = {p.name for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert written <= {"predict.log"}  # Hydra's log of the refusal, no output
