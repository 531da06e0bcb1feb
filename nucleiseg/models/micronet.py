"""Micro-Net (Raza et al., "Micro-Net: A unified model for segmentation of various objects
in microscopy images", Medical Image Analysis 52, 2019), as a stage-1 backbone.

Follows the published architecture as ported to PyTorch by TIAToolbox
(``tiatoolbox.models.architecture.micronet``):

- four *group 1* blocks: two valid 3x3 convolutions (tanh, BatchNorm after the first) and a
  2x2 max-pool on the main path, concatenated with two valid convolutions applied to a
  bicubic-downsampled copy of the input image (the multi-resolution input branches);
- a *group 2* bottleneck of two valid convolutions;
- four *group 3* decoder blocks (2x2 transposed convolution, two valid convolutions, a 5x5
  transposed convolution that restores the size, fused with the encoder skip by a 1x1
  convolution);
- three *group 4* branches that upsample decoder features to full resolution, each with an
  auxiliary output, and a main output computed from their concatenation.

With ``base_channels=64`` (published width) and two output classes it has 184,400,264
weights, the figure of the TIAToolbox port. Deliberate deviations:

- ``classes`` defaults to 1 and every head returns logits (no softmax/tanh at the output):
  the binary nuclei map is trained with pixel-wise BCE-with-logits like the other backbones;
- ``base_channels`` scales every layer's width, so tests and CPU runs can use a small model;
- the auxiliary losses use one constant weight (the paper decays them over epochs);
- the network only accepts 252x252 tiles (valid convolutions), so :class:`MicroNet` tiles
  any input with overlapping 252x252 windows and keeps the central 200x200 of each, as its
  authors do, making it a drop-in ``(N, 3, H, W) -> (N, classes, H, W)`` model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nucleiseg.models.padding import pad_image

TILE = 252
VALID = 200
CONTEXT = (TILE - VALID) // 2
# Side of the downsampled image copy that each group-1 block reads, for a 252 tile.
RESIZED_SIDES = (128, 64, 32, 16)


def _conv(in_ch: int, out_ch: int, kernel: int = 3, batch_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel), nn.Tanh()]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_ch))
    return nn.Sequential(*layers)


class EncoderGroup(nn.Module):
    """Group 1: main path (conv, conv, pool) joined with a resized-image path."""

    def __init__(self, in_ch: int, image_ch: int, out_ch: int, resized_side: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            _conv(in_ch, out_ch, batch_norm=True), _conv(out_ch, out_ch), nn.MaxPool2d(2)
        )
        self.image = nn.Sequential(_conv(image_ch, out_ch, batch_norm=True), _conv(out_ch, out_ch))
        self.resized_side = resized_side

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(
            image, size=(self.resized_side, self.resized_side), mode="bicubic", align_corners=False
        )
        return torch.cat((self.main(x), self.image(resized)), dim=1)


class DecoderGroup(nn.Module):
    """Group 3: upsample, two convs, size-restoring transposed conv, fuse with skip."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        self.convs = nn.Sequential(_conv(out_ch, out_ch), _conv(out_ch, out_ch))
        self.restore = nn.ConvTranspose2d(out_ch, out_ch, 5)
        self.skip = nn.ConvTranspose2d(skip_ch, out_ch, 5)
        self.fuse = _conv(2 * out_ch, out_ch, kernel=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        main = self.restore(self.convs(self.up(x)))
        return self.fuse(torch.cat((main, self.skip(skip)), dim=1))


class OutputBranch(nn.Module):
    """Group 4: upsample decoder features to full resolution; an auxiliary head reads them."""

    def __init__(self, in_ch: int, out_ch: int, scale: int, classes: int, dropout: float) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, scale, stride=scale)
        self.conv = _conv(out_ch, out_ch)
        self.aux_head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(out_ch, classes, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class MicroNetTile(nn.Module):
    """The published network: a 252x252 tile in, 252x252 logits out (main and auxiliary)."""

    def __init__(
        self, in_channels: int = 3, classes: int = 1, base_channels: int = 64, dropout: float = 0.5
    ) -> None:
        super().__init__()
        c = base_channels
        self.encoder = nn.ModuleList(
            [
                EncoderGroup(in_channels, in_channels, c, RESIZED_SIDES[0]),
                EncoderGroup(2 * c, in_channels, 2 * c, RESIZED_SIDES[1]),
                EncoderGroup(4 * c, in_channels, 4 * c, RESIZED_SIDES[2]),
                EncoderGroup(8 * c, in_channels, 8 * c, RESIZED_SIDES[3]),
            ]
        )
        self.bottleneck = nn.Sequential(_conv(16 * c, 32 * c), _conv(32 * c, 32 * c))
        self.decoder = nn.ModuleList(
            [
                DecoderGroup(32 * c, 16 * c, 16 * c),
                DecoderGroup(16 * c, 8 * c, 8 * c),
                DecoderGroup(8 * c, 4 * c, 4 * c),
                DecoderGroup(4 * c, 2 * c, 2 * c),
            ]
        )
        # Branches read the last three decoder outputs (finest first).
        self.branches = nn.ModuleList(
            [
                OutputBranch(2 * c, c, 2, classes, dropout),
                OutputBranch(4 * c, 2 * c, 4, classes, dropout),
                OutputBranch(8 * c, 4 * c, 8, classes, dropout),
            ]
        )
        self.head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(7 * c, classes, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if x.shape[-2:] != (TILE, TILE):
            raise ValueError(f"MicroNetTile takes {TILE}x{TILE} tiles, got {tuple(x.shape[-2:])}")
        skips = []
        feat = x
        for group in self.encoder:
            feat = group(feat, x)
            skips.append(feat)
        feat = self.bottleneck(feat)
        decoded = []
        for group, skip in zip(self.decoder, reversed(skips), strict=True):
            feat = group(feat, skip)
            decoded.append(feat)
        branch_inputs = (decoded[3], decoded[2], decoded[1])
        features = [branch(f) for branch, f in zip(self.branches, branch_inputs, strict=True)]
        aux = [branch.aux_head(f) for branch, f in zip(self.branches, features, strict=True)]
        return self.head(torch.cat(features, dim=1)), aux


def tile_origins(length: int) -> list[int]:
    """Start offsets of VALID-long windows covering ``length`` (last one flush with the end)."""
    last = max(length - VALID, 0)
    starts = list(range(0, last, VALID))
    return starts + [last]


class MicroNet(nn.Module):
    """Micro-Net for any input size: overlapping 252 tiles, central 200x200 of each kept.

    ``forward`` returns the main logits (smp-style); ``forward_with_aux`` also returns the
    three auxiliary logit maps, which the training loss supervises with the same BCE.
    """

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 1,
        base_channels: int = 64,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.net = MicroNetTile(in_channels, classes, base_channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(x)[0]

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        n, _, h, w = x.shape
        ph, pw = max(h, VALID), max(w, VALID)
        padded = pad_image(x, CONTEXT, CONTEXT + pw - w, CONTEXT, CONTEXT + ph - h)
        ys, xs = tile_origins(ph), tile_origins(pw)
        tiles = torch.cat([padded[..., y : y + TILE, x0 : x0 + TILE] for y in ys for x0 in xs])
        main, aux = self.net(tiles)
        outputs = [self._stitch(m, n, ys, xs, h, w) for m in [main, *aux]]
        return outputs[0], outputs[1:]

    @staticmethod
    def _stitch(
        tiles: torch.Tensor, n: int, ys: list[int], xs: list[int], h: int, w: int
    ) -> torch.Tensor:
        """Place the trusted centre of each tile at its origin; crop to the input size."""
        canvas = tiles.new_zeros(n, tiles.shape[1], max(h, VALID), max(w, VALID))
        centre = tiles[..., CONTEXT : CONTEXT + VALID, CONTEXT : CONTEXT + VALID]
        per_tile = centre.view(len(ys) * len(xs), n, *centre.shape[1:])
        for i, (y, x0) in enumerate((y, x0) for y in ys for x0 in xs):
            canvas[..., y : y + VALID, x0 : x0 + VALID] = per_tile[i]
        return canvas[..., :h, :w]
