"""Reading images and masks from disk with errors that name the file and the fix."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg", ".bmp")
#: whole-slide formats (read by nucleiseg.wsi); a pyramidal .tif/.tiff is a slide too
SLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".bif", ".svslide")


class DatasetError(ValueError):
    """Bad dataset input: the message names the file or key and what to do."""


def read_array(path: Path) -> np.ndarray:
    """Decode an image file (PNG, TIFF, JPEG, BMP) or a ``.npy`` array."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"file '{path}' does not exist")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(image).astype(np.int32)
            return np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise DatasetError(
            f"cannot read '{path}' ({type(err).__name__}: {err}); the file is corrupt or not "
            "an image: replace it or remove the pair from the dataset"
        ) from err


#: Pillow modes that are not RGB pixels as stored: palette, CMYK, YCbCr, 1-bit, gray+alpha
CONVERT_TO_RGB = ("P", "PA", "CMYK", "YCbCr", "1", "LA", "L", "RGBA", "I;16", "I", "F")
DEFAULT_MAX_PIXELS = 200_000_000  # ~14k x 14k: the float32 probability alone is 800 MB


def read_rgb_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3), its pixel count checked before decoding.

    Palette, CMYK, YCbCr, 1-bit and gray(+alpha) images go through Pillow's
    ``convert("RGB")``, so colours come out as they are displayed. TIFFs are read with
    tifffile (whose header gives the size first); ``.npy`` arrays must already be RGB.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"file '{path}' does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tiff:
                shape = tiff.pages[0].shape
                _check_pixels(path, int(np.prod(shape[:2])), max_pixels)
                return to_rgb(tiff.pages[0].asarray(), path)
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False, mmap_mode="r")
            _check_pixels(path, int(np.prod(array.shape[:2])), max_pixels)
            return to_rgb(np.asarray(array), path)
        with Image.open(path) as image:  # reads the header only
            _check_pixels(path, image.width * image.height, max_pixels)
            if image.mode != "RGB":
                log.info("'%s' is %s; converted to RGB", path, image.mode)
                image = image.convert("RGB")
            return np.ascontiguousarray(np.asarray(image))
    except Image.DecompressionBombError as err:
        raise DatasetError(f"'{path}' is larger than Pillow's safety limit ({err})") from err
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise DatasetError(
            f"cannot read '{path}' ({type(err).__name__}: {err}); the file is corrupt or not "
            "an image"
        ) from err


def _check_pixels(path: Path, pixels: int, max_pixels: int) -> None:
    if pixels > max_pixels:
        raise DatasetError(
            f"'{path}' has {pixels:,} pixels, more than max_pixels={max_pixels:,}; raise "
            "max_pixels if the machine has the memory, or split the image"
        )


def to_rgb(array: np.ndarray, path: Path, warn: bool = True) -> np.ndarray:
    """RGB uint8 (H, W, 3) from RGB, RGBA or grayscale input (converted with a warning)."""
    if array.ndim == 2:
        if warn:
            log.warning("'%s' is grayscale; replicated to RGB", path)
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        if warn:
            log.warning("'%s' is RGBA; alpha channel dropped", path)
        array = array[..., :3]
    elif array.ndim == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise DatasetError(
            f"'{path}' has shape {array.shape}; expected an RGB image of shape (H, W, 3)"
        )
    if array.dtype != np.uint8:
        if array.dtype.kind == "f" and array.max() <= 1.0:
            array = array * 255.0
        elif array.dtype.kind in "ui" and array.max() > 255:
            raise DatasetError(
                f"'{path}' has {array.dtype} values up to {array.max()}; convert it to 8-bit RGB"
            )
        array = np.clip(array, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(array)


def is_binary(mask: np.ndarray) -> bool:
    values = np.unique(mask)
    return set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}


def to_instances(mask: np.ndarray, path: Path, kind: str = "auto") -> np.ndarray:
    """Int32 instance map (0 = background) from a binary (0/1 or 0/255) or instance mask.

    Binary masks become instances by connected components (touching nuclei stay merged).
    ``kind`` is ``binary`` (other values are an error), ``instance`` or ``auto``.
    """
    from scipy import ndimage

    if mask.ndim == 3:
        if mask.shape[2] in (3, 4) and np.all(mask[..., :3] == mask[..., :1]):
            mask = mask[..., 0]
        else:
            raise DatasetError(
                f"mask '{path}' has shape {mask.shape}; expected a single-channel (H, W) mask"
            )
    if mask.ndim != 2:
        raise DatasetError(f"mask '{path}' has shape {mask.shape}; expected (H, W)")
    if kind not in ("auto", "binary", "instance"):
        raise DatasetError(f"unknown mask kind '{kind}'; use auto, binary or instance")
    binary = is_binary(mask)
    if kind == "binary" and not binary:
        raise DatasetError(
            f"mask '{path}' should be binary (0/255 or 0/1) but holds values "
            f"{np.unique(mask)[:8].tolist()}...; fix the mask or set mask_kind=instance"
        )
    if binary:
        labels, _ = ndimage.label(mask > 0)
        return labels.astype(np.int32)
    if mask.min() < 0:
        raise DatasetError(f"mask '{path}' has negative labels; instance ids must be >= 0")
    return mask.astype(np.int32)


def to_type_map(array: np.ndarray, path: Path) -> np.ndarray:
    """A uint8 per-pixel nucleus-type map (H, W; 0 = background) from a class-label image."""
    if array.ndim != 2:
        raise DatasetError(f"type map '{path}' has shape {array.shape}; expected (H, W)")
    if array.min() < 0 or array.max() > 255:
        raise DatasetError(
            f"type map '{path}' holds values {array.min()}..{array.max()}; expected class "
            "labels 0..255 (0 = background)"
        )
    return array.astype(np.uint8)


def check_pair(image: np.ndarray, instances: np.ndarray, image_path: Path, mask_path: Path) -> None:
    if image.shape[:2] != instances.shape:
        raise DatasetError(
            f"mask '{mask_path}' is {instances.shape[1]}x{instances.shape[0]} but its image "
            f"'{image_path}' is {image.shape[1]}x{image.shape[0]}; they must have the same size"
        )
