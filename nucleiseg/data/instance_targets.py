"""Instance-aware training targets drawn from an instance map: what separates touching nuclei.

Channel names (``output_kind.channels``, conf/output_kind/; checked by
:mod:`nucleiseg.channels.names`):

- ``nucleus``: nuclear pixels (the paper's binary target);
- ``contour``: each nucleus's boundary pixels (scikit-image ``find_boundaries``, ``inner``
  mode: the outermost ring of every nucleus, so two touching nuclei are separated by two
  rings), as DCAN's contour channel; ``contour_width`` rings deep (``output_kind.contour_width``,
  default 1: the outermost ring only);
- ``distance``: each pixel's Euclidean distance to the nearest pixel outside its own nucleus
  (scipy), divided by that nucleus's largest, so every nucleus peaks at 1 in its centre and
  touching nuclei meet in a valley (Naylor et al. 2019 regress such a map);
- ``horizontal`` and ``vertical`` (always together): each nuclear pixel's horizontal and
  vertical offset from its nucleus's centre of mass, divided by the nucleus's largest on that
  side (-1 .. 1; MONAI's ``ComputeHoVerMaps``), as HoVer-Net's HV maps; stored as
  ``(offset + 1) / 2`` so that every channel, like the others, is a sigmoid's 0 .. 1 (0.5:
  the centre and the background). Where two nuclei touch the maps jump from one side to the
  other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.transforms import ComputeHoVerMaps
from scipy import ndimage
from skimage.segmentation import find_boundaries

from nucleiseg.channels.names import OFFSET_CHANNELS, encode_offsets


def checked_contour_width(width: int | None) -> int:
    """``output_kind.contour_width`` in pixels: None (as runs begun before the key read it)
    is 1; under 1 is refused."""
    width = 1 if width is None else width
    if width < 1:
        raise ValueError(f"output_kind.contour_width must be >= 1 pixel, got {width}")
    return width


def contour_map(instances: np.ndarray, width: int = 1) -> np.ndarray:
    """1 on each nucleus's boundary band, ``width`` pixels deep (inside the nucleus, so
    touching nuclei keep theirs apart), 0 elsewhere."""
    width = checked_contour_width(width)
    remaining = np.asarray(instances)
    contour = np.zeros(remaining.shape, bool)
    for _ in range(width):  # peel one ring of every nucleus at a time
        ring = find_boundaries(remaining, connectivity=1, mode="inner") & (remaining > 0)
        contour |= ring
        remaining = np.where(ring, 0, remaining)
    return contour.astype(np.float32)


def distance_map(instances: np.ndarray) -> np.ndarray:
    """Distance to the nucleus's own border, divided by its maximum: 0 outside, 1 at each
    nucleus's centre."""
    instances = np.asarray(instances)
    if not instances.any():
        return np.zeros(instances.shape, np.float32)
    # pixels bordering another nucleus count as outside, so distances do not leak across
    inside = (instances > 0) & ~find_boundaries(instances, connectivity=1, mode="inner")
    distance = ndimage.distance_transform_edt(inside) + (instances > 0)
    ids = np.unique(instances[instances > 0])
    peaks = np.zeros(int(instances.max()) + 1, np.float64)
    peaks[ids] = ndimage.maximum(distance, instances, ids)
    normalised = np.zeros(instances.shape, np.float32)
    foreground = instances > 0
    normalised[foreground] = distance[foreground] / peaks[instances[foreground]]
    return normalised


def hover_maps(instances: np.ndarray) -> np.ndarray:
    """(2, H, W) horizontal and vertical offsets from each nucleus's centre of mass, each
    divided by the nucleus's largest on that side (-1 .. 1, 0 outside nuclei): MONAI's
    ``ComputeHoVerMaps``, as HoVer-Net's targets."""
    labels = np.asarray(instances).astype(np.int32)[None]
    return np.asarray(ComputeHoVerMaps(dtype="float32")(labels), np.float32)


def encoded_hover_maps(instances: np.ndarray) -> np.ndarray:
    """:func:`hover_maps` as stored and predicted (a sigmoid's 0 .. 1)."""
    return encode_offsets(hover_maps(instances))


def instance_targets(
    instances: np.ndarray, channels: Sequence[str], contour_width: int = 1
) -> np.ndarray:
    """(C, H, W) float32 targets of ``channels`` for one instance map (H, W)."""
    makers = {
        "nucleus": lambda labels: (labels > 0).astype(np.float32),
        "contour": lambda labels: contour_map(labels, contour_width),
        "distance": distance_map,
    }
    if OFFSET_CHANNELS[0] in channels:
        hover = encoded_hover_maps(instances)
        for axis, name in enumerate(OFFSET_CHANNELS):
            makers[name] = lambda _, axis=axis: hover[axis]
    return np.stack([makers[name](instances) for name in channels])
