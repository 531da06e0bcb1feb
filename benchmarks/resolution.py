"""Why ``input_mpp`` matters: one checkpoint scored on the same test images at their own pixel
size, upsampled by ``--factor`` with the right ``input_mpp``, and upsampled with the wrong one
(the model's own size assumed).

``python -m benchmarks.resolution --ckpt <run>/checkpoints/finetune/best.tuned.ckpt
--dataset consep --root ../shared/data/consep [--factor 2] [--out resolution.json]``

The upsampled copy (images bilinear, instance maps nearest neighbour) is written to a
temporary folder and deleted afterwards; the dataset is never changed. Prints pixel Dice,
AJI, PQ and the predicted nucleus count of each run and writes them as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_dir

from benchmarks.common import CONF_DIR


def evaluate_with(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    from nucleiseg.evaluate import evaluate

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=[*overrides, f"paths.output_dir={output_dir}"])
    return evaluate(cfg)


def write_test_split(
    cfg_overrides: list[str], factor: float, dest: Path, limit: int | None = None
) -> float:
    """The dataset's test images and instance maps (the first ``limit``) resampled by
    ``factor`` as a folder dataset whose ``split.csv`` makes every image a test image;
    returns the copy's µm per pixel."""
    from hydra.utils import instantiate

    from nucleiseg.data.resolution import resample_image, resample_labels, resampled_shape

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=cfg_overrides)
    samples = instantiate(cfg.dataset.datamodule.source).split("test")
    count = len(samples) if limit is None else min(limit, len(samples))
    (dest / "images").mkdir(parents=True)
    (dest / "masks").mkdir()
    from PIL import Image

    names = samples.names[:count]
    for index, name in enumerate(names):
        image, instances = samples.images[index], samples.instances[index]
        shape = resampled_shape(np.shape(image), factor)
        Image.fromarray(resample_image(image, shape)).save(dest / "images" / f"{name}.png")
        np.save(dest / "masks" / f"{name}.npy", resample_labels(instances, shape).astype(np.int32))
    rows = "".join(f"{name},test\n" for name in names)
    (dest / "split.csv").write_text("name,split\n" + rows)
    return float(cfg.dataset.mpp) / factor


def summary(results: dict[str, Any], seconds: float) -> dict[str, float]:
    block = results["test"][results["output"]]
    objects = block["objects"]
    return {
        "input_mpp": results["input_mpp"],
        "dice": block["dice"],
        "aji": objects["aji"],
        "pq": objects["pq"],
        "predicted_per_image": objects["true_count"] + objects["count_error"],
        "true_per_image": objects["true_count"],
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--dataset", default="consep")
    parser.add_argument("--root", required=True)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=None, help="the first N test images only")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists():
        parser.error(f"--out {args.out} exists; choose another file (nothing is overwritten)")
    base = [f"dataset={args.dataset}", f"dataset.root={args.root}", "trainer.precision=32-true",
            "trainer.enable_progress_bar=false"]  # fmt: skip
    rows = {}
    with tempfile.TemporaryDirectory(prefix="nucleiseg_resolution_") as tmp:
        tmp_path = Path(tmp)
        native_mpp = write_test_split(base[:2], 1.0, tmp_path / "native", args.limit)
        up_mpp = write_test_split(base[:2], args.factor, tmp_path / "up", args.limit)
        runs = (("native", "native", native_mpp), ("upsampled, right input_mpp", "up", up_mpp),
                ("upsampled, wrong input_mpp", "up", native_mpp))  # fmt: skip
        for index, (label, folder, input_mpp) in enumerate(runs):
            overrides = [
                "dataset=folder", f"dataset.root={tmp_path / folder}",
                "dataset.datamodule.source.mask_kind=instance", *base[2:], f"ckpt={args.ckpt}",
                f"dataset.mpp={native_mpp if folder == 'native' else up_mpp}",
                f"input_mpp={input_mpp}", "dataset.datamodule.num_workers=0",
            ]  # fmt: skip
            start = time.perf_counter()
            scored = evaluate_with(overrides, tmp_path / f"eval_{index}")
            rows[label] = summary(scored, time.perf_counter() - start)
    print(f"| run | input_mpp | Dice | AJI | PQ | nuclei/image (true) | s |\n|{'---|' * 7}")
    for label, row in rows.items():
        print(f"| {label} | {row['input_mpp']:.4g} | {row['dice']:.3f} | {row['aji']:.3f} | "
              f"{row['pq']:.3f} | {row['predicted_per_image']:.1f} ({row['true_per_image']:.1f})"
              f" | {row['seconds']} |")  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps({"checkpoint": args.ckpt, "factor": args.factor,
                                        "runs": rows}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
