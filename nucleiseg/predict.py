"""Entry point: ``python -m nucleiseg.predict ckpt=... input=... output=... [tta=true]``.

Flat images (PNG/TIFF/JPEG, any size): tiled inference; per image a mask, a 16-bit instance
map, an overlay and a CSV of nuclei (areas also in µm²) at the input's own size, read at
``input_mpp`` or, unset, at the µm per pixel the file states (OME/ImageJ/TIFF tags, PNG pHYs;
``nucleiseg.data.pixel_size``), else the model's own with a warning.
Whole slides (.svs, .ndpi, pyramidal TIFF, ...): read at the model's pixel size from the
slide's own µm per pixel (``input_mpp`` overrides it), tissue tiles only, nuclei as QuPath
detections in ``<slide>.geojson``, a CSV, a tissue mask and an overlay; resumable.
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

    from nucleiseg.inference.loading import load_model, resolve_tta
    from nucleiseg.inference.precision import choose_precision, onnx_predictor
    from nucleiseg.inference.predictor import expand_inputs, output_stems, predict_image_files
    from nucleiseg.inference.tiling import module_predictor
    from nucleiseg.models.dihedral import dihedral_tta
    from nucleiseg.postprocessing.watershed import InstanceSettings
    from nucleiseg.wsi.batch import predict_slide_files
    from nucleiseg.wsi.slide import is_slide

    log = logging.getLogger("nucleiseg.predict")
    module, output = load_model(cfg.ckpt, cfg.device)
    tta = resolve_tta(module, cfg.tta)  # averaged by the predictor; the module stays plain
    chosen = (
        InstanceSettings(**OmegaConf.to_container(cfg.postprocess)) if cfg.postprocess else None
    )
    inputs = expand_inputs(str(cfg.input))
    slides = [p for p in inputs if is_slide(p)]
    images = [p for p in inputs if p not in slides]
    # auto weighs bf16 and ONNX Runtime for slides, where they pay off; flat images: float32
    onnx = (lambda: onnx_predictor(module)) if slides and cfg.device == "cpu" else None
    wanted = "32" if str(cfg.precision) == "auto" and not slides else cfg.precision
    predict, precision = choose_precision(module_predictor(module, output), wanted,
                                          cfg.device, onnx)  # fmt: skip
    predict = dihedral_tta(predict, module.channels) if tta else predict
    failed, written = [], 0
    if images:
        report = predict_image_files(
            predict, module, images, Path(cfg.output), chosen, cfg.get("input_mpp"), precision,
            device=cfg.device, save_probability=cfg.save_probability, overwrite=cfg.overwrite,
            max_pixels=int(cfg.max_pixels), **cfg.tiling,
        )  # fmt: skip
        failed, written = report.failed, len(report.written)
    if slides:
        module.set_input_mpp(None)  # slides are read at the model's pixel size already
        settings = module.input_settings(chosen)  # the model's grid: unscaled
        run_settings = {"ckpt": str(Path(cfg.ckpt).resolve()), "tta": tta,
                        "tiling": OmegaConf.to_container(cfg.tiling),
                        "postprocess": vars(settings), "precision": precision}  # fmt: skip
        report = predict_slide_files(
            slides, output_stems(slides, Path(cfg.output)), predict, module.mpp, settings,
            run_settings, input_mpp=cfg.get("input_mpp"), tile=cfg.tiling.tile,
            margin=cfg.tiling.overlap, batch_size=cfg.tiling.batch_size, overwrite=cfg.overwrite,
            normalize=module.stain_normalizer, **cfg.slide,
        )  # fmt: skip
        failed += report.failed
        written += sum(len(r.outputs) for r in report.results)
    log.info("%d files written to %s (%s precision)", written, cfg.output, precision)
    if failed:
        summary = "\n".join(f"  {path}: {reason}" for path, reason in failed)
        log.error("%d input(s) failed:\n%s", len(failed), summary)
        sys.exit(1)


if __name__ == "__main__":
    main()
