"""Signals and DDP rank processes around a run: preemption and clean failure."""

from __future__ import annotations

import os
import signal
import threading

import lightning as L


def forward_sigusr1_as_sigterm() -> None:
    """Outside SLURM (whose requeue Lightning handles), treat SIGUSR1 like SIGTERM."""
    if os.environ.get("SLURM_JOB_ID") or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGUSR1, lambda *_: os.kill(os.getpid(), signal.SIGTERM))


def stop_other_ranks(trainer: L.Trainer | None) -> None:
    """After a failure, end the DDP rank processes this process started, so none is left
    waiting for a collective that will never come."""
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    if launcher is not None and getattr(launcher, "procs", None):
        launcher.kill(signal.SIGKILL)
