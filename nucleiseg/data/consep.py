"""CoNSeP (Graham et al., "HoVer-Net", Medical Image Analysis 2019): 41 colorectal
adenocarcinoma H&E images at 40x (about 0.25 µm per pixel) with instance and type labels.

Reads the tiled copy ``{train,test}/{images,masks,types}/<split>_<image>_<tile>.{jpg,png}``:
images as published (JPEG), ``masks/`` uint16 instance maps, ``types/`` uint8 per-pixel
nucleus class (1 other, 2 inflammatory, 3 epithelial, 4 spindle). The official split is
kept (27 training, 14 test images); validation is ``val_images`` of the 27 training images,
drawn with the seed: by default one from each of ``val_images`` strata of the training
images sorted by nuclei per tile (``val_stratify: nuclei``), since the images range from 1.5
to 163 nuclei per tile and a random draw of 5 (``val_stratify: null``, before session 45)
took 4 of the 6 sparsest, 12.7 nuclei per tile against the rest's 48.9. Tiles of one image
may overlap, so every split is made of whole source images, never of tiles.

``whole_images: true`` puts each image's 16 tiles back together into the published 1000 px
image (:func:`assemble_tiles`), HoVer-Net's evaluation protocol: no nucleus is cut by a tile's
edge, and a model sees the context around every nucleus. The split is the same images.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from nucleiseg.data.io import DatasetError, read_array
from nucleiseg.data.paired_files import Pair, PairedFilesSource
from nucleiseg.data.splits import apply_split_file, read_split_file, stratified_draw

log = logging.getLogger(__name__)
#: how the validation images are drawn from the training images (``dataset.val_stratify``)
VAL_DRAWS = ("nuclei", None)

DOWNLOAD_HINT = "see: python -m nucleiseg.data.download consep --dest data/"
TILE_NAME = re.compile(r"^(?P<split>train|test)_(?P<image>\d+)_(?P<tile>\d+)$")
#: CoNSeP's nucleus classes in ``types/`` (0 is background)
NUCLEUS_TYPES = {1: "other", 2: "inflammatory", 3: "epithelial", 4: "spindle"}
#: the published images' side and the shared copy's tiles'
IMAGE_SIZE, TILE_SIZE = 1000, 256
TILES_PER_IMAGE = 16


def tile_origin(index: int) -> tuple[int, int]:
    """Top-left (row, column) of tile ``index`` in its source image. The shared copy cut a
    3 x 3 grid from the top left (tiles 0-8, row by row), then the bottom row (9-11), the
    right column (12-14) and the corner (15) flush with the image's far edges, so these
    overlap the grid by ``3 * TILE_SIZE - (IMAGE_SIZE - TILE_SIZE)`` pixels (24)."""
    far = IMAGE_SIZE - TILE_SIZE
    if 0 <= index < 9:
        return TILE_SIZE * (index // 3), TILE_SIZE * (index % 3)
    if 9 <= index < 12:
        return far, TILE_SIZE * (index - 9)
    if 12 <= index < 15:
        return TILE_SIZE * (index - 12), far
    if index == 15:
        return far, far
    raise DatasetError(f"CoNSeP tile index {index} is not one of the 16 tiles (0-15) of an image")


def assemble_tiles(
    tiles: dict[int, tuple[Path, tuple[np.ndarray, np.ndarray, np.ndarray | None]]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One source image, its instance map and its type map from its 16 decoded tiles
    (tile index -> ``(image path, (image, instances, types))``). Where tiles overlap their
    instance maps must agree (instance ids are the source image's, shared by its tiles):
    otherwise the tiles are not this layout and the error names the tile."""
    if sorted(tiles) != list(range(TILES_PER_IMAGE)):
        missing = sorted(set(range(TILES_PER_IMAGE)) - set(tiles))
        first = next(iter(tiles.values()))[0]
        raise DatasetError(
            f"the CoNSeP image of '{first}' has tiles {sorted(tiles)}; whole_images needs "
            f"exactly tiles 0-{TILES_PER_IMAGE - 1} (missing: {missing}): restore them from "
            "the release, or set dataset.whole_images=false"
        )
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    instances = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.int32)
    with_types = all(parts[2] is not None for _, parts in tiles.values())
    types = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8) if with_types else None
    placed = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    for index, (path, (tile_image, tile_instances, tile_types)) in sorted(tiles.items()):
        if tile_instances.shape != (TILE_SIZE, TILE_SIZE):
            raise DatasetError(
                f"CoNSeP tile '{path}' is {tile_instances.shape[1]}x{tile_instances.shape[0]} "
                f"px; whole_images needs the shared copy's {TILE_SIZE} px tiles"
            )
        y, x = tile_origin(index)
        window = np.s_[y : y + TILE_SIZE, x : x + TILE_SIZE]
        overlap = placed[window]
        if (instances[window][overlap] != tile_instances[overlap]).any():
            raise DatasetError(
                f"CoNSeP tile '{path}' does not agree with the tiles it overlaps in its source "
                "image; its tiles are not the shared copy's 16-tile layout: set "
                "dataset.whole_images=false to read them as tiles"
            )
        image[window], instances[window], placed[window] = tile_image, tile_instances, True
        if types is not None:
            types[window] = tile_types
    return image, instances, types


