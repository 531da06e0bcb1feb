"""Entry point: ``python -m nucleiseg.train [overrides]`` (Hydra; ``-m`` sweeps)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from nucleiseg.training import train  # heavy imports stay out of `--help`

    train(cfg)


if __name__ == "__main__":
    main()
