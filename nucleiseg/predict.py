"""Entry point: ``python -m nucleiseg.predict ckpt=... input=... output=... [tta=true]``.

Tiled inference of a trained checkpoint on any image size; per image a binary mask, a
16-bit instance map, an overlay and a CSV of nuclei (areas also in µm²), all at the input's
own size: inputs at ``input_mpp`` are resampled to the model's pixel size and back.
Unreadable inputs are reported and skipped; the exit status is 1 when any input failed.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    import logging
    from pathlib import Path

    from nucleiseg.inference.loading import apply_input_mpp, load_model
    from nucleiseg.inference.predictor import expand_inputs, predict_files
    from nucleiseg.inference.tiling import module_predictor
    from nucleiseg.postprocessing.watershed import InstanceSettings

    log = logging.getLogger("nucleiseg.predict")
    module, output = load_model(cfg.ckpt, cfg.device)
    input_mpp = apply_input_mpp(module, cfg.get("input_mpp"))
    settings = module.input_settings(  # chosen at the model's grid, applied at the input's
        InstanceSettings(**OmegaConf.to_container(cfg.postprocess)) if cfg.postprocess else None
    )
    report = predict_files(
        module_predictor(module, output),
        expand_inputs(str(cfg.input)),
        Path(cfg.output),
        settings,
        tta=cfg.tta,
        device=cfg.device,
        save_probability=cfg.save_probability,
        overwrite=cfg.overwrite,
        max_pixels=int(cfg.max_pixels),
        normalize=module.stain_normalizer,
        mpp=input_mpp,
        **cfg.tiling,
    )
    log.info("%d files written to %s", len(report.written), cfg.output)
    if report.failed:
        summary = "\n".join(f"  {path}: {reason}" for path, reason in report.failed)
        log.error("%d input(s) failed:\n%s", len(report.failed), summary)
        sys.exit(1)


if __name__ == "__main__":
    main()
