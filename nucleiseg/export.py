"""Entry point: ``python -m nucleiseg.export ckpt=... format=onnx|torchscript output=...``.

Exports stage 1 + enhancer as one graph (image in 0..1 -> nucleus probability), dynamic
in batch, height and width, and checks the file against PyTorch before reporting success.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from nucleiseg.inference.export import export, exported_model
    from nucleiseg.inference.loading import load_model

    module, _ = load_model(cfg.ckpt)
    size = tuple(cfg.size) if cfg.size else None
    path = export(exported_model(module), cfg.output, cfg.format, size)
    print(f"{cfg.format} model written to {path} (checked against PyTorch)")


if __name__ == "__main__":
    main()
