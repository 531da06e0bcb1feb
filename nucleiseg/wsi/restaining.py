"""Labelled images re-stained as another lab's slide: how a model would fare on that lab's
stain, before anyone annotates it.

``evaluate restain_like=<slide or image>`` fits Macenko's stain vectors and concentration
range (torchstain, as :mod:`nucleiseg.data.stain_normalization`) to the densest tissue of an
unlabelled slide or image of the target lab, and gives every scored image those stains:
each image keeps its own haematoxylin and eosin amounts, drawn in the target's colours
(Macenko et al., ISBI 2009, used here as stain transfer). It changes colour only: the
target's scanner blur, section thickness and tissue are not simulated, so the figures say
how much of a lab's difference is its stain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.data.io import DatasetError, read_rgb_image
from nucleiseg.data.stain_normalization import MacenkoNormalizer, stained_fraction

#: side (level-0 pixels) of the tissue window of a slide the stains are fitted to
REFERENCE_SIDE = 1024
#: longest side of the slide overview the densest window is looked for in
OVERVIEW_SIDE = 2048


def densest_window(overview: np.ndarray, side: int) -> tuple[int, int]:
    """(top, left) of the ``side`` x ``side`` window of ``overview`` with the most stained
    pixels (the whole overview when it is smaller)."""
    from scipy.ndimage import uniform_filter

    stained = stained_fraction(overview).astype(np.float32)
    height, width = stained.shape
    side_y, side_x = min(side, height), min(side, width)
    density = uniform_filter(stained, size=(side_y, side_x), mode="constant")
    # the filter centres its window: keep centres whose window lies inside the overview
    valid = density[
        side_y // 2 : height - (side_y - 1) // 2, side_x // 2 : width - (side_x - 1) // 2
    ]
    top, left = np.unravel_index(int(np.argmax(valid)), valid.shape)
    return int(top), int(left)


def slide_reference(path: Path) -> np.ndarray:
    """The ``REFERENCE_SIDE`` px window of a whole slide's level 0 with the most tissue."""
    from nucleiseg.wsi.slide import open_slide

    handle = open_slide(path)
    try:
        width, height = handle.dimensions
        overview = np.asarray(handle.get_thumbnail((OVERVIEW_SIDE, OVERVIEW_SIDE)).convert("RGB"))
        scale = width / overview.shape[1]  # level-0 pixels per overview pixel
        top, left = densest_window(overview, max(1, round(REFERENCE_SIDE / scale)))
        x = min(round(left * scale), max(0, width - REFERENCE_SIDE))
        y = min(round(top * scale), max(0, height - REFERENCE_SIDE))
        size = (min(REFERENCE_SIDE, width), min(REFERENCE_SIDE, height))
        region = handle.read_region((x, y), 0, size)
        return np.asarray(region.convert("RGB"))
    finally:
        handle.close()


def reference_image(path: str | Path) -> np.ndarray:
    """The RGB tissue a lab's stains are fitted to: a flat image whole, or a slide's densest
    window (:func:`slide_reference`)."""
    from nucleiseg.wsi.slide import is_slide

    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"restain_like '{path}' does not exist; give an unlabelled image or whole slide "
            "of the lab whose stain to score under"
        )
    return slide_reference(path) if is_slide(path) else read_rgb_image(path)


def restainer(path: str | Path) -> MacenkoNormalizer:
    """Macenko stain transfer onto the stains of the image or slide at ``path``."""
    image = reference_image(path)
    try:  # the fit's own error counts the stained pixels of the region read
        return MacenkoNormalizer.fit(image)
    except ValueError as err:
        raise DatasetError(f"restain_like '{path}': cannot fit its stains: {err}") from err


@dataclass(frozen=True)
class Chained:
    """``then(first(image))``: a re-staining followed by the model's own normalisation."""

    first: Callable[[np.ndarray], np.ndarray]
    then: Callable[[np.ndarray], np.ndarray] | None = None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = self.first(image)
        return image if self.then is None else self.then(image)


def restain_datamodule(
    datamodule: Any,
    own: Callable[[np.ndarray], np.ndarray] | None,
    target: str | Path | None,
) -> dict[str, Any] | None:
    """Give ``datamodule``'s images the stains of ``target`` (a slide or image), then the
    model's ``own`` stain normalisation if it has one; what was fitted (for results.json),
    or None without a target."""
    if not target:
        return None
    fitted = restainer(target)
    datamodule.set_stain_normalizer(Chained(fitted, own))
    values = fitted.to_config()
    return {"path": str(Path(target).resolve()), "stain_matrix": values["stain_matrix"],
            "max_concentrations": values["max_concentrations"]}  # fmt: skip
