"""Data loading vs training consumption: does the loader keep the model fed?

``python -m benchmarks.loader [dataset overrides...]``, e.g.
``python -m benchmarks.loader dataset=tnbc dataset.root=../shared/data/TNBC_NucleiSegmentation``.
Prints samples/s of the training loader (augmentation on, the configured workers) and of
phase-1 training steps (forward, backward, Adam) on the same batches.
"""

from __future__ import annotations

import itertools
import sys
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from benchmarks.common import CONF_DIR
from benchmarks.training import module_optimizer, plain_epoch


def loader_samples_per_s(loader, epochs: int = 2) -> float:
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            count += len(batch["image"])
    return count / (time.perf_counter() - start)


def training_samples_per_s(module, loader, steps: int = 6) -> float:
    """Phase-1 steps on the first ``steps`` batches, after one warm-up step."""
    batches = list(itertools.islice(loader, steps + 1))
    optimizer = module_optimizer(module)
    plain_epoch(module, batches[:1], optimizer)  # warm-up
    seconds, images = plain_epoch(module, batches[1:], optimizer)
    return images / seconds


def main(overrides: list[str]) -> dict[str, float]:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["paths.output_dir=/tmp/nucleiseg-bench", *overrides])
    datamodule = instantiate(cfg.dataset.datamodule, split_output=None)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    from nucleiseg.training.builders import build_modules

    module = build_modules(cfg)["stage1"]
    torch.manual_seed(0)
    figures = {
        "loader_samples_per_s": loader_samples_per_s(loader),
        "train_samples_per_s": training_samples_per_s(module, loader),
    }
    figures["ratio"] = figures["loader_samples_per_s"] / figures["train_samples_per_s"]
    print(
        f"dataset={cfg.dataset.name} backbone={cfg.backbone.name} "
        f"workers={cfg.dataset.datamodule.num_workers} torch_threads={torch.get_num_threads()}"
    )
    print(f"  loader (augmented): {figures['loader_samples_per_s']:8.1f} samples/s")
    print(f"  training (phase 1): {figures['train_samples_per_s']:8.1f} samples/s")
    print(f"  loader / training:  {figures['ratio']:8.1f}x")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
