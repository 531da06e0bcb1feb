"""Signals and processes around a run: preemption, clean failure of DDP ranks, and a sweep
job made safe for DDP and parallel launchers."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import lightning as L
from omegaconf import DictConfig


def forward_sigusr1_as_sigterm() -> None:
    """Outside SLURM (whose requeue Lightning handles), treat SIGUSR1 like SIGTERM."""
    if os.environ.get("SLURM_JOB_ID") or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGUSR1, lambda *_: os.kill(os.getpid(), signal.SIGTERM))


#: a submitit preemption signal seen during training: (submitit's handler, the signal)
_SUBMITIT_PREEMPTION: dict[str, tuple] = {}


def forward_submitit_preemption() -> None:
    """In a submitit job (``hydra/launcher=slurm`` or ``submitit_local``), make its preemption
    signal (USR2 by default) save a resumable checkpoint first: it is turned into SIGTERM,
    which ends the phase with ``last.ckpt`` written (``PreemptionCheckpoint``), and
    submitit's own handler, which requeues the job, runs after that
    (``requeue_if_preempted``). Without it submitit requeued at once and nothing was saved."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    from submitit.core.job_environment import JobEnvironment

    signum = JobEnvironment._usr_sig()
    submitits = signal.getsignal(signum)
    if not callable(submitits) or getattr(submitits, "saves_first", False):
        return

    def save_then_requeue(received: int, frame: Any) -> None:
        _SUBMITIT_PREEMPTION["pending"] = (submitits, received)
        os.kill(os.getpid(), signal.SIGTERM)

    save_then_requeue.saves_first = True  # type: ignore[attr-defined]
    signal.signal(signum, save_then_requeue)


def requeue_if_preempted() -> None:
    """After a stop by SIGTERM: if submitit's preemption signal caused it, let submitit's
    handler requeue the job now that the checkpoint is written (it exits the process)."""
    pending = _SUBMITIT_PREEMPTION.pop("pending", None)
    if pending is not None:
        handler, received = pending
        handler(received, None)


def stop_other_ranks(trainer: L.Trainer | None) -> None:
    """After a failure, end the DDP rank processes this process started, so none is left
    waiting for a collective that will never come."""
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    if launcher is not None and getattr(launcher, "procs", None):
        launcher.kill(signal.SIGKILL)


def prepare_job(cfg: DictConfig) -> None:
    """Make a sweep job safe for DDP and for parallel launchers.

    Lightning's DDP relaunches this script for ranks > 0 with ``sys.argv``; inside a
    multirun that would re-run the whole sweep (Hydra #2070, Lightning #11300). So each job
    rewrites ``sys.argv`` to its own overrides and points ``hydra.run.dir`` at its job dir:
    the ranks then rerun exactly this job, into this job's dir. A joblib job asking for one
    GPU on a machine with several is pinned to GPU (job number mod GPU count).
    """
    import sys

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    if "joblib" in str(hydra_cfg.launcher.get("_target_", "")) and cfg.trainer.devices == 1:
        import torch

        if cfg.trainer.get("accelerator") in ("gpu", "cuda") and torch.cuda.device_count() > 1:
            with open_dict(cfg):
                cfg.trainer.devices = [hydra_cfg.job.num % torch.cuda.device_count()]


DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def end_distributed_job() -> None:
    """After a DDP job of a sweep: close its process group and forget its ranks' environment,
    so that the next job in this process launches (and connects to) fresh ranks."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name in DDP_ENV:
        os.environ.pop(name, None)
