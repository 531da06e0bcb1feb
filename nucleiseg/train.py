"""Entry point: ``python -m nucleiseg.train [overrides]`` (Hydra; ``-m`` sweeps).

In a sweep, a job that fails (a non-finite loss, bad data) is logged and recorded in its
``results.json`` with status ``failed``; the other jobs go on and the report lists it.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

log = logging.getLogger("nucleiseg.train")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from nucleiseg.training import RunExistsError, train  # heavy imports stay out of --help

    try:
        train(cfg)
    except (Exception, RunExistsError) as err:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.error("job failed, the sweep goes on: %s: %s", type(err).__name__, err)


if __name__ == "__main__":
    main()
