"""Training throughput: nucleiseg (Lightning) vs a plain PyTorch loop, and phase costs."""

from __future__ import annotations

import copy
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from nucleiseg.lightning.phases import build_phases
from nucleiseg.training.builders import build_modules
from nucleiseg.training.phase_runner import run_phase


class EpochTimer(Callback):
    """Wall time of the training batches of each epoch (its validation excluded)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.batch_seconds: list[list[float]] = []  # per epoch: each step's wall time
        self.images = 0
        self._start, self._done, self._batch_start = 0.0, True, 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._done, self.images = time.perf_counter(), False, 0
        self.batch_seconds.append([])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batch_seconds[-1].append(time.perf_counter() - self._batch_start)
        self.images += len(batch["image"])

    def _stop(self) -> None:
        if not self._done:
            self.seconds.append(time.perf_counter() - self._start)
            self._done = True

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._stop()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop()


def plain_epoch(
    module, loader, optimizer, precision: str = "32-true", steps: list[float] | None = None
) -> tuple[float, int]:
    """The same steps without Lightning: forward, BCE, backward, Adam, on the module's device;
    under bf16 autocast where ``precision`` is Lightning's ``bf16-mixed``. Each step's wall
    time (batch to device .. optimizer step, as ``EpochTimer`` times Lightning's) goes to
    ``steps``."""
    module.train()
    device = next(module.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in precision)
    images, start = 0, time.perf_counter()
    for batch in loader:
        step_start = time.perf_counter()
        image = batch["image"].to(device)
        target = batch.get("targets", batch["mask"]).to(device)  # every output channel's
        weight = batch.get("instance_weight")
        weight = None if weight is None else weight.to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits, extra = module.compute_outputs(image, target)
            loss = module.loss(logits, target, weight) + extra
        loss.backward()
        optimizer.step()
        if steps is not None:
            steps.append(time.perf_counter() - step_start)
        images += len(image)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, images


def trainer_device(cfg) -> torch.device:
    """Where the plain loop runs: the GPU where the Trainer's accelerator is one."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")


def lightning_epoch(
    cfg, module, datamodule, phase, index, steps: list[float] | None = None
) -> tuple[float, int]:
    """A fresh phase fit of two epochs; the second (steady-state) epoch is timed, and its
    steps' wall times go to ``steps``."""
    with tempfile.TemporaryDirectory() as run_dir:
        timer = EpochTimer()
        loggers = [instantiate(c, save_dir=run_dir) for c in cfg.logger.values()]
        two_epochs = dataclasses.replace(phase, max_epochs=2, min_epochs=2)
        run_phase(cfg, two_epochs, index, module, datamodule, Path(run_dir), loggers,
                  extra_callbacks=[timer], test=False)  # fmt: skip
        if steps is not None:
            steps += timer.batch_seconds[1]
        return timer.seconds[1], timer.images


def module_optimizer(module) -> torch.optim.Optimizer:
    """The module's optimizer (``configure_optimizers`` returns it alone, or in a dict with
    its learning-rate scheduler)."""
    configured = module.configure_optimizers()
    return configured["optimizer"] if isinstance(configured, dict) else configured


def plain_phase_epoch(
    module, loader, precision: str = "32-true", steps: list[float] | None = None
) -> tuple[float, int]:
    """The plain loop's equivalent: a fresh Adam, two epochs, the second one timed."""
    optimizer = module_optimizer(module)
    plain_epoch(module, loader, optimizer, precision)
    return plain_epoch(module, loader, optimizer, precision, steps)


def phase_setup(cfg) -> tuple[list, Any, dict]:
    """The run's phases, its data module (set up for fitting) and fresh modules."""
    datamodule = instantiate(cfg.dataset.datamodule, split_output=None)
    datamodule.setup("fit")
    return build_phases(cfg), datamodule, build_modules(cfg)


def compare_phase(cfg, phase_index: int, repeats: int) -> dict[str, Any]:
    """Alternate framework and plain runs of one phase; medians of steady-state images/s and
    of the per-round framework / plain ratio.

    Each run starts as a phase does (a fresh optimizer) and times its second epoch, so the
    optimizer's first-step allocations and the fit's start-up weigh on neither side.
    """
    phases, datamodule, modules = phase_setup(cfg)
    phase = phases[phase_index]
    framework_module = modules[phase.module]
    plain_module = copy.deepcopy(framework_module).to(trainer_device(cfg))
    plain_module.configure_phase(phase)
    precision = str(cfg.trainer.get("precision", "32-true"))
    loader = datamodule.train_dataloader()
    framework, plain = [], []
    framework_steps: list[float] = []
    plain_steps: list[float] = []
    for repeat in range(repeats):  # alternate which goes first, so drift hits both alike
        for which in ("framework", "plain") if repeat % 2 == 0 else ("plain", "framework"):
            if which == "framework":
                seconds, images = lightning_epoch(
                    cfg, framework_module, datamodule, phase, phase_index, framework_steps
                )
                framework.append(images / seconds)
            else:
                seconds, images = plain_phase_epoch(plain_module, loader, precision, plain_steps)
                plain.append(images / seconds)
    return {
        "phase": phase.name,
        "framework_images_per_s": statistics.median(framework),
        "plain_images_per_s": statistics.median(plain),
        # each round's pair ran back to back: the median of their ratios shrugs off drift
        "ratio": statistics.median(f / p for f, p in zip(framework, plain, strict=True)),
        "framework_runs": framework,
        "plain_runs": plain,
        # the median step over every steady epoch's steps: a spike of the shared machine
        # moves one step, not the figure (a per-epoch ratio moves with every spike in it)
        "step_ratio": statistics.median(plain_steps) / statistics.median(framework_steps),
        "framework_step_ms": 1000 * statistics.median(framework_steps),
        "plain_step_ms": 1000 * statistics.median(plain_steps),
        "torch_threads": torch.get_num_threads(),
    }


def phase2_cost_vs_phase3(cfg, repeats: int) -> dict[str, Any]:
    """Framework images/s of phases 2 and 3 for one backbone; phase 3's rate over phase 2's.

    The two phases' epochs alternate round after round, so drift in the machine's speed
    (minutes-long swings of 30 % on shared CPUs) hits both alike. Phase 2 adds the enhancer's
    forward and backward to a no_grad, eval-mode stage-1 forward; phase 3 adds them to stage
    1's full forward and backward. So the share falls as stage 1 grows relative to the fixed
    76,289-weight, full-resolution enhancer.
    """
    phases, datamodule, modules = phase_setup(cfg)
    rates: dict[int, list[float]] = {1: [], 2: []}
    steps: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for index in rates:
            phase = phases[index]
            seconds, images = lightning_epoch(
                cfg, modules[phase.module], datamodule, phase, index, steps[index]
            )
            rates[index].append(images / seconds)
    enhance, finetune = (statistics.median(rates[i]) for i in (1, 2))
    return {
        "backbone": cfg.backbone.name,
        "phase2_images_per_s": enhance,
        "phase3_images_per_s": finetune,
        "phase2_cost_vs_phase3": finetune / enhance,
        # the same share from the median step of each phase (robust to the machine's spikes)
        "phase2_step_cost_vs_phase3": statistics.median(steps[1]) / statistics.median(steps[2]),
    }


def interleaved_ms(steps: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median wall time (ms) of each step, run in turn round after round, so drift in the
    machine's speed hits them all alike; two warm-up rounds first."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(repeats + 2):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_index >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def phase_step_breakdown(cfg, repeats: int) -> dict[str, Any]:
    """Where a step of phases 2 and 3 spends its time, in plain PyTorch on one training batch.

    Phase 2 = stage 1's no_grad forward + the enhancer's forward and backward; phase 3 = the
    forward and backward of both. Their ratio is the share no training loop can beat with
    these kernels: compare it with the framework's measured phase 2 / phase 3 cost.
    """
    phases, datamodule, modules = phase_setup(cfg)
    module = modules["two_stage"]
    batch = next(iter(datamodule.train_dataloader()))
    image, mask = batch["image"], batch["mask"]
    memory_format = torch.channels_last if cfg.get("channels_last") else torch.preserve_format
    image = image.contiguous(memory_format=memory_format)
    enhancer_params = list(module.enhancer.parameters())
    all_params = list(module.parameters())

    def stage1_forward() -> torch.Tensor:
        with torch.no_grad():
            module.stage1.eval()
            return module.stage1(image)

    enhancer_input = torch.cat([image, torch.sigmoid(stage1_forward())], dim=1)

    def enhancer_step() -> None:  # phase 2's trainable part: grads for the enhancer only
        loss = module.loss({"two_stage": module.enhancer(enhancer_input)}, mask)
        torch.autograd.grad(loss, enhancer_params)

    def finetune_step() -> None:  # phase 3: both networks, stage 1 in train mode
        module.stage1.train()
        logits, extra = module.compute_outputs(image, mask)
        torch.autograd.grad(module.loss(logits, mask) + extra, all_params, allow_unused=True)

    module.configure_phase(phases[2])  # everything trainable; each step picks its own grads
    ms = interleaved_ms(
        {"stage1": stage1_forward, "enhancer": enhancer_step, "both": finetune_step}, repeats
    )
    return {
        "backbone": cfg.backbone.name,
        "batch_size": len(image),
        "stage1_no_grad_forward_ms": ms["stage1"],
        "enhancer_forward_backward_ms": ms["enhancer"],
        "both_forward_backward_ms": ms["both"],
        "kernel_floor_phase2_vs_phase3": (ms["stage1"] + ms["enhancer"]) / ms["both"],
    }
