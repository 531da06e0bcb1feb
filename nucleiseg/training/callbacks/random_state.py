"""The process's random states (torch, NumPy, Python) in every checkpoint, so a resumed run
draws the same numbers as an uninterrupted one. The augmentation's own generators are
saved by ``NucleiDataModule.state_dict``."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def _numpy_state() -> list[Any]:
    """NumPy's global RNG state in types a ``weights_only`` checkpoint load accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


class RandomStateCheckpoint(Callback):
    """Saves and restores the global random states with each checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(),
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        name, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state_dict["python"])
