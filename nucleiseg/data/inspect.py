"""Look at a dataset before training on it:
``python -m nucleiseg.data.inspect dataset=tnbc dataset.root=...``.

Prints per split the number of images, their sizes, nuclei per image and foreground
fraction, and writes ``summary.json`` and ``preview.png`` (images with nuclei outlined)
into the run directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from nucleiseg.data.samples import SplitSamples
from nucleiseg.data.splits import SPLITS

log = logging.getLogger(__name__)


def nuclei_per_type(instances: np.ndarray, types: np.ndarray) -> dict[int, int]:
    """How many nuclei carry each type label (a nucleus's pixels share one type)."""
    inside = instances > 0
    pairs = np.unique(np.stack([instances[inside], types[inside]]), axis=1)
    labels, counts = np.unique(pairs[1], return_counts=True)
    return {int(t): int(c) for t, c in zip(labels, counts, strict=True)}


def summarise_split(samples: SplitSamples) -> dict[str, Any]:
    sizes: dict[str, int] = {}
    nuclei, foreground = [], []
    per_type: dict[int, int] = {}
    for index, (image, instances) in enumerate(zip(samples.images, samples.instances, strict=True)):
        key = f"{image.shape[1]}x{image.shape[0]}"
        sizes[key] = sizes.get(key, 0) + 1
        nuclei.append(len(np.unique(instances)) - (1 if (instances == 0).any() else 0))
        foreground.append(float((np.asarray(instances) > 0).mean()))
        if samples.types is not None:
            found = nuclei_per_type(np.asarray(instances), np.asarray(samples.types[index]))
            for label, count in found.items():
                per_type[label] = per_type.get(label, 0) + count
    extra = {"nuclei_per_type": dict(sorted(per_type.items()))} if samples.types is not None else {}
    return {
        "images": len(samples),
        "sizes": sizes,
        "nuclei_per_image": {
            "mean": float(np.mean(nuclei)),
            "min": int(np.min(nuclei)),
            "max": int(np.max(nuclei)),
        },
        "foreground_fraction": float(np.mean(foreground)),
        **extra,
    }


def summarise(source: Any) -> dict[str, dict[str, Any]]:
    return {name: summarise_split(source.split(name)) for name in SPLITS}


def write_preview(samples: SplitSamples, path: Path, count: int = 6) -> None:
    """A row of images with their nuclei outlined (boundaries of the instance map)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    count = min(count, len(samples))
    fig, axes = plt.subplots(1, count, figsize=(3 * count, 3.2), squeeze=False)
    for ax, i in zip(axes[0], range(count), strict=True):
        image = np.asarray(samples.images[i]).copy()
        image[find_boundaries(np.asarray(samples.instances[i]), mode="outer")] = (0, 255, 0)
        ax.imshow(image)
        ax.set_title(samples.names[i], fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| split | images | sizes | nuclei/image (mean, min-max) | foreground |",
        "|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        n = s["nuclei_per_image"]
        sizes = ", ".join(f"{k} ({v})" for k, v in s["sizes"].items())
        lines.append(
            f"| {name} | {s['images']} | {sizes} | {n['mean']:.1f}, {n['min']}-{n['max']} "
            f"| {s['foreground_fraction']:.3f} |"
        )
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = instantiate(cfg.dataset.datamodule.source)
    summary = summarise(source)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_preview(source.split("train"), out / "preview.png")
    mpp = cfg.dataset.get("mpp")
    size = f"{mpp} µm per pixel" if mpp else "pixel size not set (dataset.mpp)"
    print(f"dataset '{cfg.dataset.name}' ({size})\n{format_table(summary)}")
    for name, split in summary.items():
        if "nuclei_per_type" in split:
            print(f"{name}: nuclei per type label {split['nuclei_per_type']}")
    print(f"summary.json and preview.png written to {out}")


if __name__ == "__main__":
    main()
