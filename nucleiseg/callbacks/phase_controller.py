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

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

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
    lr: float | None = None  # this phase's learning rate; None: model.optimizer's

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
    module.phase_lr = phase.lr


def _random_transforms(transform: Any) -> list[Any]:
    """An albumentations pipeline and every transform in it that owns random generators
    (each transform keeps its own, so all of them are saved and restored)."""
    found = [transform] if hasattr(transform, "py_random") else []
    for child in getattr(transform, "transforms", None) or []:
        found += _random_transforms(child)
    return found


def _numpy_state() -> list[Any]:
    """NumPy's global RNG state in types a ``weights_only`` checkpoint load accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


class PhaseController(Callback):
    """Applies one phase's freezing in every process and records it in checkpoints."""

    def __init__(self, phase: Phase, index: int = 0, checkpoint_dir: str | None = None) -> None:
        self.phase = phase
        self.index = index
        self.checkpoint_dir = checkpoint_dir
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        apply_phase(pl_module, self.phase)
        self._trainer = trainer

    def _keep_frozen_in_eval(self, pl_module: L.LightningModule) -> None:
        for name, part in pl_module.parts.items():
            if name not in self.phase.trainable:
                part.eval()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep_frozen_in_eval(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep_frozen_in_eval(pl_module)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """On preemption (SIGTERM, or SIGUSR1 forwarded to it) save a resumable checkpoint.

        Other errors (a non-finite loss, say) keep the last good checkpoint untouched.
        """
        if isinstance(exception, SIGTERMException | KeyboardInterrupt) and self.checkpoint_dir:
            trainer.save_checkpoint(str(Path(self.checkpoint_dir) / "last.ckpt"))

    def _augmentation(self) -> Any:
        datamodule = getattr(self._trainer, "datamodule", None)
        return getattr(datamodule, "train_transform", None)

    def state_dict(self) -> dict[str, Any]:
        """The phase, plus every random state a resumed run needs to continue identically."""
        state: dict[str, Any] = {
            "phase": asdict(self.phase),
            "index": self.index,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_state(),
                "python": random.getstate(),
            },
        }
        augmentation = self._augmentation()
        if augmentation is not None:
            state["rng"]["augmentation"] = [
                (t.random_generator.bit_generator.state, t.py_random.getstate())
                for t in _random_transforms(augmentation)
            ]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("phase", {}).get("name")
        if saved != self.phase.name:
            raise ValueError(
                f"checkpoint was written in phase '{saved}' but is being resumed in phase "
                f"'{self.phase.name}'; resume it with the phase it was written in"
            )
        rng = state_dict.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            name, keys, pos, has_gauss, cached = rng["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
            random.setstate(rng["python"])
            augmentation = self._augmentation()
            if "augmentation" in rng and augmentation is not None:
                transforms = _random_transforms(augmentation)
                for t, (numpy_state, python_state) in zip(
                    transforms, rng["augmentation"], strict=True
                ):
                    t.random_generator.bit_generator.state = numpy_state
                    t.py_random.setstate(python_state)
