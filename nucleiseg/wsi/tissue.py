"""Where the tissue is: a mask from a low-resolution thumbnail, so glass is never predicted.

Otsu's threshold on the saturation of the thumbnail (H&E tissue is coloured, glass and
background grey or white), then small holes closed and specks removed (scikit-image). A
user's own mask (``tissue_mask=<png>``, any size: non-zero is tissue) replaces it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nucleiseg.data.io import DatasetError

#: the thumbnail's pixel size for the tissue mask (µm)
TISSUE_MPP = 8.0


def tissue_from_thumbnail(thumbnail: np.ndarray, min_area_um2: float = 20_000.0) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail at ``TISSUE_MPP`` µm per pixel."""
    from scipy.ndimage import binary_dilation
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk, remove_small_holes, remove_small_objects

    saturation = rgb2hsv(thumbnail[..., :3])[..., 1]
    if float(saturation.max() - saturation.min()) < 0.02:  # a flat image: all or nothing
        return np.full(saturation.shape, bool(saturation.mean() > 0.1))
    mask = saturation > threshold_otsu(saturation)
    area_px = max(1, round(min_area_um2 / TISSUE_MPP**2))
    mask = remove_small_holes(mask, max_size=area_px)
    mask = remove_small_objects(mask, max_size=max(1, area_px // 4))
    return binary_dilation(mask, structure=disk(2))  # keep the nuclei at tissue edges


def read_tissue_mask(path: Path) -> np.ndarray:
    """A user-supplied tissue mask image (non-zero is tissue)."""
    from PIL import Image

    if not Path(path).is_file():
        raise DatasetError(f"tissue_mask '{path}' does not exist; give a PNG (non-zero: tissue)")
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 0


def tile_has_tissue(
    mask: np.ndarray, box: tuple[int, int, int, int], grid_size: tuple[int, int]
) -> bool:
    """Whether the model-grid box (top, left, bottom, right) covers any tissue of ``mask``
    (which spans the whole grid of ``grid_size`` at its own resolution)."""
    scale_y, scale_x = mask.shape[0] / grid_size[0], mask.shape[1] / grid_size[1]
    top, left, bottom, right = box
    y0, x0 = int(top * scale_y), int(left * scale_x)
    y1 = max(y0 + 1, int(np.ceil(bottom * scale_y)))
    x1 = max(x0 + 1, int(np.ceil(right * scale_x)))
    return bool(mask[y0:y1, x0:x1].any())
