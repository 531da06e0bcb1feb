"""Run a trained model over image files and write masks, instances, overlays and CSVs."""

from __future__ import annotations

import csv
import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries
from tqdm.auto import tqdm

from nucleiseg.data.io import IMAGE_SUFFIXES, DatasetError, read_array, to_rgb
from nucleiseg.inference.instances import (
    NUCLEUS_COLUMNS,
    InstanceSettings,
    describe_nuclei,
    instances_from_probability,
)
from nucleiseg.inference.tiling import Predictor, dihedral_tta, predict_tiled

log = logging.getLogger(__name__)


@dataclass
class PredictionReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def expand_inputs(spec: str) -> list[Path]:
    """A file, a directory (its images) or a glob pattern, as a sorted list of files."""
    path = Path(spec)
    if path.is_dir():
        files = [p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    elif path.is_file():
        files = [path]
    else:
        files = [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file()]
    if not files:
        raise FileNotFoundError(
            f"input '{spec}' matches no image files ({', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def save_outputs(
    stem: str, image: np.ndarray, prob: np.ndarray, instances: np.ndarray, out_dir: Path,
    threshold: float, save_probability: bool = False,
) -> list[Path]:  # fmt: skip
    """Binary mask PNG, 16-bit instance PNG (TIFF past 65535 nuclei), overlay PNG, CSV."""
    paths = [out_dir / f"{stem}_mask.png", out_dir / f"{stem}_overlay.png"]
    Image.fromarray(((prob >= threshold) * 255).astype(np.uint8)).save(paths[0])
    if instances.max() <= np.iinfo(np.uint16).max:
        paths.append(out_dir / f"{stem}_instances.png")
        Image.fromarray(instances.astype(np.uint16)).save(paths[-1])
    else:
        import tifffile

        paths.append(out_dir / f"{stem}_instances.tif")
        tifffile.imwrite(paths[-1], instances.astype(np.int32))
    overlay = image.copy()
    overlay[find_boundaries(instances, mode="inner")] = (0, 255, 0)
    Image.fromarray(overlay).save(paths[1])
    paths.append(out_dir / f"{stem}_nuclei.csv")
    with paths[-1].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=NUCLEUS_COLUMNS)
        writer.writeheader()
        for row in describe_nuclei(instances, prob):
            writer.writerow(
                {
                    k: int(v) if k != "mean_probability" and k[:8] != "centroid" else round(v, 4)
                    for k, v in row.items()
                }
            )
    if save_probability:
        paths.append(out_dir / f"{stem}_probability.npy")
        np.save(paths[-1], prob.astype(np.float32))
    return paths


def predict_files(
    predict: Predictor,
    inputs: list[Path],
    out_dir: Path,
    settings: InstanceSettings,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
    blend: str = "gaussian",
    tta: bool = False,
    device: str = "cpu",
    save_probability: bool = False,
) -> PredictionReport:
    """Predict every input; unreadable files are reported and skipped, the rest go on."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if tta:
        predict = dihedral_tta(predict)
    report = PredictionReport()
    for path in tqdm(inputs, desc="predicting", unit="image"):
        try:
            image = to_rgb(read_array(path), path)
        except DatasetError as err:
            log.error("skipped: %s", err)
            report.failed.append((path, str(err)))
            continue
        prob = predict_tiled(
            predict, image, tile=tile, overlap=overlap, batch_size=batch_size, blend=blend,
            device=device,
        )  # fmt: skip
        instances = instances_from_probability(prob, settings)
        report.written += save_outputs(
            path.stem, image, prob, instances, out_dir, settings.threshold, save_probability
        )
    return report
