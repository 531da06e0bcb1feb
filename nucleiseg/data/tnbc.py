"""TNBC (Naylor et al., "Segmentation of nuclei in histopathology images by deep regression
of the distance map", IEEE TMI 2019): 50 H&E images of 512x512 from 11 slides.

Reads the publisher's layout: ``Slide_XX/XX_N.png`` (RGBA PNG, alpha dropped) and
``GT_XX/XX_N.png`` (binary 0/255). The paper's split is 30/10/10 images
(``split_by: image``); ``split_by: slide`` keeps every slide in one split (no leakage).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from nucleiseg.data.io import DatasetError
from nucleiseg.data.paired_files import Pair, PairedFilesSource

DOWNLOAD_HINT = "download it with: python -m nucleiseg.data.download tnbc --dest data/"


def find_tnbc_pairs(root: str | Path) -> list[Pair]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"TNBC root '{root}' does not exist; {DOWNLOAD_HINT}")
    slides = sorted(p for p in root.glob("Slide_*") if p.is_dir())
    if not slides:
        raise DatasetError(f"TNBC root '{root}' has no Slide_* folders; {DOWNLOAD_HINT}")
    pairs = []
    for slide_dir in slides:
        slide = slide_dir.name.removeprefix("Slide_")
        for image in sorted(slide_dir.glob("*.png")):
            mask = root / f"GT_{slide}" / image.name
            if not mask.is_file():
                raise DatasetError(
                    f"TNBC image '{image}' has no ground truth '{mask}'; restore the GT_{slide} "
                    "folder from the release"
                )
            pairs.append(Pair(name=image.stem, image=image, mask=mask, group=f"slide_{slide}"))
    if not pairs:
        raise DatasetError(f"TNBC root '{root}' has Slide_* folders but no PNG images")
    pairs.sort(key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)])
    return pairs


class TNBCDataset(PairedFilesSource):
    """The TNBC release as a source of train/val/test splits."""

    def __init__(
        self,
        root: str,
        split_sizes: Sequence[int] = (30, 10, 10),
        split_by: str = "image",
        seed: int = 0,
        split_file: str | None = None,
        cache: bool = True,
    ) -> None:
        super().__init__(
            find_tnbc_pairs(root),
            split_sizes=split_sizes,
            seed=seed,
            split_by=split_by,
            split_file=split_file,
            mask_kind="binary",
            cache=cache,
            warn_color=False,  # RGBA is how TNBC is published: no warning per image
        )
