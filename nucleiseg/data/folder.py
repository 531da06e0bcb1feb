"""Any folder of image/mask pairs: ``images/`` and ``masks/`` matched by file stem.

Images may be PNG, TIFF, JPEG or NPY of any size (RGBA and grayscale are converted to RGB
with a warning); masks binary (0/1, 0/255) or instance label maps. An optional ``split.csv``
(``name,split``) in the root fixes the split; otherwise it is drawn from ``split_sizes``
(proportions) with the seed. ``group_by_suffix`` groups names like ``rotated_60_12`` by
their last ``_`` field for a leakage-free split of augmented views.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nucleiseg.data.io import IMAGE_SUFFIXES, DatasetError
from nucleiseg.data.paired_files import Pair, PairedFilesSource


def _by_stem(directory: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            if path.stem in files:
                raise DatasetError(
                    f"'{files[path.stem]}' and '{path}' share the stem '{path.stem}'; keep one"
                )
            files[path.stem] = path
    return files


def find_folder_pairs(
    root: str | Path, images_dir: str = "images", masks_dir: str = "masks", group_by: str = "none"
) -> list[Pair]:
    root = Path(root)
    images_path, masks_path = root / images_dir, root / masks_dir
    for path in (root, images_path, masks_path):
        if not path.is_dir():
            raise DatasetError(
                f"folder dataset: '{path}' does not exist; expected <root>/{images_dir}/ and "
                f"<root>/{masks_dir}/ with files paired by stem"
            )
    images, masks = _by_stem(images_path), _by_stem(masks_path)
    if not images:
        raise DatasetError(
            f"folder dataset: no images ({', '.join(IMAGE_SUFFIXES)}) in '{images_path}'"
        )
    unmatched = sorted(set(images) - set(masks))
    if unmatched:
        raise DatasetError(
            f"folder dataset: image '{images[unmatched[0]]}' has no mask '{masks_path}/"
            f"{unmatched[0]}.*' ({len(unmatched)} unmatched); add the masks or remove the images"
        )
    pairs = []
    for stem in sorted(images):
        group = stem.rsplit("_", 1)[-1] if group_by == "suffix" else stem
        pairs.append(Pair(name=stem, image=images[stem], mask=masks[stem], group=group))
    return pairs


class FolderDataset(PairedFilesSource):
    """A user's own image/mask pairs as a source of train/val/test splits."""

    def __init__(
        self,
        root: str,
        images_dir: str = "images",
        masks_dir: str = "masks",
        split_sizes: Sequence[int] = (70, 15, 15),
        split_by: str = "image",
        group_by: str = "none",
        seed: int = 0,
        split_file: str | None = None,
        mask_kind: str = "auto",
        cache: bool = True,
    ) -> None:
        if split_file is None and (Path(root) / "split.csv").is_file():
            split_file = str(Path(root) / "split.csv")
        super().__init__(
            find_folder_pairs(root, images_dir, masks_dir, group_by),
            split_sizes=split_sizes,
            seed=seed,
            split_by=split_by,
            split_file=split_file,
            mask_kind=mask_kind,
            cache=cache,
        )
