"""The callback that drives the paper's phases: it puts the module into its phase in every
process, and records the phase in every checkpoint.

Each phase runs its own ``Trainer.fit`` with fresh EarlyStopping/ModelCheckpoint objects and
a fresh optimizer: unfreezing inside one ``fit`` breaks DDP (Lightning issue 20340) and
EarlyStopping never resets its counters. What a phase means for a network (gradients,
train/eval mode, learning rate) is the module's ``configure_phase``; this callback calls it
in ``setup``, before the strategy wraps the model for DDP and in every rank, like
Lightning's ``BaseFinetuning``, and its checkpoint state holds only the phase.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from nucleiseg.lightning.phases import Phase


class PhaseController(Callback):
    """Enters ``phase`` at the start of a fit; refuses to resume a checkpoint of another."""

    def __init__(self, phase: Phase, index: int = 0, epoch_offset: int = 0) -> None:
        self.phase = phase
        self.index = index
        self.epoch_offset = epoch_offset

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage in ("fit", "validate"):  # validate: the phase's starting weights
            pl_module.configure_phase(self.phase, self.index, self.epoch_offset)

    def state_dict(self) -> dict[str, Any]:
        return {"phase": asdict(self.phase), "index": self.index}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("phase", {}).get("name")
        if saved != self.phase.name:
            raise ValueError(
                f"checkpoint was written in phase '{saved}' but is being resumed in phase "
                f"'{self.phase.name}'; resume it with the phase it was written in"
            )
