"""Checkpoints written atomically: a kill during a write never leaves a corrupt file.

The checkpoint goes to ``<path>.tmp`` first and is renamed over ``<path>`` (an atomic
replace on POSIX file systems), so ``last.ckpt`` is always either the previous or the new
complete checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)