def find_consep_pairs(root: str | Path) -> list[Pair]:
    """Every tile of both official splits, grouped by source image (``train_3``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"CoNSeP root '{root}' does not exist; {DOWNLOAD_HINT}")
    pairs = []
    for split in ("train", "test"):
        images_dir = root / split / "images"
        if not images_dir.is_dir():
            raise DatasetError(
                f"CoNSeP root '{root}' has no {split}/images/ folder; expected "
                f"{{train,test}}/{{images,masks,types}}/; {DOWNLOAD_HINT}"
            )
        for image in sorted(images_dir.glob("*.jpg")):
            match = TILE_NAME.match(image.stem)
            if match is None or match["split"] != split:
                raise DatasetError(
                    f"CoNSeP tile '{image}' is not named {split}_<image>_<tile>.jpg; the "
                    "source image of every tile must be known to split without leakage"
                )
            mask = root / split / "masks" / f"{image.stem}.png"
            types = root / split / "types" / f"{image.stem}.png"
            for path in (mask, types):
                if not path.is_file():
                    raise DatasetError(
                        f"CoNSeP tile '{image}' has no '{path}'; restore it from the release"
                    )
            group = f"{split}_{match['image']}"
            pairs.append(Pair(name=image.stem, image=image, mask=mask, group=group, types=types))
    if not pairs:
        raise DatasetError(f"CoNSeP root '{root}' holds no tiles; {DOWNLOAD_HINT}")
    return pairs


class CoNSePDataset(PairedFilesSource):
    """CoNSeP's official split, with validation drawn from its training images by image."""

    def __init__(
        self,
        root: str,
        val_images: int = 5,
        seed: int = 0,
        split_file: str | None = None,
        cache: bool = True,
        val_stratify: str | None = "nuclei",
        whole_images: bool = False,
    ) -> None:
        self.tiles = find_consep_pairs(root)
        self.whole_images = whole_images
        self.tiles_of: dict[str, list[Pair]] = {}
        for tile in self.tiles:
            self.tiles_of.setdefault(tile.group, []).append(tile)
        pairs = self.tiles
        if whole_images:  # one item per source image, named for it; its first tile's paths
            pairs = [replace(tiles[0], name=group) for group, tiles in self.tiles_of.items()]
        super().__init__(
            pairs,
            split_sizes=(0, 0, 0),  # unused: the split below is the official one
            seed=seed,
            split_by="group",
            split_file=split_file,
            mask_kind="instance",
            cache=cache,
        )
        train_images = sorted({p.group for p in self.pairs if p.group.startswith("train_")})
        if not 0 < val_images < len(train_images):
            raise DatasetError(
                f"dataset.val_images={val_images}: choose between 1 and "
                f"{len(train_images) - 1} of CoNSeP's {len(train_images)} training images"
            )
        if val_stratify not in VAL_DRAWS:
            raise DatasetError(
                f"dataset.val_stratify={val_stratify!r} is not known: use nuclei (validation "
                "images spanning the training images' nuclei per tile) or null (a random draw)"
            )
        self.val_images = val_images
        self.val_stratify = val_stratify

    def assignment(self) -> dict[str, str]:
        """``test`` for the official test images; of the training images, ``val_images``
        drawn with the seed are ``val``, the rest ``train``."""
        if self._assignment is None:
            names = [p.name for p in self.pairs]
            if self.split_file:
                self._assignment = apply_split_file(
                    names, self.split_file_by_item(read_split_file(self.split_file)),
                    self.split_file,
                )  # fmt: skip
                return self._assignment
            train_images = sorted(
                {p.group for p in self.pairs if p.group.startswith("train_")},
                key=lambda g: int(g.split("_")[1]),
            )
            if self.val_stratify == "nuclei":
                density = self.nuclei_per_tile(train_images)
                val = stratified_draw(density, self.val_images, self.seed)
                chosen = np.mean([density[g] for g in val])
                log.info("validation images %s: %.1f nuclei per tile (training images: %.1f)",
                         ", ".join(sorted(val)), chosen,
                         np.mean([v for g, v in density.items() if g not in val]))  # fmt: skip
            else:
                order = np.random.default_rng(self.seed).permutation(len(train_images))
                val = {train_images[i] for i in order[: self.val_images]}
            self._assignment = {
                p.name: "test" if p.group.startswith("test_") else "val" if p.group in val
                else "train"
                for p in self.pairs
            }  # fmt: skip
        return self._assignment

    def split_file_by_item(self, rows: dict[str, str]) -> dict[str, str]:
        """A split file's rows for this dataset's items: with whole images, a file written by a
        run on tiles gives each image its tiles' split (all the same: splits are by image)."""
        if not self.whole_images:
            return rows
        by_image = dict(rows)
        for name, split in rows.items():
            match = TILE_NAME.match(name)
            if match:
                by_image.setdefault(f"{match['split']}_{match['image']}", split)
        return by_image

    def load_pair(self, pair: Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """A tile, or with ``whole_images`` its source image put back together."""
        if not self.whole_images:
            return super().load_pair(pair)
        tiles = {}
        for tile in self.tiles_of[pair.group]:  # a loop: super() does not reach a comprehension
            tiles[int(TILE_NAME.match(tile.name)["tile"])] = (tile.image, super().load_pair(tile))
        return assemble_tiles(tiles)

    def nuclei_per_tile(self, groups: list[str]) -> dict[str, float]:
        """The mean number of nuclei per tile of each source image in ``groups`` (counted
        on the tiles in either mode, so whole images are split as their tiles are)."""
        counts: dict[str, list[int]] = {group: [] for group in groups}
        for pair in self.tiles:
            if pair.group in counts:
                ids = np.unique(read_array(pair.mask))
                counts[pair.group].append(int((ids != 0).sum()))
        return {group: float(np.mean(found)) for group, found in counts.items()}
