"""Sliding-window inference for images of any size.

The image is reflect-padded by ``margin`` pixels, cut into overlapping ``tile``-sized
windows processed ``batch_size`` at a time, and the probabilities blended with a smooth
window (Gaussian by default) in which the outer ``margin`` pixels of every tile are not
trusted. Every pixel is covered by the trusted part of some tile as long as
``overlap >= 2 * margin``, so no seams show; memory is bounded by the tile batch plus two
float32 accumulators of the image's size, and the input stays uint8 until a tile is cut.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

# (N, 3, h, w) in 0..1 -> (N, C, h, w) probabilities (C = 1: the paper's binary output)
Predictor = Callable[[torch.Tensor], torch.Tensor]


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts covering ``length``; the last window is flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def fitted_tile(length: int, max_tile: int, overlap: int, multiple: int = 32) -> int:
    """The smallest tile side (a multiple of ``multiple``, at most ``max_tile``) that covers
    ``length`` with as few windows as ``max_tile`` would need: less computed padding."""
    count = max(1, math.ceil((length - overlap) / (max_tile - overlap)))
    side = math.ceil((length - overlap) / count) + overlap
    side = min(max_tile, multiple * math.ceil(side / multiple))
    return max(side, min(max_tile, 2 * overlap + multiple))


def blend_window(tile: int | tuple[int, int], margin: int, kind: str = "gaussian") -> torch.Tensor:
    """(h, w) weights: a smooth bump over the trusted centre, zero on the margin."""
    height, width = (tile, tile) if isinstance(tile, int) else tile
    return torch.outer(_profile(height, margin, kind), _profile(width, margin, kind))


def _profile(length: int, margin: int, kind: str) -> torch.Tensor:
    inner = length - 2 * margin
    if inner <= 0:
        raise ValueError(f"tile {length} leaves nothing inside a margin of {margin}")
    coords = torch.arange(inner, dtype=torch.float32)
    if kind == "gaussian":
        centred = coords - (inner - 1) / 2
        profile = torch.exp(-0.5 * (centred / (inner / 8)) ** 2)  # nnU-Net-style sigma
    elif kind == "linear":
        profile = torch.minimum(coords + 1, inner - coords) / ((inner + 1) / 2)
    elif kind == "constant":
        profile = torch.ones(inner)
    else:
        raise ValueError(f"unknown blend '{kind}'; use gaussian, linear or constant")
    full = torch.zeros(length)
    full[margin : margin + inner] = profile.clamp_min(1e-3)  # trusted pixels keep weight
    return full


def _to_tensor(tiles: list[np.ndarray], device: torch.device) -> torch.Tensor:
    batch = torch.from_numpy(np.stack(tiles)).to(device)
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def predict_tiled(
    predict: Predictor,
    image: np.ndarray,
    tile: int = 256,
    overlap: int = 64,
    margin: int | None = None,
    batch_size: int = 4,
    blend: str = "gaussian",
    device: str | torch.device = "cpu",
    fit_tiles: bool = True,
) -> np.ndarray:
    """Probability map (H, W) float32 of an RGB uint8 image (H, W, 3) of any size; (C, H, W)
    for a model with C > 1 output channels (instance-aware: nucleus first).

    ``tile`` is the largest window side; with ``fit_tiles`` the windows shrink (to a
    multiple of 32) as far as the same number of windows still covers the image.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    margin = overlap // 4 if margin is None else margin
    if overlap < 2 * margin or overlap >= tile:
        raise ValueError(
            f"need 2*margin <= overlap < tile (margin {margin}, overlap {overlap}, tile {tile})"
        )
    device = torch.device(device)
    h, w = image.shape[:2]
    # tiles no larger than needed (fewer padded pixels computed), then reflect-pad by the
    # margin, and more where the image is smaller than one tile
    th = fitted_tile(h + 2 * margin, tile, overlap) if fit_tiles else tile
    tw = fitted_tile(w + 2 * margin, tile, overlap) if fit_tiles else tile
    pad_h, pad_w = max(margin, th - h - margin), max(margin, tw - w - margin)
    padded = np.pad(image, ((margin, pad_h), (margin, pad_w), (0, 0)), mode="reflect")
    ph, pw = padded.shape[:2]
    window = blend_window((th, tw), margin, blend)
    total: torch.Tensor | None = None  # (C, ph, pw) once the first batch says C
    weight = torch.zeros(ph, pw)
    ys = tile_starts(ph, th, th - overlap)
    xs = tile_starts(pw, tw, tw - overlap)
    boxes = [(y, x) for y in ys for x in xs]
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        batch = _to_tensor([padded[y : y + th, x : x + tw] for y, x in chunk], device)
        probs = predict(batch).float().cpu()
        if total is None:
            total = torch.zeros(probs.shape[1], ph, pw)
        for (y, x), prob in zip(chunk, probs, strict=True):
            total[:, y : y + th, x : x + tw] += prob * window
            weight[y : y + th, x : x + tw] += window
    out = (
        total[:, margin : margin + h, margin : margin + w]
        / weight[margin : margin + h, margin : margin + w]
    )
    return (out[0] if len(out) == 1 else out).numpy()


@torch.no_grad()
def predict_whole(predict: Predictor, image: np.ndarray, margin: int = 32) -> np.ndarray:
    """The same reflect-padded context as :func:`predict_tiled`, in one forward pass."""
    padded = np.pad(image, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")
    prob = predict(_to_tensor([padded], torch.device("cpu")))[0]
    prob = prob[:, margin:-margin, margin:-margin].float()
    return (prob[0] if len(prob) == 1 else prob).numpy()


def module_predictor(module, output: str) -> Predictor:
    """Probabilities of one output (``stage1`` or ``two_stage``) of a LightningModule, every
    channel it has."""

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(module(batch.to(module.device))[output])

    return predict


def at_input_grid(predict: Predictor, factor: float) -> Predictor:
    """``predict`` (which sees its batch as the model's grid: an exported model) for inputs
    whose pixels are ``1 / factor`` model pixels: the batch resampled to the model's grid
    and the probabilities back (``factor`` from ``module.input_pixels_per_model_pixel``)."""
    from nucleiseg.models.resampling import resample_batch, scaled_size

    if factor == 1.0:
        return predict

    def resampled(batch: torch.Tensor) -> torch.Tensor:
        size = tuple(batch.shape[-2:])
        return resample_batch(predict(resample_batch(batch, scaled_size(size, 1 / factor))), size)

    return resampled
