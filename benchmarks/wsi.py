"""Whole-slide inference speed and memory: ``python -m benchmarks.wsi --ckpt <two-stage ckpt>``.

Runs ``nucleiseg.wsi.run.predict_slide`` on the CMU slide (tissue from its thumbnail) with
the checkpoint's model in float32, bf16 autocast (where the CPU computes bf16 natively) and
ONNX Runtime (the exported model), and prints tissue megapixels per second, the largest
probability difference from float32 on a sample tile, and the process's peak resident
memory during each run. Then the memory of the 2-level TCGA slide read
at level 0 and of a generated 20,000 x 20,000 px pyramidal TIFF (a ``--big-tissue`` px
square of tissue in it, so it finishes in minutes): peak memory must not follow the size.
With ``--tta`` the CMU slide runs once more with the fastest precision on the 8 averaged
dihedral views (as ``predict`` does for a checkpoint tuned with them): what they cost.
Writes ``--out`` (JSON) when given; never overwrites it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ROOT, PeakResidentMemory

WSI = ROOT.parent / "shared" / "data" / "wsi"


def run_slide(slide: Path, predict, module, out: Path, tile: int, input_mpp=None,
              tissue_mask=None) -> dict:  # fmt: skip
    from nucleiseg.wsi.run import predict_slide
    from nucleiseg.wsi.slide import SlideReader

    reader = SlideReader(slide, module.mpp, input_mpp)
    with PeakResidentMemory() as memory:
        start = time.perf_counter()
        result = predict_slide(reader, predict, module.instance_settings, out / slide.stem, {},
                               tile=tile, margin=64, tissue_mask=tissue_mask)  # fmt: skip
        wall = time.perf_counter() - start
    reader.close()
    return {
        "slide": slide.name, "level": reader.level, "model_grid": list(reader.size),
        "tissue_tiles": result.tissue_tiles, "tiles": result.tiles, "nuclei": result.nuclei,
        "tissue_mp": round(result.tissue_megapixels, 2),
        "tissue_mp_per_s": round(result.megapixels_per_second, 3), "wall_s": round(wall, 1),
        "peak_mb": round(memory.peak_mb, 1),  # the process's resident peak during the run
        "growth_mb": round(memory.peak_mb - memory.baseline_mb, 1),
    }  # fmt: skip


def big_pyramid(path: Path, size: int, tissue: int) -> tuple[Path, Path]:
    """A ``size`` px square pyramidal TIFF at 0.25 µm per pixel, written tile by tile (never
    whole in memory): pink stroma with purple nuclei in a ``tissue`` px square, glass
    elsewhere; and its tissue mask."""
    import tifffile
    from PIL import Image

    from nucleiseg.data.synthetic import SyntheticNuclei

    patch = SyntheticNuclei(num_train=1, num_val=1, num_test=1, size=256, seed=0)
    tissue_tile = patch.split("test").images[0]
    glass = np.full((256, 256, 3), 242, np.uint8)
    start = (size - tissue) // 2

    def tiles(level_size: int, step: int):
        for y in range(0, level_size, 256):
            for x in range(0, level_size, 256):
                inside = start <= y * step < start + tissue and start <= x * step < start + tissue
                yield (
                    tissue_tile[::step, ::step].repeat(step, 0).repeat(step, 1) if inside else glass
                )

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(3):
            step = 2**level
            side = size // step
            tif.write(
                tiles(side, step), shape=(side, side, 3), dtype=np.uint8, tile=(256, 256),
                compression="jpeg", photometric="rgb", subfiletype=1 if level else 0,
                resolution=(1e4 / (0.25 * step),) * 2, resolutionunit="CENTIMETER",
            )  # fmt: skip
    mask = np.zeros((size // 256, size // 256), np.uint8)
    mask[start // 256 : (start + tissue) // 256, start // 256 : (start + tissue) // 256] = 255
    mask_path = path.with_name("big_tissue.png")
    Image.fromarray(mask).save(mask_path)
    return path, mask_path


def main(argv: list[str] | None = None) -> int:
    from nucleiseg.inference.loading import load_model
    from nucleiseg.inference.precision import autocast_predictor, onnx_predictor, sample_tile
    from nucleiseg.inference.tiling import module_predictor
    from nucleiseg.models.dihedral import dihedral_tta
    from nucleiseg.training.precision import native_cpu_bf16

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--big-size", type=int, default=20_000)
    parser.add_argument("--big-tissue", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tta", action="store_true", help="also time the 8 averaged views")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists():
        parser.error(f"--out {args.out} exists; choose another file (nothing is overwritten)")
    torch.set_num_threads(torch.get_num_threads())
    module, output = load_model(args.ckpt)
    fp32 = module_predictor(module, output)
    rows, memory_rows = [], []
    with tempfile.TemporaryDirectory(prefix="nucleiseg_wsi_") as tmp:
        tmp_path = Path(tmp)
        candidates = {"float32": fp32}
        if native_cpu_bf16():
            candidates["bf16 autocast"] = autocast_predictor(fp32)
        candidates["onnxruntime"] = onnx_predictor(module, tmp_path / "model.onnx")
        sample = sample_tile(512)
        with torch.no_grad():
            reference = fp32(sample).float()
        for name, predict in candidates.items():
            with torch.no_grad():
                gap = float((predict(sample).float() - reference).abs().max())
            row = run_slide(WSI / "CMU-1-Small-Region.svs", predict, module, tmp_path / name,
                            args.tile)  # fmt: skip
            rows.append({"precision": name, "max_prob_diff": round(gap, 4), **row})
        fastest = max(rows, key=lambda r: r["tissue_mp_per_s"] if r["max_prob_diff"] <= 1e-2
                      else 0)  # fmt: skip
        predict = candidates[fastest["precision"]]
        if args.tta:
            views = run_slide(WSI / "CMU-1-Small-Region.svs",
                              dihedral_tta(predict, module.channels), module,
                              tmp_path / "tta", args.tile)  # fmt: skip
            rows.append({"precision": f"{fastest['precision']}, 8 views",
                         "max_prob_diff": None, **views})  # fmt: skip
        tcga = WSI / "TCGA-CR-7395-01A-01-TS1.svs"  # no mpp: say it is the model's (level 0)
        memory_rows.append(
            run_slide(tcga, predict, module, tmp_path / "tcga", args.tile, input_mpp=module.mpp)
        )
        big, mask = big_pyramid(tmp_path / "big.tif", args.big_size, args.big_tissue)
        memory_rows.append(run_slide(big, predict, module, tmp_path / "big", args.tile,
                                     tissue_mask=mask))  # fmt: skip
    print("| precision | max prob diff | tissue MP | tissue MP/s | nuclei | peak MB |\n|"
          + "---|" * 6)  # fmt: skip
    for r in rows:
        print(
            f"| {r['precision']} | {r['max_prob_diff']} | {r['tissue_mp']} | "
            f"{r['tissue_mp_per_s']} | {r['nuclei']} | {r['peak_mb']} |"
        )
    print(f"\nmemory ({fastest['precision']}):\n| slide | level | model grid | tissue MP | "
          f"MP/s | peak MB |\n|" + "---|" * 6)  # fmt: skip
    for r in memory_rows:
        print(
            f"| {r['slide']} | {r['level']} | {r['model_grid'][1]}x{r['model_grid'][0]} | "
            f"{r['tissue_mp']} | {r['tissue_mp_per_s']} | {r['peak_mb']} |"
        )
    if args.out is not None:
        args.out.write_text(json.dumps({"checkpoint": args.ckpt, "threads":
                                        torch.get_num_threads(), "precisions": rows,
                                        "memory": memory_rows}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
