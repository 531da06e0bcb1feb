"""Entry point: ``python -m nucleiseg.ensemble members=[a.ckpt,b.ckpt] output=ensemble.ckpt``.

Writes one checkpoint holding several trained models of one kind, whose probability maps
every command then averages (nnU-Net's ensembling of folds); ``nucleiseg.inference.ensembling``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="ensemble")
def main(cfg: DictConfig) -> None:
    from nucleiseg.inference.ensembling import write_ensemble

    members = [str(m) for m in cfg.members] if not isinstance(cfg.members, str) else [cfg.members]
    path = write_ensemble(members, cfg.output, overwrite=bool(cfg.overwrite))
    print(f"ensemble of {len(members)} models written to {path}; choose its post-processing "
          f"with python -m nucleiseg.tune_postprocess ckpt={path} ...")  # fmt: skip


if __name__ == "__main__":
    main()
