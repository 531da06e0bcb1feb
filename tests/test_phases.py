"""Phase control: freezing, eval mode, fresh optimizers, early stopping, best-weight hand-over."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from nucleiseg.callbacks.phase_controller import Phase, PhaseController, apply_phase
from nucleiseg.training import build_modules, build_phases, phase_trainer, train

from conftest import compose_config, smoke_overrides


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight and buffer (BatchNorm running statistics included)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    after = module.state_dict()
    return {k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])}


@pytest.fixture
def setup(tmp_path):
    cfg = compose_config(smoke_overrides(), tmp_path)
    modules = build_modules(cfg)
    datamodule = instantiate(cfg.dataset.datamodule)
    return cfg, modules, datamodule, build_phases(cfg)


def fit_phase(cfg, module, datamodule, phase, index, run_dir, extra=()):
    trainer, checkpoint, early_stopping = phase_trainer(cfg, phase, index, run_dir, [])
    trainer.callbacks.extend(extra)
    apply_phase(module, phase)
    trainer.fit(module, datamodule=datamodule)
    return trainer


class ModeRecorder(Callback):
    """Records whether stage 1 is in training mode at every training batch."""

    def __init__(self):
        self.stage1_training: list[bool] = []
        self.optimized: list[set[int]] = []
        self.optimizer_state_sizes: list[int] = []

    def on_train_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        self.optimized.append({id(p) for g in optimizer.param_groups for p in g["params"]})
        self.optimizer_state_sizes.append(len(optimizer.state))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.stage1_training.append(pl_module.stage1.training)


def test_phase2_leaves_stage1_weights_and_batchnorm_buffers_untouched(setup, tmp_path):
    cfg, modules, dm, phases = setup
    two_stage = modules["two_stage"]
    stage1_before, enhancer_before = snapshot(two_stage.stage1), snapshot(two_stage.enhancer)
    assert any("running_mean" in k for k in stage1_before)  # the small U-Net has BatchNorm
    fit_phase(cfg, two_stage, dm, phases[1], 1, tmp_path)
    assert changed(stage1_before, two_stage.stage1) == set()
    assert changed(enhancer_before, two_stage.enhancer) == set(enhancer_before)


def test_phase3_trains_stage1_and_enhancer(setup, tmp_path):
    cfg, modules, dm, phases = setup
    two_stage = modules["two_stage"]
    stage1_before, enhancer_before = snapshot(two_stage.stage1), snapshot(two_stage.enhancer)
    fit_phase(cfg, two_stage, dm, phases[2], 2, tmp_path)
    assert any("weight" in k for k in changed(stage1_before, two_stage.stage1))
    assert any("running_mean" in k for k in changed(stage1_before, two_stage.stage1))
    assert changed(enhancer_before, two_stage.enhancer) == set(enhancer_before)


def test_frozen_stage1_stays_in_eval_mode_across_validation(setup, tmp_path):
    cfg, modules, dm, phases = setup
    recorder = ModeRecorder()
    fit_phase(cfg, modules["two_stage"], dm, phases[1], 1, tmp_path, [recorder])
    assert len(recorder.stage1_training) == 4  # two epochs, validation between them
    assert not any(recorder.stage1_training)


def test_each_phase_gets_a_fresh_optimizer_over_its_trainable_weights(setup, tmp_path):
    cfg, modules, dm, phases = setup
    recorder = ModeRecorder()
    for index, phase in enumerate(phases):
        fit_phase(cfg, modules[phase.module], dm, phase, index, tmp_path / phase.name, [recorder])
    stage1_ids = {id(p) for p in modules["two_stage"].stage1.parameters()}
    enhancer_ids = {id(p) for p in modules["two_stage"].enhancer.parameters()}
    assert recorder.optimized == [stage1_ids, enhancer_ids, stage1_ids | enhancer_ids]
    assert recorder.optimizer_state_sizes == [0, 0, 0]
    optimizer = instantiate(cfg.model.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 1e-4


def test_finetune_lr_sets_the_learning_rate_of_the_continuing_phases_only(tmp_path):
    cfg = compose_config(smoke_overrides("model.optimizer.lr=0.002", "stage.finetune_lr=0.0002"))
    modules, phases = build_modules(cfg), build_phases(cfg)
    rates = []
    for phase in phases:
        apply_phase(modules[phase.module], phase)
        rates.append(modules[phase.module].configure_optimizers().defaults["lr"])
    assert [p.name for p in phases] == ["stage1", "enhance", "finetune"]
    assert rates == [0.002, 0.002, 0.0002]
    extended = build_phases(compose_config(smoke_overrides("stage=base_extended")))
    assert [p.lr for p in extended] == [None, None]  # null: model.optimizer's


def test_checkpoints_record_their_phase_and_refuse_another(setup, tmp_path):
    cfg, modules, dm, phases = setup
    fit_phase(cfg, modules["two_stage"], dm, phases[1], 1, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "enhance" / "last.ckpt", weights_only=False)
    state = ckpt["callbacks"]["PhaseController"]
    assert state["phase"]["name"] == "enhance" and state["index"] == 1
    with pytest.raises(ValueError, match="written in phase 'enhance'"):
        PhaseController(phases[2], 2).load_state_dict(state)


def test_phase_rejects_unknown_parts():
    with pytest.raises(ValueError, match="unknown trainable part"):
        Phase(name="x", module="two_stage", trainable=["decoder"])


class ShiftStage1AtTrainEnd(Callback):
    """Moves stage-1 weights after a fit's last checkpoint: only a restore can undo it."""

    def on_train_end(self, trainer, pl_module):
        with torch.no_grad():
            for p in pl_module.stage1.parameters():
                p.add_(1.0)


def test_phase_ends_by_early_stopping_and_next_starts_from_its_best_weights(tmp_path):
    # a min_delta of 10 means no epoch improves enough, so early stopping ends phase 1
    cfg = compose_config(
        smoke_overrides(
            "stage.max_epochs=6",
            "stage.patience=2",
            "callbacks.early_stopping.min_delta=10",
            "+callbacks.shift._target_=test_phases.ShiftStage1AtTrainEnd",
        ),
        tmp_path,
    )
    cfg.stage.phases = cfg.stage.phases[:2]
    results = train(cfg)
    first = results["phases"][0]
    assert first["stop_reason"] == "early_stopping" and first["epochs"] == 3

    def stage1_weights(path):
        state = torch.load(path, weights_only=True)["state_dict"]
        return {k: v for k, v in state.items() if k.startswith("stage1.")}

    best = stage1_weights(tmp_path / "checkpoints" / "stage1" / "best.ckpt")
    handed_over = stage1_weights(tmp_path / "checkpoints" / "enhance" / "last.ckpt")
    assert best.keys() == handed_over.keys()
    assert all(torch.equal(best[k], handed_over[k]) for k in best)
