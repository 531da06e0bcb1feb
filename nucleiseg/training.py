"""The three-phase training run behind ``python -m nucleiseg.train``.

``train(cfg)`` composes everything from the Hydra config with ``hydra.utils.instantiate``,
then runs one ``Trainer.fit`` per phase (see ``nucleiseg.callbacks.phase_controller``),
restores each phase's best weights before the next, tests after every phase and writes
``results.json`` into the run directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from nucleiseg.callbacks.checkpoint_io import AtomicCheckpointIO
from nucleiseg.callbacks.phase_controller import Phase, PhaseController, apply_phase
from nucleiseg.lightning.base import SegmentationModule
from nucleiseg.run_outputs import close_loggers, publish_run_outputs
from nucleiseg.viz.snapshots import FigureSnapshots

log = logging.getLogger(__name__)
PHASE_CALLBACKS = ("model_checkpoint", "early_stopping")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def load_weights(module: SegmentationModule, checkpoint: str | Path) -> None:
    """Load a checkpoint's weights into ``module``; parts absent from it keep their weights."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint '{path}' does not exist; point stage.init_from at a .ckpt written by "
            "an earlier run (its checkpoints/<phase>/best.ckpt)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k: v for k, v in state.items() if not k.startswith("metrics.")}
    result = module.load_state_dict(weights, strict=False)
    loaded_parts = {k.split(".", 1)[0] for k in weights}
    missing = [k for k in result.missing_keys if k.split(".", 1)[0] in loaded_parts]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"checkpoint '{path}' does not fit this model (missing {missing[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}); was it trained with the same backbone settings?"
        )


def build_modules(cfg: DictConfig) -> dict[str, SegmentationModule]:
    """Stage 1 and the two-stage module, sharing one stage-1 network."""
    stage1 = instantiate(cfg.backbone.net)
    enhancer = instantiate(cfg.model.enhancer)
    optimizer = instantiate(cfg.model.optimizer)
    modules = {
        "stage1": instantiate(cfg.model.stage1_module, stage1=stage1, optimizer=optimizer),
        "two_stage": instantiate(
            cfg.model.two_stage_module, stage1=stage1, enhancer=enhancer, optimizer=optimizer
        ),
    }
    model_config = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, ["backbone", "model", "postprocess"]), resolve=True
    )
    for module in modules.values():
        module.model_config = model_config
    if cfg.get("channels_last"):
        for module in modules.values():
            module.to(memory_format=torch.channels_last)
    if cfg.get("compile"):
        stage1.compile()  # in place: the state-dict keys, so checkpoints, stay the same
        enhancer.compile()
    return modules


def build_phases(cfg: DictConfig) -> list[Phase]:
    phases = [Phase(**OmegaConf.to_container(p, resolve=True)) for p in cfg.stage.phases]
    if not phases:
        raise ValueError(f"stage '{cfg.stage.name}' lists no phases under stage.phases")
    return phases


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def phase_trainer(
    cfg: DictConfig, phase: Phase, index: int, run_dir: Path, loggers: list[Any]
) -> tuple[L.Trainer, ModelCheckpoint, EarlyStopping]:
    """A fresh Trainer with fresh checkpoint/early-stopping callbacks for one phase."""
    monitor = f"{phase.name}/val/loss"
    checkpoint = instantiate(
        cfg.callbacks.model_checkpoint,
        dirpath=str(run_dir / "checkpoints" / phase.name),
        monitor=monitor,
    )
    early_stopping = instantiate(
        cfg.callbacks.early_stopping, monitor=monitor, patience=phase.patience
    )
    extra = [instantiate(c) for k, c in cfg.callbacks.items() if k not in PHASE_CALLBACKS and c]
    trainer = instantiate(
        cfg.trainer,
        callbacks=[PhaseController(phase, index, checkpoint.dirpath), checkpoint, early_stopping]
        + extra,
        plugins=[AtomicCheckpointIO()],
        logger=loggers or False,
        max_epochs=phase.max_epochs,
        min_epochs=phase.min_epochs,
        default_root_dir=str(run_dir),
    )
    return trainer, checkpoint, early_stopping


