"""Whole-slide images read at a model's resolution: the pixel size, the pyramid level, regions.

Slides are read with tiffslide (tifffile + imagecodecs: Aperio SVS with JPEG or JPEG 2000
tiles, pyramidal/OME-TIFF, Hamamatsu NDPI); formats it cannot open (MIRAX, VMS, ...) fall
back to OpenSlide (``openslide-python`` + ``openslide-bin``, when installed). The model
works on a *model grid*: the slide's level-0 plane scaled to the model's µm per pixel.
Regions of it are read from the coarsest pyramid level that is at least as fine as the
model's pixel size and resampled to it (torch), so a slide is never decoded whole.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from nucleiseg.data.io import SLIDE_SUFFIXES, DatasetError
from nucleiseg.models.resampling import resample_batch

log = logging.getLogger(__name__)

#: relative difference between the slide's and ``input_mpp`` that is warned about
MPP_CONFLICT = 0.05


def is_slide(path: Path) -> bool:
    """A whole-slide format, or a TIFF with more than one pyramid level."""
    suffix = path.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tiff:
                return len(tiff.series[0].levels) > 1
        except Exception:  # unreadable: the flat-image path reports it by name
            return False
    return False


def mpp_from_properties(properties: dict[str, object]) -> float | None:
    """µm per pixel from a slide's properties: ``tiffslide.mpp-x``/``openslide.mpp-x``
    (which read Aperio's ``MPP`` and TIFF resolution tags), else Aperio's ``MPP`` itself."""
    for key in ("tiffslide.mpp-x", "openslide.mpp-x", "aperio.MPP"):
        value = properties.get(key)
        if value not in (None, ""):
            try:
                mpp = float(value)
            except (TypeError, ValueError):
                continue
            if mpp > 0:
                return mpp
    return None


def resample_rgb(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 region resampled to ``shape`` with torch (bilinear, anti-aliased when it
    shrinks): several times faster than scikit-image on the large regions a slide needs."""
    batch = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    out = resample_batch(batch, shape)[0].permute(1, 2, 0)
    return out.round_().clamp_(0, 255).to(torch.uint8).numpy()


def _checked(handle):
    """The handle, once its size, levels and metadata have been read (a truncated file
    opens lazily and fails only here)."""
    width, height = handle.dimensions
    if width < 1 or height < 1 or not handle.level_downsamples:
        raise ValueError(f"no image plane ({width}x{height}, {handle.level_count} levels)")
    dict(handle.properties)
    return handle


def open_slide(path: Path):
    """A tiffslide (or, failing that, OpenSlide) handle; a clear error when neither reads it."""
    errors = []
    try:
        import tiffslide

        return _checked(tiffslide.TiffSlide(path))
    except Exception as err:  # unsupported or corrupt: try OpenSlide, then report both
        errors.append(f"tiffslide: {type(err).__name__}: {err}")
    try:
        import openslide

        return _checked(openslide.OpenSlide(str(path)))
    except ImportError:
        errors.append("openslide: not installed (pip install openslide-python openslide-bin)")
    except Exception as err:
        errors.append(f"openslide: {type(err).__name__}: {err}")
    raise DatasetError(f"cannot open slide '{path}': " + "; ".join(errors))


class SlideReader:
    """Regions of a slide on the model grid (the slide scaled to ``model_mpp``)."""

    def __init__(self, path: Path, model_mpp: float, input_mpp: float | None = None) -> None:
        self.path = Path(path)
        self.handle = open_slide(self.path)
        stored = mpp_from_properties(dict(self.handle.properties))
        if input_mpp is None and stored is None:
            raise DatasetError(
                f"slide '{self.path}' stores no pixel size (no mpp in its metadata); pass "
                "input_mpp=<µm per pixel at level 0> (0.25 for 40x, 0.5 for 20x scans)"
            )
        conflict = input_mpp is not None and stored is not None
        if conflict and abs(input_mpp - stored) / stored > MPP_CONFLICT:
            log.warning("slide '%s' says %.4g µm per pixel, input_mpp=%.4g overrides it",
                        self.path, stored, input_mpp)  # fmt: skip
        self.mpp = float(input_mpp if input_mpp is not None else stored)
        self.model_mpp = float(model_mpp)
        self.level = choose_level(self.handle.level_downsamples, self.mpp, self.model_mpp)
        self.downsample = float(self.handle.level_downsamples[self.level])
        width, height = self.handle.dimensions
        self.model_per_level0 = self.mpp / self.model_mpp  # model pixels per level-0 pixel
        self.size = (math.ceil(height * self.model_per_level0),
                     math.ceil(width * self.model_per_level0))  # fmt: skip

    @property
    def level0_per_model(self) -> float:
        return 1.0 / self.model_per_level0

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) of the model grid from (top, left); outside the
        slide it is white (the slide's background)."""
        scale = self.level0_per_model
        x0, y0 = left * scale, top * scale
        level_scale = scale / self.downsample  # level pixels per model pixel
        x_level, y_level = math.floor(x0 / self.downsample), math.floor(y0 / self.downsample)
        w_level = max(1, math.ceil(width * level_scale) + 1)
        h_level = max(1, math.ceil(height * level_scale) + 1)
        location = (round(x_level * self.downsample), round(y_level * self.downsample))
        region = np.asarray(self.handle.read_region(location, self.level, (w_level, h_level)))
        if region.shape[-1] == 4:  # OpenSlide: RGBA, transparent outside the scanned area
            alpha = region[..., 3:4].astype(np.float32) / 255
            region = (region[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
        region = np.ascontiguousarray(region[..., :3])
        # the read started at a whole level pixel: crop the fraction before resampling
        dy = y0 / self.downsample - y_level
        dx = x0 / self.downsample - x_level
        if level_scale == 1.0 and dx == dy == 0:
            return region[:height, :width]
        full = resample_rgb(region, (round(h_level / level_scale), round(w_level / level_scale)))
        oy, ox = round(dy / level_scale), round(dx / level_scale)
        out = full[oy : oy + height, ox : ox + width]
        if out.shape[:2] != (height, width):  # the last rounding pixel: pad with edge
            out = np.pad(out, ((0, height - out.shape[0]), (0, width - out.shape[1]), (0, 0)),
                         mode="edge")  # fmt: skip
        return out

    def thumbnail(self, mpp: float) -> np.ndarray:
        """The whole slide at about ``mpp`` µm per pixel (for the tissue mask, overlays)."""
        width, height = self.handle.dimensions
        factor = self.mpp / mpp
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        image = self.handle.get_thumbnail(size).convert("RGB")
        return np.asarray(image)

    def close(self) -> None:
        self.handle.close()


def choose_level(downsamples, slide_mpp: float, model_mpp: float) -> int:
    """The coarsest level whose pixels are at most the model's (a 1 % tolerance), so that
    reading it loses nothing the model would see; level 0 when every level is coarser."""
    best = 0
    for level, downsample in enumerate(downsamples):
        fine_enough = slide_mpp * float(downsample) <= model_mpp * 1.01
        if fine_enough and float(downsample) >= float(downsamples[best]):
            best = level
    return best
