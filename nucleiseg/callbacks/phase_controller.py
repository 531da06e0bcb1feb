"""Phase control for the paper's three-phase training (stage 1; enhancer on a frozen stage 1;
both fine-tuned).

Each phase runs its own ``Trainer.fit`` with fresh EarlyStopping/ModelCheckpoint objects and
a fresh optimizer: unfreezing inside one ``fit`` breaks DDP (Lightning issue 20340) and
EarlyStopping never resets its counters. The orchestrator (``nucleiseg.training``) applies
the phase in the main process; :class:`PhaseController` re-applies it in ``setup`` (before
the strategy wraps the model for DDP, and in every process), keeps frozen parts in eval mode
through training and validation, and records the phase in every checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

PARTS = ("stage1", "enhancer")
MODULES = ("stage1", "two_stage")


@dataclass
class Phase:
    """One training phase: which module trains, which parts learn, when it stops."""

    name: str
    module: str  # "stage1" or "two_stage"
    trainable: list[str] = field(default_factory=lambda: ["stage1"])
    max_epochs: int = 100
    patience: int = 10
    min_epochs: int = 1
    test_as: str | None = None  # key under results.json "test" for this phase's output

    def __post_init__(self) -> None:
        if self.module not in MODULES:
            raise ValueError(
                f"phase '{self.name}': module must be one of {MODULES}, got '{self.module}'"
            )
        unknown = set(self.trainable) - set(PARTS)
        if unknown:
            raise ValueError(
                f"phase '{self.name}': unknown trainable part(s) {sorted(unknown)}; "
                f"choose from {PARTS}"
            )
        if not self.trainable:
            raise ValueError(f"phase '{self.name}' trains nothing: list at least one part")

    @property
    def output(self) -> str:
        """The module output this phase is judged on."""
        return "stage1" if self.module == "stage1" else "two_stage"


def apply_phase(module: Any, phase: Phase) -> None:
    """Freeze the parts a phase does not train (no gradients, eval mode), unfreeze the rest."""
    parts = module.parts
    missing = set(phase.trainable) - set(parts)
    if missing:
        raise ValueError(
            f"phase '{phase.name}' trains {sorted(missing)}, which {type(module).__name__} lacks"
        )
    for name, part in parts.items():
        trainable = name in phase.trainable
        part.requires_grad_(trainable)
        if not trainable:
            part.eval()
    module.phase = phase.name


class PhaseController(Callback):
    """Applies one phase's freezing in every process and records it in checkpoints."""

    def __init__(self, phase: Phase, index: int = 0) -> None:
        self.phase = phase
        self.index = index

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        apply_phase(pl_module, self.phase)

    def _keep_frozen_in_eval(self, pl_module: L.LightningModule) -> None:
        for name, part in pl_module.parts.items():
            if name not in self.phase.trainable:
                part.eval()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep_frozen_in_eval(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep_frozen_in_eval(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"phase": asdict(self.phase), "index": self.index}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("phase", {}).get("name")
        if saved != self.phase.name:
            raise ValueError(
                f"checkpoint was written in phase '{saved}' but is being resumed in phase "
                f"'{self.phase.name}'; resume it with the phase it was written in"
            )
