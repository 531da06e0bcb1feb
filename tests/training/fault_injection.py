"""Deliberate faults for testing the run's safeguards (never on in normal configs).

``CorruptBatch`` fills one training batch with NaN; with ``tests/training`` on ``PYTHONPATH``,
enable it with ``+callbacks.corrupt._target_=fault_injection.CorruptBatch
+callbacks.corrupt.phase=enhance +callbacks.corrupt.step=1``.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class CorruptBatch(Callback):
    """Replaces the images of one training batch (phase, step within the phase) with NaN."""

    def __init__(self, phase: str, step: int = 0) -> None:
        self.phase, self.step = phase, step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if pl_module.phase == self.phase and trainer.global_step == self.step:
            batch["image"].fill_(torch.nan)


class KillInEpoch(Callback):
    """Sends a signal to this process in one epoch of one phase: at its end (after its
    checkpoint is written; ``during="epoch_end"``) or after its first validation batch
    (``during="validation"``). SIGKILL simulates a crash, SIGTERM a preemption."""

    changes_results = False  # it interrupts a run: the resumed run may leave it out

    def __init__(
        self, phase: str, epoch: int = 0, signal_name: str = "SIGKILL", during: str = "epoch_end"
    ) -> None:
        if during not in ("epoch_end", "validation"):
            raise ValueError(f"during must be 'epoch_end' or 'validation', not {during!r}")
        self.phase, self.epoch, self.during = phase, epoch, during
        self.signal = getattr(signal, signal_name)

    def _kill_if_due(self, trainer: L.Trainer, pl_module: L.LightningModule, when: str) -> None:
        due = when == self.during and pl_module.phase == self.phase
        if due and trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            os.kill(os.getpid(), self.signal)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._kill_if_due(trainer, pl_module, "epoch_end")

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        self._kill_if_due(trainer, pl_module, "validation")
