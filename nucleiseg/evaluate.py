"""Entry point: ``python -m nucleiseg.evaluate ckpt=... dataset=tnbc dataset.root=...``.

Scores a trained checkpoint on a dataset's test split (``split=val``: its validation split,
to choose between models; ``whole_dataset=true``: every image) at the images' own pixel
grid (``input_mpp``, default the dataset's ``mpp``: they are resampled to the model's and
its outputs back) and writes ``results.json`` with the same ``test`` block as a training
run: pixel metrics, nucleus-level metrics and, for a two-stage model, stage 1 beside it.
``restain_like=<slide or image>``: re-stained as another lab's (:mod:`nucleiseg.wsi.restaining`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    from hydra.utils import instantiate

    from nucleiseg.data.mix import is_mix
    from nucleiseg.data.whole import SplitAsTest, WholeDataset
    from nucleiseg.files.atomic import write_json_atomic
    from nucleiseg.inference import loading
    from nucleiseg.metrics.per_image import scored_images
    from nucleiseg.wsi.restaining import restain_datamodule

    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_mix(cfg.dataset):
        raise ValueError(
            f"evaluate scores one dataset at a time, and dataset={cfg.dataset.name} is a mix: "
            f"score each source (dataset=<{'|'.join(cfg.dataset.sources)}>) or "
            "run python -m nucleiseg.generalization for every source at once"
        )
    split = "all" if cfg.whole_dataset else str(cfg.get("split") or "test")
    module, output = loading.load_model(cfg.ckpt)
    module.phase = "evaluate"
    module.tta = loading.resolve_tta(module, cfg.get("tta"))
    input_mpp = loading.apply_input_mpp(module, cfg.get("input_mpp"))
    datamodule = loading.native_grid_datamodule(cfg.dataset, module)
    restained = restain_datamodule(datamodule, module.stain_normalizer, cfg.get("restain_like"))
    if split == "all":
        datamodule.source = WholeDataset(datamodule.source)
    elif split != "test":
        datamodule.source = SplitAsTest(datamodule.source, split)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], default_root_dir=str(run_dir))
    trainer.test(module, datamodule=datamodule, verbose=False)
    scores = module.split_results("test")
    images = scored_images(scores, len(datamodule.samples["test"]), split)
    results = {
        "checkpoint": str(Path(cfg.ckpt).resolve()),
        "dataset": cfg.dataset.name,
        "split": split,
        "images": images,
        "output": output,
        "input_mpp": input_mpp,
        "model_mpp": module.mpp,
        "tta": module.tta,
        "restained_like": restained,
        "status": "finished",
        "test": scores,
    }
    write_json_atomic(run_dir / "results.json", results)
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    import json

    results = evaluate(cfg)
    print(json.dumps({k: v["dice"] for k, v in results["test"].items()}, indent=1))


if __name__ == "__main__":
    main()
