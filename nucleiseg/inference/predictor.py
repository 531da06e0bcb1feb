"""Run a trained model over image files and write masks, instances, overlays and CSVs."""

from __future__ import annotations

import csv
import glob
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries
from tqdm.auto import tqdm

from nucleiseg.data.io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    SLIDE_SUFFIXES,
    DatasetError,
    read_rgb_image,
)
from nucleiseg.files.atomic import write_atomic
from nucleiseg.inference.tiling import Predictor, predict_tiled
from nucleiseg.postprocessing.watershed import (
    NUCLEUS_COLUMNS,
    InstanceSettings,
    describe_nuclei,
    instances_from_probability,
    nucleus_probability,
)

log = logging.getLogger(__name__)


OUTPUT_SUFFIXES = ("_mask.png", "_overlay.png", "_instances.png", "_instances.tif",
                   "_nuclei.csv", "_probability.npy")  # fmt: skip


class OutputConflictError(ValueError):
    """Predict would overwrite an input, a ground-truth file or an earlier output."""


@dataclass
class PredictionReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def expand_inputs(spec: str) -> list[Path]:
    """A file, a directory (its images and slides) or a glob pattern, as a sorted list."""
    path = Path(spec)
    suffixes = IMAGE_SUFFIXES + SLIDE_SUFFIXES
    if path.is_dir():
        files = [p for p in sorted(path.iterdir()) if p.suffix.lower() in suffixes]
    elif path.is_file():
        files = [path]
    else:
        files = [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file()]
    if not files:
        raise FileNotFoundError(
            f"input '{spec}' matches no image or slide files ({', '.join(suffixes)})"
        )
    return files


def output_stems(inputs: list[Path], out_dir: Path) -> dict[Path, Path]:
    """Each input's output prefix: its path below the inputs' common folder, mirrored under
    ``out_dir`` (``slide1/tile_0.png`` -> ``<out_dir>/slide1/tile_0``)."""
    parents = [p.resolve().parent for p in inputs]
    root = Path(os.path.commonpath(parents))
    stems = {p: out_dir / p.resolve().parent.relative_to(root) / p.stem for p in inputs}
    seen: dict[Path, Path] = {}
    for path, stem in stems.items():
        if stem in seen:
            raise OutputConflictError(
                f"'{seen[stem]}' and '{path}' would write the same outputs '{stem}_*'; rename "
                "one of them or predict them separately"
            )
        seen[stem] = path
    return stems


def check_outputs(stems: dict[Path, Path], overwrite: bool = False) -> None:
    """Refuse to write where inputs live, or over earlier outputs without ``overwrite``."""
    input_dirs = {p.resolve().parent for p in stems}
    for path, stem in stems.items():
        if stem.parent.resolve() in input_dirs:
            raise OutputConflictError(
                f"output folder '{stem.parent}' holds input images (such as '{path}'); "
                "predictions there could replace inputs or ground truth: choose another output"
            )
        existing = [stem.with_name(stem.name + s) for s in OUTPUT_SUFFIXES]
        existing = [e for e in existing if e.exists()]
        if existing and not overwrite:
            raise OutputConflictError(
                f"'{existing[0]}' exists (an earlier prediction?); pass overwrite=true to "
                "replace earlier outputs, or choose another output folder"
            )


def _csv_value(key: str, value: float) -> int | float | str:
    if key == "area_um2":
        return "" if np.isnan(value) else round(value, 3)
    if key == "mean_probability" or key.startswith("centroid"):
        return round(value, 4)
    return int(value)


def _write_csv(instances: np.ndarray, prob: np.ndarray, path: Path, mpp: float | None) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=NUCLEUS_COLUMNS)
        writer.writeheader()
        for row in describe_nuclei(instances, prob, mpp):
            writer.writerow({k: _csv_value(k, v) for k, v in row.items()})


