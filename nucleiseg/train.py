"""Entry point: ``python -m nucleiseg.train [overrides]`` (Hydra; ``-m`` sweeps).

In a sweep, a job that fails (a non-finite loss, bad data) is logged and recorded in its
``results.json`` with status ``failed``; the other jobs go on and the report lists it.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

log = logging.getLogger("nucleiseg.train")


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


PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports a process ended by it
DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def end_distributed_job() -> None:
    """After a DDP job of a sweep: close its process group and forget its ranks' environment,
    so that the next job in this process launches (and connects to) fresh ranks."""
    import os

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name in DDP_ENV:
        os.environ.pop(name, None)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from nucleiseg.training import RunExistsError, train  # heavy imports stay out of --help

    prepare_job(cfg)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        train(cfg)
    except SIGTERMException as err:
        # Lightning's SIGTERMException is a SystemExit without a code (exit status 0): a
        # preempted run must not look like a finished one to a scheduler or a script
        log.error("stopped by SIGTERM; a resumable checkpoint was saved (resume=auto)")
        raise SystemExit(PREEMPTED_EXIT_CODE) from err
    except (Exception, RunExistsError) as err:
        if not multirun:
            raise
        log.error("job failed, the sweep goes on: %s: %s", type(err).__name__, err)
    finally:
        if multirun:
            end_distributed_job()


if __name__ == "__main__":
    main()
