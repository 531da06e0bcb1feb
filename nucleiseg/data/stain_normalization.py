"""Macenko stain normalisation (torchstain), fitted once to a reference image.

Training fits the normaliser to ``stain_normalization.reference`` (an RGB image file) or,
when that is null, to the first image of the training split, and writes the fitted stain
matrix into the model config every checkpoint carries: ``evaluate``, ``tune_postprocess`` and
``predict`` rebuild the same normaliser from the checkpoint alone and apply it to each whole
image (before tiling), as training did.

Config (``+stain_normalization=macenko``)::

    stain_normalization:
      method: macenko
      reference: null          # RGB image file; null: the training split's first image
      Io: 240                  # transmitted light intensity
      alpha: 1.0               # percentile for the robust stain extremes
      beta: 0.15               # optical-density threshold below which pixels are background
      stain_matrix: null       # fitted: 3x2 H and E optical-density vectors
      max_concentrations: null # fitted: 99th-percentile H and E concentrations
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)
METHODS = ("macenko",)
#: fewer tissue pixels than this and an image's own stains cannot be estimated
MIN_TISSUE_PIXELS = 100


def _torch_macenko():
    try:
        from torchstain.torch.normalizers import TorchMacenkoNormalizer
    except ImportError as err:  # a declared dependency; a clear message if it is missing
        raise ImportError(
            "stain_normalization needs torchstain: pip install torchstain (or make install)"
        ) from err
    return TorchMacenkoNormalizer()


def _as_chw_tensor(image: np.ndarray) -> torch.Tensor:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"stain normalisation takes an RGB uint8 image (H, W, 3), got {image.dtype} "
            f"{tuple(image.shape)}"
        )
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def stained_fraction(image: np.ndarray, Io: float = 240.0, beta: float = 0.15) -> np.ndarray:
    """Per pixel (H, W): whether its optical density passes ``beta`` in every channel
    (Macenko's tissue)."""
    od = -np.log((image[..., :3].astype(np.float64) + 1) / Io)
    return np.all(od >= beta, axis=-1)


def tissue_pixels(image: np.ndarray, Io: float, beta: float) -> int:
    """How many pixels :func:`stained_fraction` calls tissue."""
    return int(stained_fraction(image, Io, beta).sum())


@dataclass(frozen=True)
class MacenkoNormalizer:
    """Maps an H&E image's stains onto a reference's (Macenko et al., ISBI 2009)."""

    stain_matrix: tuple[tuple[float, float], ...]
    max_concentrations: tuple[float, float]
    Io: float = 240.0
    alpha: float = 1.0
    beta: float = 0.15

    @classmethod
    def fit(
        cls, image: np.ndarray, Io: float = 240.0, alpha: float = 1.0, beta: float = 0.15
    ) -> MacenkoNormalizer:
        found = tissue_pixels(image, Io, beta)
        if found < MIN_TISSUE_PIXELS:
            raise ValueError(
                f"the stain-normalisation reference has {found} stained pixels (optical "
                f"density >= {beta}); choose a reference image with tissue in it"
            )
        engine = _torch_macenko()
        engine.fit(_as_chw_tensor(image), Io=Io, alpha=alpha, beta=beta)
        matrix = tuple(tuple(float(v) for v in row) for row in engine.HERef.tolist())
        max_c = tuple(float(v) for v in engine.maxCRef.tolist())
        return cls(matrix, max_c, float(Io), float(alpha), float(beta))  # type: ignore[arg-type]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The image with the reference's stains (uint8 RGB in, uint8 RGB out).

        An image with too little tissue to estimate its own stains (blank background) is
        returned unchanged.
        """
        chw = _as_chw_tensor(image)
        if tissue_pixels(image, self.Io, self.beta) < MIN_TISSUE_PIXELS:
            return image
        engine = _torch_macenko()
        engine.HERef = torch.tensor(self.stain_matrix, dtype=torch.float32)
        engine.maxCRef = torch.tensor(self.max_concentrations, dtype=torch.float32)
        normalized, _, _ = engine.normalize(
            chw, Io=self.Io, alpha=self.alpha, beta=self.beta, stains=False
        )
        return normalized.clamp(0, 255).to(torch.uint8).numpy()

    def to_config(self) -> dict[str, Any]:
        """The config section that rebuilds this normaliser (``from_config``)."""
        values = asdict(self)
        values["stain_matrix"] = [list(row) for row in self.stain_matrix]
        values["max_concentrations"] = list(self.max_concentrations)
        return {"method": "macenko", "reference": None, **values}


def _fit_settings(config: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(config.get(k, default)) for k, default in
            (("Io", 240.0), ("alpha", 1.0), ("beta", 0.15))}  # fmt: skip


def _check_method(config: Mapping[str, Any]) -> None:
    method = config.get("method", "macenko")
    if method not in METHODS:
        raise ValueError(
            f"stain_normalization.method is '{method}'; supported: {', '.join(METHODS)}"
        )


def is_fitted(config: Mapping[str, Any] | None) -> bool:
    return bool(config) and config.get("stain_matrix") is not None


def normalizer_from_config(config: Mapping[str, Any] | None) -> MacenkoNormalizer | None:
    """The fitted normaliser a (checkpoint's) config describes; None when it has none."""
    if not config:
        return None
    _check_method(config)
    if not is_fitted(config):
        raise ValueError(
            "stain_normalization has no fitted stain_matrix: it is fitted when training "
            "starts (to stain_normalization.reference or the first training image)"
        )
    matrix = np.asarray(config["stain_matrix"], dtype=float)
    max_c = np.asarray(config.get("max_concentrations"), dtype=float)
    if matrix.shape != (3, 2) or max_c.shape != (2,) or not np.isfinite(matrix).all():
        raise ValueError(
            "stain_normalization.stain_matrix must be 3x2 and max_concentrations 2 finite "
            f"numbers; got shapes {matrix.shape} and {max_c.shape}"
        )
    return MacenkoNormalizer(
        tuple(tuple(row) for row in matrix.tolist()),  # type: ignore[arg-type]
        tuple(max_c.tolist()),  # type: ignore[arg-type]
        **_fit_settings(config),
    )


def fit_normalizer(
    config: Mapping[str, Any], first_training_image: Callable[[], np.ndarray]
) -> MacenkoNormalizer:
    """Fit to ``config['reference']`` (an image file) or, if null, the first training image."""
    _check_method(config)
    reference = config.get("reference")
    if reference:
        from nucleiseg.data.io import read_rgb_image

        path = Path(str(reference))
        if not path.is_file():
            raise FileNotFoundError(
                f"stain_normalization.reference '{path}' is not a file; give an RGB image "
                "of well-stained tissue, or null for the first training image"
            )
        image = read_rgb_image(path)
    else:
        image = first_training_image()
    return MacenkoNormalizer.fit(np.asarray(image), **_fit_settings(config))


class NormalizedImages(Sequence):
    """A split's images, each normalised once on first use (whole images, before crops)."""

    def __init__(self, images: Sequence[np.ndarray], normalize: Callable[[np.ndarray], Any]):
        self.images, self.normalize = images, normalize
        self._done: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        index = int(index)
        if index not in self._done:
            self._done[index] = self.normalize(np.asarray(self.images[index]))
        return self._done[index]