def save_outputs(
    stem: Path, image: np.ndarray, prob: np.ndarray, instances: np.ndarray,
    threshold: float, save_probability: bool = False, mpp: float | None = None,
) -> list[Path]:  # fmt: skip
    """Binary mask PNG, 16-bit instance PNG (TIFF past 65535 nuclei), overlay PNG, CSV
    (areas in µm² at ``mpp``); each written to a temporary file and renamed. ``prob`` is the
    model's maps: (H, W), or (C, H, W) for instance-aware models (the mask and CSV read the
    nucleus channel; ``_probability.npy`` keeps every channel)."""
    out = stem.parent / stem.name
    maps, prob = prob, nucleus_probability(prob)
    mask = Image.fromarray(((prob >= threshold) * 255).astype(np.uint8))
    paths = [write_atomic(Path(f"{out}_mask.png"), lambda p: mask.save(p, format="PNG"))]
    if instances.max() <= np.iinfo(np.uint16).max:
        labels = Image.fromarray(instances.astype(np.uint16))
        paths.append(
            write_atomic(Path(f"{out}_instances.png"), lambda p: labels.save(p, format="PNG"))
        )
    else:
        import tifffile

        paths.append(
            write_atomic(
                Path(f"{out}_instances.tif"),
                lambda p: tifffile.imwrite(p, instances.astype(np.int32)),
            )
        )
    overlay = image.copy()
    overlay[find_boundaries(instances, mode="inner")] = (0, 255, 0)
    overlay_image = Image.fromarray(overlay)
    paths.append(
        write_atomic(Path(f"{out}_overlay.png"), lambda p: overlay_image.save(p, format="PNG"))
    )
    paths.append(
        write_atomic(Path(f"{out}_nuclei.csv"), lambda p: _write_csv(instances, prob, p, mpp))
    )
    if save_probability:

        def save_npy(p: Path) -> None:
            with p.open("wb") as handle:
                np.save(handle, maps.astype(np.float32))

        paths.append(write_atomic(Path(f"{out}_probability.npy"), save_npy))
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
    device: str = "cpu",
    save_probability: bool = False,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    normalize: Callable[[np.ndarray], np.ndarray] | None = None,
    mpp: float | None = None,
    stems: dict[Path, Path] | None = None,
) -> PredictionReport:
    """Predict every input; a file that fails (unreadable, too large, out of memory) is
    reported and skipped, the rest go on. Nothing is written where inputs live, and no
    earlier output is replaced without ``overwrite``. ``mpp`` is the inputs' µm per pixel (for
    the CSV's areas in µm²). ``normalize`` (the checkpoint's stain normalisation) is applied
    to each whole image before tiling; overlays show the input. ``stems``: each input's
    output prefix (default :func:`output_stems` of ``inputs``; a part of a larger set passes
    the set's, so its outputs land where the whole set's would)."""
    stems = {p: stems[p] for p in inputs} if stems else output_stems(inputs, out_dir)
    check_outputs(stems, overwrite)
    report = PredictionReport()
    for path in tqdm(inputs, desc="predicting", unit="image"):
        try:
            image = read_rgb_image(path, max_pixels)
            model_input = normalize(image) if normalize is not None else image
            prob = predict_tiled(
                predict, model_input, tile=tile, overlap=overlap, batch_size=batch_size,
                blend=blend, device=device,
            )  # fmt: skip
            instances = instances_from_probability(prob, settings)
            report.written += save_outputs(
                stems[path], image, prob, instances, settings.threshold, save_probability, mpp
            )
        except (DatasetError, MemoryError, RuntimeError, OSError) as err:
            message = f"{type(err).__name__}: {err}".strip()
            log.error("failed: '%s': %s", path, message)
            report.failed.append((path, message))
    return report


def predict_image_files(
    predict: Predictor,
    module,
    images: list[Path],
    out_dir: Path,
    settings: InstanceSettings | None,
    input_mpp: float | None,
    precision: str,
    **options,
) -> PredictionReport:
    """:func:`predict_files` for flat images, each at ``input_mpp`` or, unset, at the µm per
    pixel its file states (``nucleiseg.data.pixel_size``; else the model's, with a warning),
    resampled to ``module``'s and back; one output layout for them all. ``settings``: the
    post-processing in model pixels (None: the checkpoint's). The exported model
    (``precision`` onnx) cannot resample its input: it is resampled around it."""
    from nucleiseg.data.pixel_size import pixel_size_groups
    from nucleiseg.inference.loading import apply_input_mpp
    from nucleiseg.inference.tiling import at_input_grid

    report, stems = PredictionReport(), output_stems(images, out_dir)
    check_outputs(stems, options.get("overwrite", False))  # all of them, before any is written
    for stated, group in pixel_size_groups(images, input_mpp).items():
        mpp = apply_input_mpp(module, stated)  # None: the model's, with a warning
        factor = module.input_pixels_per_model_pixel if precision == "onnx" else 1.0
        part = predict_files(
            at_input_grid(predict, factor), group, out_dir, module.input_settings(settings),
            normalize=module.stain_normalizer, mpp=mpp, stems=stems, **options,
        )  # fmt: skip
        report.written += part.written
        report.failed += part.failed
    return report
