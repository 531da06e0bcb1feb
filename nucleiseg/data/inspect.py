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


def summarise_split(samples: SplitSamples) -> dict[str, Any]:
    sizes: dict[str, int] = {}
    nuclei, foreground = [], []
    for image, instances in zip(samples.images, samples.instances, strict=True):
        key = f"{image.shape[1]}x{image.shape[0]}"
        sizes[key] = sizes.get(key, 0) + 1
        nuclei.append(len(np.unique(instances)) - (1 if (instances == 0).any() else 0))
        foreground.append(float((np.asarray(instances) > 0).mean()))
    return {
        "images": len(samples),
        "sizes": sizes,
        "nuclei_per_image": {
            "mean": float(np.mean(nuclei)),
            "min": int(np.min(nuclei)),
            "max": int(np.max(nuclei)),
        },
        "foreground_fraction": float(np.mean(foreground)),
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
    print(f"dataset '{cfg.dataset.name}'\n{format_table(summary)}")
    print(f"summary.json and preview.png written to {out}")


if __name__ == "__main__":
    main()
