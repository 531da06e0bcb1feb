"""On preemption (SIGTERM, or SIGUSR1 forwarded to it) save a resumable ``last.ckpt``.

Other errors (a non-finite loss, say) keep the last good checkpoint untouched.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException


class PreemptionCheckpoint(Callback):
    """Writes ``<checkpoint_dir>/last.ckpt`` when the fit is stopped by a signal."""

    def __init__(self, checkpoint_dir: str | Path) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException | KeyboardInterrupt):
            trainer.save_checkpoint(str(self.checkpoint_dir / "last.ckpt"))