def stop_reason(trainer: L.Trainer, early_stopping: EarlyStopping, phase: Phase) -> str:
    if trainer.interrupted:
        return "interrupted"
    if early_stopping.stopped_epoch > 0:
        return "early_stopping"
    return "max_epochs" if trainer.current_epoch >= phase.max_epochs else "stopped"


class RunExistsError(RuntimeError):
    """The run dir already holds a run that must not be overwritten."""


RUN_OUTPUTS = ("results.json", "config.yaml", "split.csv", "checkpoints", "csv", "figures", "wandb")


PREVIOUS_RUN_ENV = "NUCLEISEG_PREVIOUS_RUN"


def previous_run(
    run_dir: Path, cfg: DictConfig, phases: list[Phase], may_delete: bool = True
) -> dict[str, Any] | None:
    """The unfinished run to resume in ``run_dir``, or None to start afresh.

    A finished run is never touched without ``overwrite=true``; an unfinished one is
    continued (``resume=auto``) from its last checkpoint, in the phase it was in.
    """
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    if cfg.get("overwrite", False):
        if not may_delete:
            return None
        log.warning("overwrite=true: removing the earlier run in %s", run_dir)
        for name in RUN_OUTPUTS:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        return None
    previous = json.loads(path.read_text())
    if previous.get("status") == "finished":
        raise RunExistsError(
            f"'{run_dir}' holds a finished run; choose another run dir, or pass "
            "overwrite=true to replace it"
        )
    if cfg.get("resume", "auto") != "auto":
        raise RunExistsError(
            f"'{run_dir}' holds an unfinished run; resume=auto continues it, overwrite=true "
            "starts it again"
        )
    done = [p["name"] for p in previous.get("phases", [])]
    if done != [p.name for p in phases[: len(done)]]:
        raise RunExistsError(
            f"'{run_dir}' was trained with phases {done}, which do not start the phases "
            f"{[p.name for p in phases]} of this config; use another run dir"
        )
    log.info("resuming the run in %s after %d finished phase(s)", run_dir, len(done))
    return previous


def forward_sigusr1_as_sigterm() -> None:
    """Outside SLURM (whose requeue Lightning handles), treat SIGUSR1 like SIGTERM."""
    if os.environ.get("SLURM_JOB_ID") or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGUSR1, lambda *_: os.kill(os.getpid(), signal.SIGTERM))


def stop_other_ranks(trainer: L.Trainer | None) -> None:
    """After a failure, end the DDP rank processes this process started, so none is left
    waiting for a collective that will never come."""
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    if launcher is not None and getattr(launcher, "procs", None):
        launcher.kill(signal.SIGKILL)


