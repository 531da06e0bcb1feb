"""Deliberate faults for testing the run's safeguards (never on in normal configs).

``CorruptBatch`` fills one training batch with NaN; enable it with
``+callbacks.corrupt._target_=nucleiseg.callbacks.fault_injection.CorruptBatch
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


class KillAtEpochEnd(Callback):
    """Sends a signal to this process at the end of one epoch of one phase (after its
    checkpoint is written): SIGKILL simulates a crash, SIGTERM a preemption."""

    def __init__(self, phase: str, epoch: int = 0, signal_name: str = "SIGKILL") -> None:
        self.phase, self.epoch = phase, epoch
        self.signal = getattr(signal, signal_name)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.phase == self.phase and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), self.signal)
