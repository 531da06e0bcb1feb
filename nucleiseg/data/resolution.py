"""Pixel sizes: resample a dataset's images and label maps from its µm per pixel to a model's.

Images are resampled with scikit-image (bilinear, with Gaussian anti-aliasing when they
shrink), label maps (instances, types) with nearest neighbour, so every instance id is
kept. A split is resampled once, when it is loaded; crops are then cut at the model's
resolution.
"""

from __future__ import annotations

import logging

import numpy as np
from skimage.transform import resize

from nucleiseg.data.io import DatasetError
from nucleiseg.data.samples import SplitSamples

log = logging.getLogger(__name__)
#: relative pixel-size differences below this are taken as equal (no resampling)
SAME_SIZE_TOLERANCE = 1e-3


def resample_factor(source_mpp: float | None, target_mpp: float | None) -> float:
    """How many target pixels one source pixel becomes (> 1: the data grows).

    1.0 when either size is unknown or they agree within ``SAME_SIZE_TOLERANCE``."""
    if source_mpp is None or target_mpp is None:
        return 1.0
    for name, value in (("source", source_mpp), ("target", target_mpp)):
        if not value > 0:
            raise DatasetError(
                f"the {name} pixel size must be a positive µm per pixel, got {value}"
            )
    factor = float(source_mpp) / float(target_mpp)
    return 1.0 if abs(factor - 1.0) < SAME_SIZE_TOLERANCE else factor


def resampled_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def resample_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 image resampled to ``shape`` (bilinear; anti-aliased when shrinking)."""
    image = np.asarray(image)
    if tuple(image.shape[:2]) == tuple(shape):
        return image
    shrinks = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    out = resize(image, (*shape, *image.shape[2:]), order=1, mode="reflect",
                 anti_aliasing=shrinks, preserve_range=True)  # fmt: skip
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A label map (instances or types) resampled to ``shape`` by nearest neighbour: the ids
    are kept (a nucleus smaller than a target pixel can vanish when shrinking)."""
    labels = np.asarray(labels)
    if tuple(labels.shape[:2]) == tuple(shape):
        return labels
    out = resize(labels, shape, order=0, mode="edge", anti_aliasing=False, preserve_range=True)
    return out.astype(labels.dtype)


def resample_split(samples: SplitSamples, factor: float) -> SplitSamples:
    """Every image and label map of a split resampled by ``factor`` (once, in memory)."""
    if factor == 1.0:
        return samples
    images, instances, types = [], [], []
    for index in range(len(samples)):
        shape = resampled_shape(np.shape(samples.images[index]), factor)
        images.append(resample_image(samples.images[index], shape))
        instances.append(resample_labels(samples.instances[index], shape))
        if samples.types is not None:
            types.append(resample_labels(samples.types[index], shape))
    return SplitSamples(images, instances, list(samples.names),
                        types if samples.types is not None else None,
                        samples.true_instances)  # fmt: skip
