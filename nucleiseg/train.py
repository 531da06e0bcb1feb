"""Entry point: ``python -m nucleiseg.train [overrides]`` (Hydra; ``-m`` sweeps).

In a sweep, a job that fails (a non-finite loss, bad data) is logged and recorded in its
``results.json`` with status ``failed``; the other jobs go on and the report lists it.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

log = logging.getLogger("nucleiseg.train")
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports a process ended by it


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    # heavy imports stay out of --help
    from nucleiseg.training.orchestration import RunExistsError, train
    from nucleiseg.training.process_control import (
        end_distributed_job,
        prepare_job,
        requeue_if_preempted,
    )

    prepare_job(cfg)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        train(cfg)
    except SIGTERMException as err:
        log.error("stopped by SIGTERM; a resumable checkpoint was saved (resume=auto)")
        requeue_if_preempted()  # submitit's preemption: the checkpoint is written, requeue
        # Lightning's SIGTERMException is a SystemExit without a code (exit status 0): a
        # preempted run must not look like a finished one to a scheduler or a script
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
