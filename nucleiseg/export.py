"""Entry point: ``python -m nucleiseg.export ckpt=... format=onnx|torchscript output=...``.

Exports stage 1 + enhancer as one graph (image in 0..1 -> nucleus probability), dynamic
in batch, height and width, and checks the file against PyTorch before reporting success.
A model trained with stain normalisation expects normalised input: its fitted values are
written beside the file (``<output>.stain_normalization.json``).
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
    if module.stain_normalizer is not None:  # not part of the graph: its values beside it
        import json
        from pathlib import Path

        from nucleiseg.files.atomic import write_atomic

        values = json.dumps(module.stain_normalizer.to_config(), indent=1)
        side = write_atomic(
            Path(f"{path}.stain_normalization.json"), lambda p: p.write_text(values)
        )
        print(
            f"the model expects Macenko stain-normalised input (torchstain): the fitted "
            f"stain matrix is in {side}; normalise images with it before the graph"
        )


if __name__ == "__main__":
    main()
