"""Phases: what each one trains, in which mode, from which weights, with which optimizer."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict

from nucleiseg.lightning.phases import Phase, build_phases
from nucleiseg.training.builders import build_modules
from nucleiseg.training.callbacks.phase_controller import PhaseController
from nucleiseg.training.orchestration import train
from nucleiseg.training.phase_runner import run_phase

from conftest import compose_config, smoke_overrides

NORM_OR_DROPOUT = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight and buffer (BatchNorm running statistics included)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(
    before: dict[str, torch.Tensor], after: torch.nn.Module | dict[str, torch.Tensor]
) -> set[str]:
    """Keys whose floating-point values differ between two snapshots (or a module now)."""
    after = after.state_dict() if isinstance(after, torch.nn.Module) else after
    return {k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])}


def running_stats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if "running_mean" in k or "running_var" in k}


class PhaseRecorder(Callback):
    """At the first training batch of each phase: the train mode of every BatchNorm and
    dropout layer of each part, the stage-1 weights; at the phase's end, stage-1 BatchNorm
    running statistics. Phases build fresh callbacks, so records go to a class-level dict."""

    records: dict[str, dict] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx != 0 or trainer.current_epoch != 0:
            return
        layers = {
            name: [m.training for m in part.modules() if isinstance(m, NORM_OR_DROPOUT)]
            for name, part in pl_module.parts.items()
        }
        self.records[pl_module.phase] = {
            "layers": layers,
            "parts_training": {n: p.training for n, p in pl_module.parts.items()},
            "stage1_start": snapshot(pl_module.stage1),
        }

    def on_train_end(self, trainer, pl_module):
        self.records[pl_module.phase]["stage1_end"] = snapshot(pl_module.stage1)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["unet", "micronet"])
def test_each_phase_trains_its_parts_in_train_mode_and_keeps_frozen_ones_in_eval(
    backbone, tmp_path
):
    PhaseRecorder.records.clear()
    overrides = [f"backbone={backbone}", "+callbacks.record._target_=test_phases.PhaseRecorder"]
    results = train(compose_config(smoke_overrides(*overrides), tmp_path))
    assert results["status"] == "finished"
    rec = PhaseRecorder.records
    assert list(rec) == ["stage1", "enhance", "finetune"]
    stage1_layers = rec["stage1"]["layers"]["stage1"]
    assert len(stage1_layers) > 0  # the backbone has BatchNorm (and Micro-Net dropout)
    assert all(rec["stage1"]["layers"]["stage1"]), "phase 1: stage 1 must be in train mode"
    assert not any(rec["enhance"]["layers"]["stage1"]), "phase 2: frozen stage 1 in eval mode"
    assert rec["enhance"]["parts_training"] == {"stage1": False, "enhancer": True}
    finetune_training = rec["finetune"]["layers"]["stage1"]
    print(f"phase 3: {sum(finetune_training)} of {len(finetune_training)} stage-1 BatchNorm/"
          "dropout layers in train mode at the first batch")  # fmt: skip
    assert all(finetune_training), "phase 3: stage 1 must be fine-tuned in train mode"
    assert rec["finetune"]["parts_training"] == {"stage1": True, "enhancer": True}
    # BatchNorm running statistics: fixed in phase 2, updated in phase 3
    enhance, finetune = rec["enhance"], rec["finetune"]
    assert changed(running_stats(enhance["stage1_start"]), enhance["stage1_end"]) == set()
    stats = running_stats(finetune["stage1_start"])
    assert changed(stats, finetune["stage1_end"]) == set(stats)


class WreckStage1FromEpoch(Callback):
    """From epoch ``epoch`` of phase ``stage1`` on, adds large noise to stage-1 weights before
    validation: the later epochs validate worse, so the best epoch comes before the last."""

    def __init__(self, epoch: int = 2) -> None:
        self.epoch = epoch

    def on_validation_start(self, trainer, pl_module):
        if pl_module.phase == "stage1" and trainer.current_epoch >= self.epoch:
            generator = torch.Generator().manual_seed(trainer.current_epoch)
            with torch.no_grad():
                for p in pl_module.stage1.parameters():
                    p.add_(torch.randn(p.shape, generator=generator) * 0.2)


@pytest.mark.slow
def test_next_phase_starts_from_the_best_not_the_last_epoch(tmp_path):
    PhaseRecorder.records.clear()
    cfg = compose_config(
        smoke_overrides(
            "stage.max_epochs=4",
            "stage.patience=10",
            "~stage.phases.finetune",
            "+callbacks.wreck._target_=test_phases.WreckStage1FromEpoch",
            "+callbacks.record._target_=test_phases.PhaseRecorder",
        ),  # fmt: skip
        tmp_path,
    )
    results = train(cfg)
    first = results["phases"][0]
    assert first["epochs"] == 4 and first["stop_reason"] == "max_epochs"
    assert first["best_epoch"] < first["epochs"] - 1  # the best precedes the last
    assert first["wall_seconds"] > 0  # measured per phase

    def stage1_weights(path):
        state = torch.load(path, weights_only=True)["state_dict"]
        return {k[len("stage1.") :]: v for k, v in state.items() if k.startswith("stage1.")}

    best = stage1_weights(tmp_path / first["best_checkpoint"])
    last = stage1_weights(tmp_path / "checkpoints" / "stage1" / "last.ckpt")
    started = PhaseRecorder.records["enhance"]["stage1_start"]
    assert best.keys() == started.keys()
    assert all(torch.equal(best[k], started[k]) for k in best)
    assert not all(torch.equal(last[k], started[k]) for k in last)


@pytest.fixture
def setup(tmp_path):
    cfg = compose_config(smoke_overrides(), tmp_path)
    modules = build_modules(cfg)
    datamodule = instantiate(cfg.dataset.datamodule)
    return cfg, modules, datamodule, build_phases(cfg)


def test_phase2_leaves_stage1_weights_and_batchnorm_buffers_untouched(setup, tmp_path):
    cfg, modules, dm, phases = setup
    two_stage = modules["two_stage"]
    stage1_before, enhancer_before = snapshot(two_stage.stage1), snapshot(two_stage.enhancer)
    assert any("running_mean" in k for k in stage1_before)  # the small U-Net has BatchNorm
    run_phase(cfg, phases[1], 1, two_stage, dm, tmp_path, test=False)
    assert changed(stage1_before, two_stage.stage1) == set()
    assert changed(enhancer_before, two_stage.enhancer) == set(enhancer_before)


def test_phase3_after_phase2_trains_stage1_weights_and_batchnorm_statistics(setup, tmp_path):
    cfg, modules, dm, phases = setup
    two_stage = modules["two_stage"]
    run_phase(cfg, phases[1], 1, two_stage, dm, tmp_path / "p2", test=False)
    stage1_before, enhancer_before = snapshot(two_stage.stage1), snapshot(two_stage.enhancer)
    run_phase(cfg, phases[2], 2, two_stage, dm, tmp_path / "p3", test=False)
    assert any("weight" in k for k in changed(stage1_before, two_stage.stage1))
    assert any("running_mean" in k for k in changed(stage1_before, two_stage.stage1))
    assert changed(enhancer_before, two_stage.enhancer) == set(enhancer_before)


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


def test_frozen_stage1_stays_in_eval_mode_across_validation(setup, tmp_path):
    cfg, modules, dm, phases = setup
    recorder = ModeRecorder()
    run_phase(cfg, phases[1], 1, modules["two_stage"], dm, tmp_path, extra_callbacks=[recorder],
              test=False)  # fmt: skip
    assert len(recorder.stage1_training) == 4  # two epochs, validation between them
    assert not any(recorder.stage1_training)


def test_train_mode_keeps_frozen_parts_in_eval(setup):
    _, modules, _, phases = setup
    two_stage = modules["two_stage"]
    two_stage.configure_phase(phases[1])
    two_stage.eval()
    two_stage.train()  # what Lightning does around validation
    assert not two_stage.stage1.training and two_stage.enhancer.training
    assert not any(p.requires_grad for p in two_stage.stage1.parameters())
    two_stage.configure_phase(phases[2])
    assert two_stage.stage1.training and all(p.requires_grad for p in two_stage.parameters())


def test_each_phase_gets_a_fresh_optimizer_over_its_trainable_weights(setup, tmp_path):
    cfg, modules, dm, phases = setup
    recorder = ModeRecorder()
    for index, phase in enumerate(phases):
        run_phase(cfg, phase, index, modules[phase.module], dm, tmp_path / phase.name,
                  extra_callbacks=[recorder], test=False)  # fmt: skip
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
        modules[phase.module].configure_phase(phase)
        rates.append(modules[phase.module].configure_optimizers().defaults["lr"])
    assert [p.name for p in phases] == ["stage1", "enhance", "finetune"]
    assert rates == [0.002, 0.002, 0.0002]
    extended = build_phases(compose_config(smoke_overrides("stage=base_extended")))
    assert [p.lr for p in extended] == [None, None]  # null: model.optimizer's


def test_checkpoints_record_their_phase_and_refuse_another(setup, tmp_path):
    cfg, modules, dm, phases = setup
    run_phase(cfg, phases[1], 1, modules["two_stage"], dm, tmp_path, test=False)
    ckpt = torch.load(tmp_path / "checkpoints" / "enhance" / "last.ckpt", weights_only=True)
    state = ckpt["callbacks"]["PhaseController"]
    assert state["phase"]["name"] == "enhance" and state["index"] == 1
    assert "augmentation" in ckpt["NucleiDataModule"]  # the datamodule owns its random state
    with pytest.raises(ValueError, match="written in phase 'enhance'"):
        PhaseController(phases[2], 2).load_state_dict(state)


def test_phase_rejects_unknown_parts():
    with pytest.raises(ValueError, match="unknown trainable part"):
        Phase(name="x", module="two_stage", trainable=["decoder"])


def test_a_phase_with_an_unknown_key_names_it(tmp_path):
    cfg = compose_config(smoke_overrides())
    with open_dict(cfg):
        cfg.stage.phases.enhance.patiance = 3
    with pytest.raises(ValueError, match=r"stage\.phases\.enhance.*patiance"):
        build_phases(cfg)


def test_a_learning_rate_schedule_follows_each_phase_validation_loss(tmp_path):
    plateau = [
        "+model.scheduler._target_=torch.optim.lr_scheduler.ReduceLROnPlateau",
        "+model.scheduler._partial_=true", "+model.scheduler.factor=0.5",
        "+model.scheduler.patience=0", "+model.scheduler.threshold=10",
        "+model.scheduler.threshold_mode=abs",  # no epoch counts as better: halve each epoch
        "stage.max_epochs=3", "stage.patience=5",
    ]  # fmt: skip
    cfg = compose_config(smoke_overrides(*plateau), tmp_path)
    modules, phases = build_modules(cfg), build_phases(cfg)
    modules["stage1"].configure_phase(phases[0])
    configured = modules["stage1"].configure_optimizers()
    assert configured["lr_scheduler"]["monitor"] == "stage1/val/loss"
    dm = instantiate(cfg.dataset.datamodule)
    rates = []

    class LearningRate(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    run_phase(cfg, phases[0], 0, modules["stage1"], dm, tmp_path, extra_callbacks=[LearningRate()],
              test=False)  # fmt: skip
    assert rates[0] == pytest.approx(1e-4) and rates[-1] < rates[0]  # halved on a plateau


@pytest.mark.slow
@pytest.mark.parametrize("callbacks", ["default", "ema"])  # ema: an average must not replace it
def test_a_phase_no_epoch_of_which_beats_its_start_ends_with_its_starting_weights(
    tmp_path, monkeypatch, callbacks
):
    # an improvement must exceed min_delta: with 100, no epoch of any phase is one
    profiler = (
        "+trainer.profiler={_target_:lightning.pytorch.profilers.SimpleProfiler,filename:fit}"
    )
    overrides = [f"callbacks={callbacks}", "callbacks.early_stopping.min_delta=100", profiler]
    cfg = compose_config(smoke_overrides(*overrides), tmp_path / "run")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    results = train(cfg)
    assert results["status"] == "finished"
    assert not list(elsewhere.iterdir())  # validating the start writes nothing outside the run
    tmp_path = tmp_path / "run"
    for record in results["phases"]:
        assert record["kept_start"] and record["best_epoch"] is None
        assert record["best_val_loss"] == record["start_val_loss"]
        # patience (1) counts from the start: no epoch beat it, so one epoch, not two
        assert record["epochs"] == 1 and record["stop_reason"] == "early_stopping"

    def weights(phase):
        return torch.load(tmp_path / "checkpoints" / phase / "best.ckpt", weights_only=True)[
            "state_dict"
        ]

    enhanced, finetuned = weights("enhance"), weights("finetune")
    assert enhanced.keys() == finetuned.keys()
    assert all(torch.equal(enhanced[k], finetuned[k]) for k in enhanced)  # phase 3 undone
    last = torch.load(tmp_path / "checkpoints" / "finetune" / "last.ckpt", weights_only=True)
    assert not all(torch.equal(last["state_dict"][k], finetuned[k]) for k in finetuned)


def test_a_phase_that_improves_on_its_start_ends_with_its_best_epoch(smoke_run):
    _, results = smoke_run
    first = results["phases"][0]  # from random weights: any trained epoch beats them
    assert not first["kept_start"]
    assert first["best_val_loss"] < first["start_val_loss"]
    assert first["best_epoch"] is not None
