"""Entry point: ``python -m nucleiseg.generalization [overrides]`` (``make generalization``):
how far does a model travel? Each source alone and the mix, scored on every source.

The matrix itself (plan, resuming, the tables and the heatmap) is
``nucleiseg.analysis.generalization``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="generalization")
def main(cfg: DictConfig) -> None:
    from nucleiseg.analysis.generalization import generalization_call

    sys.exit(generalization_call(cfg))


if __name__ == "__main__":
    main()
