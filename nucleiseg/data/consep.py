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
"""

from __future__ import annotations

import logging
import re
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
    ) -> None:
        super().__init__(
            find_consep_pairs(root),
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
                    names, read_split_file(self.split_file), self.split_file
                )
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

    def nuclei_per_tile(self, groups: list[str]) -> dict[str, float]:
        """The mean number of nuclei per tile of each source image in ``groups``."""
        counts: dict[str, list[int]] = {group: [] for group in groups}
        for pair in self.pairs:
            if pair.group in counts:
                ids = np.unique(read_array(pair.mask))
                counts[pair.group].append(int((ids != 0).sum()))
        return {group: float(np.mean(found)) for group, found in counts.items()}