def phase_record(
    phase: Phase, trainer: L.Trainer, checkpoint: ModelCheckpoint, stop: str, test: dict
) -> dict[str, Any]:
    best = checkpoint.best_model_score
    return {
        "name": phase.name,
        "trainable": phase.trainable,
        "output": phase.output,
        "epochs": trainer.current_epoch,
        "best_val_loss": float(best) if best is not None else None,
        "stop_reason": stop,
        "best_checkpoint": checkpoint.best_model_path or None,
        "test": test,
    }


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run every phase of ``cfg.stage`` and return (and write) the run's results."""
    run_dir = Path(cfg.paths.output_dir)
    phases = build_phases(cfg)
    rank0 = rank_zero_only.rank == 0  # DDP ranks > 0 rerun this function: they only follow
    if rank0 or PREVIOUS_RUN_ENV not in os.environ:
        previous = previous_run(run_dir, cfg, phases, may_delete=rank0)  # before any write
        os.environ[PREVIOUS_RUN_ENV] = json.dumps(previous)  # inherited by DDP ranks
    else:
        previous = json.loads(os.environ[PREVIOUS_RUN_ENV])
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    config_path = run_dir / "config.yaml"
    if rank0:
        OmegaConf.save(cfg, config_path, resolve=True)
    forward_sigusr1_as_sigterm()

    datamodule = instantiate(cfg.dataset.datamodule)
    modules = build_modules(cfg)
    if OmegaConf.is_missing(cfg.stage, "init_from"):
        raise ValueError(
            f"stage '{cfg.stage.name}' starts from trained weights: set "
            "stage.init_from=<run dir>/checkpoints/<phase>/best.ckpt"
        )
    if cfg.stage.init_from:
        load_weights(modules["two_stage"], cfg.stage.init_from)
    # Stage 1 is built first, so its initial weights depend on the seed alone; reseeding here
    # makes data order and augmentation independent of the enhancer's size too. Stages that
    # share phase 1 (two_stage, base_extended, enhance_no_image) then train the same stage 1
    # for a given seed, and the controls are paired with the two-stage run.
    L.seed_everything(cfg.seed, workers=True)
    loggers = build_loggers(cfg)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    snapshots = FigureSnapshots(cfg.get("figures", {}).get("test_images", 0))

    results: dict[str, Any] = {
        "dataset": cfg.dataset.name,
        "split_by": cfg.dataset.get("split_by", "image"),
        "backbone": cfg.backbone.name,
        "stage": cfg.stage.name,
        "seed": cfg.seed,
        "config": str(config_path.resolve()),
        "status": "running",
        "phases": [],
        "test": {},
    }
    is_writer = rank0  # rank 0 (or the only process) writes files
    if is_writer and previous is None:
        write_json_atomic(run_dir / "results.json", results)
    epochs_so_far = 0
    trainer: L.Trainer | None = None
    try:
        for index, phase in enumerate(phases):
            module = modules[phase.module]
            apply_phase(module, phase)  # in the main process too: ddp_spawn loses callbacks'
            module.epoch_offset, module.phase_index = epochs_so_far, index
            if previous is not None and index < len(previous["phases"]):
                record = previous["phases"][index]  # finished before: reuse, don't retrain
                if record["best_checkpoint"]:
                    load_weights(module, record["best_checkpoint"])
                if phase.test_as in ("stage1", "two_stage"):
                    snapshots.record(module, datamodule, phase.test_as, phase.output)
                results["phases"].append(record)
                if phase.test_as:
                    results["test"][phase.test_as] = record["test"][phase.output]
                epochs_so_far += record["epochs"]
                continue
            log.info(
                "phase %d/%d '%s': training %s (max %d epochs, patience %d)",
                index + 1, len(phases), phase.name, "+".join(phase.trainable),
                phase.max_epochs, phase.patience,
            )  # fmt: skip
            trainer, checkpoint, early_stopping = phase_trainer(cfg, phase, index, run_dir, loggers)
            is_writer = trainer.is_global_zero
            last = run_dir / "checkpoints" / phase.name / "last.ckpt"
            resume_from = str(last) if previous is not None and last.is_file() else None
            if resume_from:
                log.info("phase '%s' continues from %s", phase.name, resume_from)
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
            stop = stop_reason(trainer, early_stopping, phase)
            if checkpoint.best_model_path:
                load_weights(module, checkpoint.best_model_path)
            trainer.test(module, datamodule=datamodule, verbose=False)
            test_metrics = module.last_metrics["test"]
            if phase.test_as in ("stage1", "two_stage"):
                snapshots.record(module, datamodule, phase.test_as, phase.output)
            epochs_so_far += trainer.current_epoch
            results["phases"].append(phase_record(phase, trainer, checkpoint, stop, test_metrics))
            if phase.test_as:
                results["test"][phase.test_as] = test_metrics[phase.output]
            if is_writer:
                write_json_atomic(run_dir / "results.json", results)
    except BaseException as err:
        stop_other_ranks(trainer)
        interrupted = isinstance(err, KeyboardInterrupt | SystemExit)
        results["status"] = "interrupted" if interrupted else "failed"
        results["error"] = f"{type(err).__name__}: {err}"
        if is_writer:
            write_json_atomic(run_dir / "results.json", results)
        close_loggers(loggers)
        raise

    results["status"] = "finished"
    if is_writer:
        write_json_atomic(run_dir / "results.json", results)
        publish_run_outputs(run_dir, results, snapshots, loggers)
        log.info("results written to %s", run_dir / "results.json")
    close_loggers(loggers)
    return results
