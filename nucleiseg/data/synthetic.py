"""A procedurally generated, H&E-like nuclei dataset with exact instance masks.

Each tile has a pink eosin background with fibrous texture, hematoxylin-blue nuclei of
varied size, shape and stain intensity (some touching or overlapping in clusters, some
faint and easy to miss), then optical blur and sensor noise. Tiles are deterministic per
(seed, split, index), so every run and every worker sees the same data.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import ellipse

from nucleiseg.data.samples import SplitSamples

SPLIT_OFFSETS = {"train": 0, "val": 1_000_003, "test": 2_000_029}

EOSIN = np.array([0.93, 0.62, 0.78])  # RGB of the pink stroma/cytoplasm stain
HEMATOXYLIN = np.array([0.28, 0.20, 0.55])  # RGB of a strongly stained nucleus


def _place_nucleus(
    rng: np.random.Generator, centre: tuple[float, float], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    radius = rng.uniform(3.5, 9.0)
    elongation = rng.uniform(0.6, 1.0)
    rr, cc = ellipse(
        centre[0],
        centre[1],
        radius,
        radius * elongation,
        shape=shape,
        rotation=rng.uniform(0, np.pi),
    )
    return rr, cc


def generate_tile(
    rng: np.random.Generator, size: int = 128, density: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 tile (size, size, 3) and its int32 instance map (0 = background)."""
    shape = (size, size)
    texture = ndimage.gaussian_filter(rng.normal(size=shape), sigma=rng.uniform(1.5, 4.0))
    texture = (texture - texture.mean()) / (texture.std() + 1e-8)
    image = EOSIN[None, None, :] * (1.0 + 0.06 * texture[..., None])
    image += rng.normal(0, 0.02, size=3)  # stain variation between tiles

    instances = np.zeros(shape, dtype=np.int32)
    stain = np.zeros(shape, dtype=np.float64)
    count = rng.poisson(density * size * size / 550)
    centres: list[tuple[float, float]] = []
    for _ in range(count):
        if centres and rng.random() < 0.35:  # grow a cluster: touching/overlapping nuclei
            cy, cx = centres[rng.integers(len(centres))]
            angle = rng.uniform(0, 2 * np.pi)
            dist = rng.uniform(6, 12)
            centre = (cy + dist * np.sin(angle), cx + dist * np.cos(angle))
        else:
            centre = (rng.uniform(0, size), rng.uniform(0, size))
        centres.append(centre)
        rr, cc = _place_nucleus(rng, centre, shape)
        if rr.size == 0:
            continue
        faint = rng.random() < 0.15
        intensity = rng.uniform(0.25, 0.45) if faint else rng.uniform(0.7, 1.0)
        instances[rr, cc] = instances.max() + 1  # later nuclei lie on top of earlier ones
        chromatin = 0.85 + 0.15 * rng.random(rr.size)
        stain[rr, cc] = intensity * chromatin

    stain = ndimage.gaussian_filter(stain, sigma=0.8)
    image = image * (1 - stain[..., None]) + HEMATOXYLIN[None, None, :] * stain[..., None]
    image = ndimage.gaussian_filter(image, sigma=(rng.uniform(0.3, 1.0),) * 2 + (0,))
    image += rng.normal(0, 0.025, size=image.shape)
    rgb = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    _, relabelled = np.unique(instances, return_inverse=True)  # ids 1..K, no gaps
    return rgb, relabelled.reshape(shape).astype(np.int32)


class SyntheticNuclei:
    """The embedded default dataset: ``split(name)`` returns that split's samples."""

    def __init__(
        self,
        num_train: int = 64,
        num_val: int = 16,
        num_test: int = 16,
        size: int = 128,
        density: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.size = size
        self.density = density
        self.seed = seed

    def split(self, name: str) -> SplitSamples:
        if name not in self.counts:
            raise KeyError(f"unknown split '{name}'; expected one of {sorted(self.counts)}")
        images, instances, names = [], [], []
        for i in range(self.counts[name]):
            rng = np.random.default_rng([self.seed, SPLIT_OFFSETS[name] + i])
            image, inst = generate_tile(rng, self.size, self.density)
            images.append(image)
            instances.append(inst)
            names.append(f"synthetic_{name}_{i:04d}")
        return SplitSamples(images=images, instances=instances, names=names)
