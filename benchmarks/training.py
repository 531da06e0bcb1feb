"""Training throughput: nucleiseg (Lightning) vs a plain PyTorch loop, and phase costs."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from nucleiseg.callbacks.phase_controller import apply_phase
from nucleiseg.training import build_modules, build_phases, phase_trainer


class EpochTimer(Callback):
    """Wall time of the training batches of each epoch (its validation excluded)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.images = 0
        self._start, self._done = 0.0, True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._done, self.images = time.perf_counter(), False, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch["image"])

    def _stop(self) -> None:
        if not self._done:
            self.seconds.append(time.perf_counter() - self._start)
            self._done = True

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._stop()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop()


def plain_epoch(module, loader, optimizer) -> tuple[float, int]:
    """The same steps without Lightning: forward, BCE, backward, Adam."""
    module.train()
    images, start = 0, time.perf_counter()
    for batch in loader:
        optimizer.zero_grad(set_to_none=True)
        logits, extra = module.compute_outputs(batch["image"], batch["mask"])
        loss = module.loss(logits, batch["mask"]) + extra
        loss.backward()
        optimizer.step()
        images += len(batch["image"])
    return time.perf_counter() - start, images


def lightning_epoch(cfg, module, datamodule, phase, index) -> tuple[float, int]:
    """A fresh phase fit of two epochs; the second (steady-state) epoch is timed."""
    with tempfile.TemporaryDirectory() as run_dir:
        timer = EpochTimer()
        loggers = [instantiate(c, save_dir=run_dir) for c in cfg.logger.values()]
        trainer, _, _ = phase_trainer(cfg, phase, index, Path(run_dir), loggers)
        trainer.callbacks.append(timer)
        trainer.fit_loop.max_epochs = 2
        trainer.fit(module, datamodule=datamodule)
        return timer.seconds[1], timer.images


def plain_phase_epoch(module, loader) -> tuple[float, int]:
    """The plain loop's equivalent: a fresh Adam, two epochs, the second one timed."""
    optimizer = module.configure_optimizers()
    plain_epoch(module, loader, optimizer)
    return plain_epoch(module, loader, optimizer)


def phase_setup(cfg) -> tuple[list, Any, dict]:
    """The run's phases, its data module (set up for fitting) and fresh modules."""
    datamodule = instantiate(cfg.dataset.datamodule, split_output=None)
    datamodule.setup("fit")
    return build_phases(cfg), datamodule, build_modules(cfg)


def compare_phase(cfg, phase_index: int, repeats: int) -> dict[str, Any]:
    """Alternate framework and plain runs of one phase; medians of steady-state images/s.

    Each run starts as a phase does (a fresh optimizer) and times its second epoch, so the
    optimizer's first-step allocations and the fit's start-up weigh on neither side.
    """
    phases, datamodule, modules = phase_setup(cfg)
    phase = phases[phase_index]
    framework_module = modules[phase.module]
    plain_module = copy.deepcopy(framework_module)
    apply_phase(plain_module, phase)
    loader = datamodule.train_dataloader()
    framework, plain = [], []
    for repeat in range(repeats):  # alternate which goes first, so drift hits both alike
        for which in ("framework", "plain") if repeat % 2 == 0 else ("plain", "framework"):
            if which == "framework":
                seconds, images = lightning_epoch(
                    cfg, framework_module, datamodule, phase, phase_index
                )
                framework.append(images / seconds)
            else:
                seconds, images = plain_phase_epoch(plain_module, loader)
                plain.append(images / seconds)
    return {
        "phase": phase.name,
        "framework_images_per_s": statistics.median(framework),
        "plain_images_per_s": statistics.median(plain),
        "ratio": statistics.median(framework) / statistics.median(plain),
        "torch_threads": torch.get_num_threads(),
    }


def phase2_cost_vs_phase3(cfg, repeats: int) -> dict[str, Any]:
    """Framework images/s of phases 2 and 3 for one backbone; phase 3's rate over phase 2's.

    Phase 2 adds the enhancer's forward and backward to a no_grad, eval-mode stage-1 forward;
    phase 3 adds them to stage 1's full forward and backward. So the share falls as stage 1
    grows relative to the fixed 76,289-weight, full-resolution enhancer.
    """
    phases, datamodule, modules = phase_setup(cfg)
    rates = {}
    for index in (1, 2):
        phase = phases[index]
        runs = [
            lightning_epoch(cfg, modules[phase.module], datamodule, phase, index)
            for _ in range(repeats)
        ]
        rates[phase.name] = statistics.median(images / seconds for seconds, images in runs)
    enhance, finetune = (rates[phases[i].name] for i in (1, 2))
    return {
        "backbone": cfg.backbone.name,
        "phase2_images_per_s": enhance,
        "phase3_images_per_s": finetune,
        "phase2_cost_vs_phase3": finetune / enhance,
    }
