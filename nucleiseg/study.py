"""Entry point: ``python -m nucleiseg.study [overrides]`` (``make study``): does stage 2 help?

The study itself (plan, branching, parts, publishing) is ``nucleiseg.analysis.study``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="study")
def main(cfg: DictConfig) -> None:
    from nucleiseg.analysis.study import study_call

    sys.exit(study_call(cfg))


if __name__ == "__main__":
    main()
