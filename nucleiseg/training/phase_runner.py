"""One training phase: a fresh Trainer, one ``fit``, the best weights restored, a test, and
the phase's record for ``results.json`` returned.

The best weights are the best the phase has seen on validation, its starting weights
included: the weights it starts from are validated first, and a phase none of whose epochs
beats them by early stopping's ``min_delta`` (a fine-tuning that only made the model worse)
ends with them, saved as its ``best.ckpt`` (``kept_start`` in its record). Early stopping
counts its patience from them too, so such a phase stops after ``patience`` epochs.

A phase finished in an earlier attempt (``resume=auto``) goes through the same function: its
record is reused and its best weights loaded instead of training it again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    Timer,
    WeightAveraging,
)
from omegaconf import DictConfig

from nucleiseg.lightning.base import SegmentationModule
from nucleiseg.lightning.phases import Phase
from nucleiseg.training.callbacks.checkpoint_io import AtomicCheckpointIO
from nucleiseg.training.callbacks.phase_controller import PhaseController
from nucleiseg.training.callbacks.preemption import PreemptionCheckpoint
from nucleiseg.training.callbacks.random_state import RandomStateCheckpoint
from nucleiseg.training.checkpoints import load_weights
from nucleiseg.training.process_control import stop_other_ranks

log = logging.getLogger(__name__)
PHASE_CALLBACKS = ("model_checkpoint", "last_checkpoint", "early_stopping")


def phase_trainer(
    cfg: DictConfig,
    phase: Phase,
    index: int,
    run_dir: Path,
    loggers: list[Any],
    epoch_offset: int = 0,
    extra_callbacks: list[Callback] | tuple[Callback, ...] = (),
) -> tuple[L.Trainer, ModelCheckpoint, EarlyStopping]:
    """A fresh Trainer with fresh checkpoint/early-stopping callbacks for one phase."""
    monitor = f"{phase.name}/val/loss"
    checkpoint_dir = run_dir / "checkpoints" / phase.name
    checkpoint = instantiate(
        cfg.callbacks.model_checkpoint, dirpath=str(checkpoint_dir), monitor=monitor
    )
    last = instantiate(cfg.callbacks.last_checkpoint, dirpath=str(checkpoint_dir))
    early_stopping = instantiate(
        cfg.callbacks.early_stopping, monitor=monitor, patience=phase.patience
    )
    configured = [
        instantiate(c) for k, c in cfg.callbacks.items() if k not in PHASE_CALLBACKS and c
    ]
    callbacks = [
        PhaseController(phase, index, epoch_offset),
        RandomStateCheckpoint(),
        PreemptionCheckpoint(checkpoint_dir),
        Timer(verbose=False),  # training time, carried in last.ckpt across a resume
        early_stopping,
        checkpoint,
        last,
        *configured,
        *extra_callbacks,
    ]
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=loggers or False,
        max_epochs=phase.max_epochs,
        min_epochs=phase.min_epochs,
        # the phase's own folder: Lightning's SLURM requeue writes hpc_ckpt_<n>.ckpt there
        # and resumes from the newest one it finds there, so no phase can load another's
        default_root_dir=str(checkpoint_dir),
    )
    return trainer, checkpoint, early_stopping


def fit_seconds(trainer: L.Trainer) -> float:
    """Seconds ``fit`` trained this phase, earlier attempts included (``phase_trainer``'s Timer)."""
    timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
    return float(timer.time_elapsed("train"))


def stop_reason(trainer: L.Trainer, early_stopping: EarlyStopping, phase: Phase) -> str:
    if trainer.interrupted:
        return "interrupted"
    # stopped_epoch stays 0 when early stopping ends a phase in its first epoch (patience 1,
    # no epoch beat the start): then the spent patience says it
    spent = trainer.should_stop and early_stopping.wait_count >= early_stopping.patience
    if early_stopping.stopped_epoch > 0 or spent:
        return "early_stopping"
    return "max_epochs" if trainer.current_epoch >= phase.max_epochs else "stopped"


def _relative(path: str, run_dir: Path) -> str | None:
    """A checkpoint path relative to the run dir, so a moved run dir still resumes."""
    if not path:
        return None
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return path


def start_val_loss(
    cfg: DictConfig,
    phase: Phase,
    index: int,
    module: SegmentationModule,
    datamodule: L.LightningDataModule,
    epoch_offset: int,
    root: Path,
) -> float:
    """The phase's monitored validation loss of the weights it starts from (a Trainer of its
    own in the phase's folder ``root``: no logger, profiler or checkpoint, nothing trained)."""
    trainer = instantiate(
        cfg.trainer, logger=False, enable_checkpointing=False, enable_model_summary=False,
        profiler=None, default_root_dir=str(root),
        callbacks=[PhaseController(phase, index, epoch_offset)],
    )  # fmt: skip
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return float(trainer.callback_metrics[f"{phase.name}/val/loss"])


def reuse_phase(module: SegmentationModule, record: dict[str, Any], run_dir: Path) -> dict:
    """A phase finished in an earlier attempt: load its best weights, return its record."""
    if record.get("best_checkpoint"):
        load_weights(module, run_dir / record["best_checkpoint"])
    return record


def run_phase(
    cfg: DictConfig,
    phase: Phase,
    index: int,
    module: SegmentationModule,
    datamodule: L.LightningDataModule,
    run_dir: Path,
    loggers: list[Any] | None = None,
    *,
    epoch_offset: int = 0,
    resume: bool = False,
    extra_callbacks: list[Callback] | tuple[Callback, ...] = (),
    test: bool = True,
) -> dict[str, Any]:
    """Train ``module`` through ``phase`` and return the phase's record.

    The phase ends by early stopping on ``<phase>/val/loss`` (or its epoch cap); the best
    epoch's weights, or its starting ones where no epoch beat them, are loaded back into
    ``module`` (so the next phase starts from them) and tested. ``resume`` continues from the
    phase's ``last.ckpt`` where one exists.
    """
    log.info(
        "phase %d '%s': training %s (max %d epochs, patience %d)",
        index + 1, phase.name, "+".join(phase.trainable), phase.max_epochs, phase.patience,
    )  # fmt: skip
    trainer, checkpoint, early_stopping = phase_trainer(
        cfg, phase, index, run_dir, loggers or [], epoch_offset, extra_callbacks
    )
    last = run_dir / "checkpoints" / phase.name / "last.ckpt"
    resume_from = str(last) if resume and last.is_file() else None
    if resume_from:
        log.info("phase '%s' continues from %s", phase.name, resume_from)
    try:
        began = time.monotonic()
        start = {k: v.detach().clone() for k, v in module.state_dict().items()}
        start_loss = start_val_loss(cfg, phase, index, module, datamodule, epoch_offset,
                                    run_dir / "checkpoints" / phase.name)  # fmt: skip
        start_seconds = time.monotonic() - began
        # early stopping's patience counts from the best seen, the start included: a phase
        # none of whose first `patience` epochs beats its start stops there (a resumed
        # phase's own EarlyStopping state, read from last.ckpt, replaces this)
        early_stopping.best_score = torch.tensor(start_loss)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        fit_done = time.monotonic()  # the rest: best weights back, testing
        stop = stop_reason(trainer, early_stopping, phase)
        best_epoch, best_path = None, checkpoint.best_model_path
        best = checkpoint.best_model_score
        # an improvement as early stopping counts one (Lightning signs min_delta by mode);
        # an interrupted phase is resumed later: it keeps its best.ckpt as it is
        min_delta = abs(float(early_stopping.min_delta))
        improved = best is not None and float(best) < start_loss - min_delta
        kept_start = not trainer.interrupted and not improved
        if kept_start:  # no epoch beat the start: the phase ends where it began
            module.load_state_dict(start)
            best_path, best = checkpoint.format_checkpoint_name({}), start_loss
            # a weight average would write its own weights in place of the start's
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, WeightAveraging)]
            trainer.save_checkpoint(best_path)
            log.info("phase '%s': no epoch beat its starting validation loss %.4g; it ends "
                     "with its starting weights", phase.name, start_loss)  # fmt: skip
        elif best_path:  # read once: the weights, and the epoch they are from
            best_epoch = int(load_weights(module, best_path)["epoch"])
        test_metrics: dict[str, Any] = {}
        if test:
            trainer.test(module, datamodule=datamodule, verbose=False)
            test_metrics = module.split_results("test")
    except BaseException:
        stop_other_ranks(trainer)
        raise
    return {
        "name": phase.name,
        "trainable": phase.trainable,
        "output": phase.module,
        "epochs": trainer.current_epoch,
        "best_epoch": best_epoch,
        "best_val_loss": float(best) if best is not None else None,
        "start_val_loss": start_loss,
        "kept_start": kept_start,
        "stop_reason": stop,
        "best_checkpoint": _relative(best_path, run_dir),
        # validating its start, training (Lightning's Timer: a resumed phase adds the time
        # up to its last checkpoint in earlier attempts) and testing this phase
        "wall_seconds": round(
            start_seconds + fit_seconds(trainer) + time.monotonic() - fit_done, 1
        ),
        "test": test_metrics,
    }
