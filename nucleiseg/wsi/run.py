"""Predict nuclei on a whole slide: tissue tiles only, row by row, resumable, bounded memory.

The slide is read on the model grid (``SlideReader``); tiles of ``tile`` pixels with
``margin`` pixels of context on each side go through the network ``batch_size`` at a time,
each window is post-processed on its own and keeps the nuclei whose centroid lies in its
inner part (``nucleiseg.wsi.seams``). Only one row of windows is in memory at a time, and
each finished row is appended to the slide's outputs (``nucleiseg.wsi.outputs``), so a run
that stops continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from nucleiseg.files.atomic import write_atomic
from nucleiseg.postprocessing.watershed import (
    InstanceSettings,
    instances_from_probability,
    nucleus_probability,
)
from nucleiseg.wsi.outputs import SlideOutputs
from nucleiseg.wsi.seams import owned_nuclei, tile_grid
from nucleiseg.wsi.slide import SlideReader
from nucleiseg.wsi.tissue import (
    TISSUE_MPP,
    read_tissue_mask,
    tile_has_tissue,
    tissue_from_thumbnail,
)

log = logging.getLogger(__name__)
Predictor = Callable[[torch.Tensor], torch.Tensor]  # (N, 3, h, w) in 0..1 -> (N, 1, h, w)


@dataclass
class SlideResult:
    slide: Path
    nuclei: int
    tissue_tiles: int
    tiles: int
    tissue_megapixels: float
    seconds: float
    outputs: list[Path]

    @property
    def megapixels_per_second(self) -> float:
        return self.tissue_megapixels / self.seconds if self.seconds else float("nan")


def _save_png(path: Path, array: np.ndarray) -> Path:
    image = Image.fromarray(array)
    return write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def _predict_windows(predict: Predictor, windows: list[np.ndarray]) -> list[np.ndarray]:
    """Probabilities of windows, batched by shape (edge windows are smaller)."""
    out: list[np.ndarray | None] = [None] * len(windows)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, window in enumerate(windows):
        by_shape.setdefault(window.shape, []).append(index)
    with torch.no_grad():
        for indices in by_shape.values():
            batch = torch.from_numpy(np.stack([windows[i] for i in indices]))
            batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
            probs = predict(batch).float().cpu().numpy()  # (N, C, h, w)
            for i, prob in zip(indices, probs, strict=True):
                out[i] = prob[0] if len(prob) == 1 else prob
    return out  # type: ignore[return-value]


def draw_overlay(thumbnail: np.ndarray, outputs: SlideOutputs, scale: float) -> np.ndarray:
    """The thumbnail with every nucleus outlined (``scale``: thumbnail px per slide px)."""
    from skimage.draw import polygon_perimeter

    overlay = thumbnail.copy()
    for feature in outputs.features():
        ring = np.asarray(feature["geometry"]["coordinates"][0]) * scale
        rr, cc = polygon_perimeter(ring[:, 1], ring[:, 0], shape=overlay.shape[:2])
        overlay[rr, cc] = (0, 200, 0)
    return overlay


def predict_slide(
    reader: SlideReader,
    predict: Predictor,
    settings: InstanceSettings,
    stem: Path,
    run_settings: dict,
    tile: int = 1024,
    margin: int = 64,
    batch_size: int = 1,
    tissue_mask: Path | None = None,
    overwrite: bool = False,
    gz: bool = False,
    overlay_mpp: float = 4.0,
    normalize: Callable[[np.ndarray], np.ndarray] | None = None,
    stop_after_rows: int | None = None,
) -> SlideResult:
    """Nuclei of one slide written to ``<stem>.geojson`` and ``<stem>_nuclei.csv``, with
    ``<stem>_tissue.png`` and ``<stem>_overlay.png``. ``run_settings`` (checkpoint, tiling,
    post-processing) must match for an unfinished run to be continued. ``normalize`` (the
    checkpoint's stain normalisation) is applied to every window before the network.
    ``stop_after_rows`` ends the run early, unfinished (to test resuming)."""
    fingerprint = {**run_settings, "tile": tile, "margin": margin,
                   "tissue_mask": str(tissue_mask) if tissue_mask else None}  # fmt: skip
    outputs = SlideOutputs(stem, fingerprint, overwrite=overwrite, gz=gz)
    start_row = outputs.start()
    if tissue_mask is not None:
        tissue = read_tissue_mask(tissue_mask)
    else:
        tissue = tissue_from_thumbnail(reader.thumbnail(TISSUE_MPP))
    grid = tile_grid(reader.size, tile, margin)

    def has_tissue(inner) -> bool:
        return tile_has_tissue(tissue, inner.as_tuple(), reader.size)

    todo = [[(window, inner) for window, inner in row if has_tissue(inner)] for row in grid]
    tissue_tiles = sum(len(row) for row in todo)
    remaining = sum(len(row) for row in todo[start_row:])
    if start_row:
        log.info("'%s': continuing at tile row %d of %d", reader.path, start_row + 1, len(grid))
    started = time.perf_counter()
    megapixels = 0.0
    progress = tqdm(total=remaining, desc=reader.path.name, unit="tile")

    def read(chunk) -> list[np.ndarray]:
        windows = [reader.read(w.top, w.left, w.bottom - w.top, w.right - w.left)
                   for w, _ in chunk]  # fmt: skip
        return [normalize(w) for w in windows] if normalize is not None else windows

    step = max(1, batch_size)
    last_row = len(grid) if stop_after_rows is None else min(len(grid), start_row + stop_after_rows)
    work = [(r, todo[r][i : i + step]) for r in range(start_row, last_row)
            for i in range(0, len(todo[r]), step)]  # fmt: skip
    nuclei: dict[int, list] = {r: [] for r in range(start_row, last_row)}
    # the next windows are read (decoded, resampled) while the network runs on these
    with ThreadPoolExecutor(max_workers=1) as prefetch:
        pending = prefetch.submit(read, work[0][1]) if work else None
        for index, (row_index, chunk) in enumerate(work):
            windows = pending.result()
            if index + 1 < len(work):
                pending = prefetch.submit(read, work[index + 1][1])
            for (window, inner), prob in zip(chunk, _predict_windows(predict, windows),
                                             strict=True):  # fmt: skip
                instances = instances_from_probability(prob, settings)
                nuclei[row_index] += owned_nuclei(instances, nucleus_probability(prob),
                                                  (window.top, window.left),
                                                  inner)  # fmt: skip
                megapixels += (inner.bottom - inner.top) * (inner.right - inner.left) / 1e6
            progress.update(len(chunk))
            elapsed = time.perf_counter() - started
            progress.set_postfix(MPps=f"{megapixels / elapsed:.2f}" if elapsed else "-")
            row_done = index + 1 == len(work) or work[index + 1][0] != row_index
            if row_done:  # rows without tissue are written (empty) before the next one
                for row in range(min(nuclei), row_index + 1):
                    outputs.add_row(nuclei.pop(row), reader.level0_per_model, reader.mpp,
                                    reader.handle.dimensions)  # fmt: skip
        for row in sorted(nuclei):  # trailing rows without tissue
            outputs.add_row(nuclei.pop(row), reader.level0_per_model, reader.mpp,
                            reader.handle.dimensions)  # fmt: skip
    if stop_after_rows is not None and last_row < len(grid):
        progress.close()
        return SlideResult(reader.path, outputs.next_id - 1, tissue_tiles,
                           sum(map(len, grid)), megapixels, 0.0, [])  # fmt: skip
    progress.close()
    seconds = time.perf_counter() - started
    thumbnail = reader.thumbnail(overlay_mpp)
    overlay = draw_overlay(thumbnail, outputs, thumbnail.shape[1] / reader.handle.dimensions[0])
    count = outputs.next_id - 1
    written = outputs.finish()
    written.append(_save_png(outputs.tissue, (tissue * 255).astype(np.uint8)))
    written.append(_save_png(outputs.overlay, overlay))
    return SlideResult(reader.path, count, tissue_tiles, sum(map(len, grid)), megapixels,
                       seconds, written)  # fmt: skip
