"""On preemption (SIGTERM, or SIGUSR1 forwarded to it) save a resumable ``last.ckpt``.

Only when the signal stops the training batches: stopped between two validation batches,
Lightning would resume past the rest of that validation, with no validation loss for early
stopping or the learning-rate scheduler to read, so the ``last.ckpt`` of the previous
epoch's validation is kept and that epoch is trained again. Other errors (a non-finite
loss, say) keep the last good checkpoint untouched.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class PreemptionCheckpoint(Callback):
    """Writes ``<checkpoint_dir>/last.ckpt`` when the fit is stopped by a signal."""

    def __init__(self, checkpoint_dir: str | Path) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException | KeyboardInterrupt):
            return
        if not trainer.training:
            log.warning(
                "stopped during validation: keeping %s from the last finished epoch (resume "
                "trains epoch %d again)", self.checkpoint_dir / "last.ckpt", trainer.current_epoch
            )  # fmt: skip
            return
        trainer.save_checkpoint(str(self.checkpoint_dir / "last.ckpt"))
