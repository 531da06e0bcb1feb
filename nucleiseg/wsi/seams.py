"""Nuclei of one window of a tiled slide, each kept by exactly one tile.

A slide is cut into tiles; each is predicted and post-processed as a window that adds
``margin`` pixels of context on every side. A nucleus is kept by the tile whose inner part
(the window without its margins) holds its centroid, so a nucleus cut by one window's
border is taken, whole, from the neighbouring window whose inner part holds it: nothing is
counted twice at a seam or lost there, as long as the margin is wider than a nucleus's
radius (TIAToolbox and HoVer-Net use the same margin rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.measure import find_contours, regionprops


@dataclass(frozen=True)
class Box:
    """A rectangle of the model grid: rows ``top:bottom``, columns ``left:right``."""

    top: int
    left: int
    bottom: int
    right: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.top, self.left, self.bottom, self.right

    def holds(self, y: float, x: float) -> bool:
        return self.top <= y < self.bottom and self.left <= x < self.right


@dataclass
class Nucleus:
    """One nucleus in model-grid pixels: outline as (x, y) points, centroid (y, x), area,
    bounding box (min_row, min_col, max_row, max_col) and mean probability."""

    outline: list[tuple[float, float]]
    centroid: tuple[float, float]
    area: int
    bbox: tuple[int, int, int, int]
    mean_probability: float


def outline_of(region_image: np.ndarray, top: int, left: int) -> list[tuple[float, float]]:
    """The outer boundary of a binary region (its bounding-box crop at ``top, left``) as a
    closed list of (x, y) points in continuous coordinates (pixel ``i`` spans ``[i, i+1)``,
    as QuPath counts), through the midpoints of the boundary pixels' edges."""
    padded = np.pad(region_image.astype(np.float32), 1)
    contours = find_contours(padded, 0.5)
    contour = max(contours, key=len)  # the outer boundary (holes are filled before)
    # padded index i is pixel i - 1, whose centre is at i - 0.5
    points = [(float(c + left - 0.5), float(r + top - 0.5)) for r, c in contour]
    if points[0] != points[-1]:
        points.append(points[0])
    return points


def owned_nuclei(
    instances: np.ndarray, prob: np.ndarray, origin: tuple[int, int], inner: Box
) -> list[Nucleus]:
    """The nuclei of a window (its instance map and probability, placed at ``origin`` =
    (top, left) on the model grid) whose centroid lies in ``inner``, sorted by position."""
    kept = []
    top0, left0 = origin
    for region in regionprops(instances, intensity_image=prob.astype(np.float32)):
        cy, cx = region.centroid
        y, x = cy + top0, cx + left0
        if not inner.holds(y, x):
            continue
        r0, c0, r1, c1 = region.bbox
        kept.append(
            Nucleus(
                outline=outline_of(region.image, r0 + top0, c0 + left0),
                centroid=(float(y), float(x)),
                area=int(region.area),
                bbox=(r0 + top0, c0 + left0, r1 + top0, c1 + left0),
                mean_probability=float(region.intensity_mean),
            )
        )
    return sorted(kept, key=lambda n: (n.bbox[0], n.bbox[1], n.centroid))


def tile_grid(size: tuple[int, int], tile: int, margin: int) -> list[list[tuple[Box, Box]]]:
    """Rows of (window, inner part) boxes covering a grid of ``size`` (height, width):
    inner parts of ``tile - 2 * margin`` pixels tile the grid exactly, windows add the
    margin on each side (clipped at the grid's edges)."""
    step = tile - 2 * margin
    if step <= 0:
        raise ValueError(
            f"tiling.tile={tile} leaves nothing inside two margins of tiling.overlap={margin}; "
            "use a tile larger than twice the overlap"
        )
    height, width = size
    rows = []
    for top in range(0, height, step):
        row = []
        for left in range(0, width, step):
            inner = Box(top, left, min(top + step, height), min(left + step, width))
            window = Box(
                max(0, top - margin), max(0, left - margin),
                min(height, inner.bottom + margin), min(width, inner.right + margin),
            )  # fmt: skip
            row.append((window, inner))
        rows.append(row)
    return rows
