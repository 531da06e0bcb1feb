"""Sliding-window inference for images of any size.

The image is reflect-padded by ``margin`` pixels, cut into overlapping ``tile``-sized
windows processed ``batch_size`` at a time, and the probabilities blended with a smooth
window (Gaussian by default) in which the outer ``margin`` pixels of every tile are not
trusted. Every pixel is covered by the trusted part of some tile as long as
``overlap >= 2 * margin``, so no seams show; memory is bounded by the tile batch plus two
float32 accumulators of the image's size, and the input stays uint8 until a tile is cut.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Predictor = Callable[[torch.Tensor], torch.Tensor]  # (N, 3, h, w) in 0..1 -> (N, 1, h, w) prob


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts covering ``length``; the last window is flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def blend_window(tile: int, margin: int, kind: str = "gaussian") -> torch.Tensor:
    """(tile, tile) weights: a smooth bump over the trusted centre, zero on the margin."""
    inner = tile - 2 * margin
    if inner <= 0:
        raise ValueError(f"tile {tile} leaves nothing inside a margin of {margin}")
    if kind == "gaussian":
        coords = torch.arange(inner, dtype=torch.float32) - (inner - 1) / 2
        profile = torch.exp(-0.5 * (coords / (inner / 8)) ** 2)  # nnU-Net-style sigma
    elif kind == "linear":
        coords = torch.arange(inner, dtype=torch.float32)
        profile = torch.minimum(coords + 1, inner - coords) / ((inner + 1) / 2)
    elif kind == "constant":
        profile = torch.ones(inner)
    else:
        raise ValueError(f"unknown blend '{kind}'; use gaussian, linear or constant")
    profile = profile.clamp_min(1e-3)  # every trusted pixel keeps some weight
    window = torch.zeros(tile, tile)
    window[margin : margin + inner, margin : margin + inner] = torch.outer(profile, profile)
    return window


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
) -> np.ndarray:
    """Probability map (H, W) float32 of an RGB uint8 image (H, W, 3) of any size."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    margin = overlap // 4 if margin is None else margin
    if overlap < 2 * margin or overlap >= tile:
        raise ValueError(
            f"need 2*margin <= overlap < tile (margin {margin}, overlap {overlap}, tile {tile})"
        )
    device = torch.device(device)
    h, w = image.shape[:2]
    # reflect-pad by the margin (more where the image is smaller than one tile)
    pad_h, pad_w = max(margin, tile - h - margin), max(margin, tile - w - margin)
    padded = np.pad(image, ((margin, pad_h), (margin, pad_w), (0, 0)), mode="reflect")
    ph, pw = padded.shape[:2]
    window = blend_window(tile, margin, blend)
    total = torch.zeros(ph, pw)
    weight = torch.zeros(ph, pw)
    stride = tile - overlap
    boxes = [(y, x) for y in tile_starts(ph, tile, stride) for x in tile_starts(pw, tile, stride)]
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        batch = _to_tensor([padded[y : y + tile, x : x + tile] for y, x in chunk], device)
        probs = predict(batch)[:, 0].float().cpu()
        for (y, x), prob in zip(chunk, probs, strict=True):
            total[y : y + tile, x : x + tile] += prob * window
            weight[y : y + tile, x : x + tile] += window
    out = (
        total[margin : margin + h, margin : margin + w]
        / weight[margin : margin + h, margin : margin + w]
    )
    return out.numpy()


@torch.no_grad()
def predict_whole(predict: Predictor, image: np.ndarray, margin: int = 32) -> np.ndarray:
    """The same reflect-padded context as :func:`predict_tiled`, in one forward pass."""
    padded = np.pad(image, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")
    prob = predict(_to_tensor([padded], torch.device("cpu")))[0, 0]
    return prob[margin:-margin, margin:-margin].float().numpy()


def dihedral_tta(predict: Predictor) -> Predictor:
    """Average of the 8 dihedral views (4 rotations x optional flip), each mapped back."""

    def averaged(batch: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(batch[:, :1])
        for flip in (False, True):
            view = batch.flip(-1) if flip else batch
            for k in range(4):
                out = torch.rot90(predict(torch.rot90(view, k, (-2, -1))), -k, (-2, -1))
                total += out.flip(-1) if flip else out
        return total / 8

    return averaged


def module_predictor(module, output: str) -> Predictor:
    """Probabilities of one output (``stage1`` or ``two_stage``) of a LightningModule."""

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(module(batch.to(module.device))[output])

    return predict
