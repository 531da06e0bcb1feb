"""Predictions on a fixed set of test images, kept during training for the run's figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nucleiseg.viz.overlays import run_figure


@torch.no_grad()
def predict_test_images(module, datamodule, count: int) -> dict[str, np.ndarray]:
    """Images, masks and per-output probabilities of the first ``count`` test images."""
    dataset = datamodule.dataset("test")
    count = min(count, len(dataset))
    was_training = module.training
    module.eval()
    out: dict[str, list] = {"images": [], "masks": [], "names": []}
    for i in range(count):
        item = dataset[i]
        image = item["image"].unsqueeze(0).to(module.device)
        logits = module(image)
        out["images"].append(
            (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        )
        out["masks"].append(item["mask"][0].numpy().astype(bool))
        out["names"].append(dataset.samples.names[i])
        for name, value in logits.items():
            out.setdefault(name, []).append(torch.sigmoid(value)[0, 0].float().cpu().numpy())
    module.train(was_training)
    return {k: np.stack(v) if k != "names" else np.array(v) for k, v in out.items()}


class FigureSnapshots:
    """Collects the paper's stage-1 and two-stage predictions during a run; saves figures."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.data: dict[str, np.ndarray] = {}

    def record(self, module, datamodule, key: str, output: str) -> None:
        if self.count <= 0:
            return
        predicted = predict_test_images(module, datamodule, self.count)
        for name in ("images", "masks", "names"):
            self.data.setdefault(name, predicted[name])
        self.data[key] = predicted[output]

    def save(self, directory: Path, threshold: float = 0.5) -> Path | None:
        """Write predictions.npz and, where both stages are present, overlays.png."""
        if not self.data:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(directory / "predictions.npz", **self.data)
        if "stage1" in self.data and "two_stage" in self.data:
            run_figure(self.data, directory / "overlays.png", threshold)
            return directory / "overlays.png"
        return None
