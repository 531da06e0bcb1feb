"""Shared behaviour of the LightningModules: phases, BCE loss, per-phase logging, torchmetrics.

A module owns what a training phase means for it (``configure_phase``): which parts get
gradients, which run in eval mode (a frozen part's BatchNorm statistics must not move),
the phase's learning rate and log prefix; ``train()`` honours that setting whatever
Lightning toggles around validation, as smp's ``freeze_encoder()`` sets a flag that its
``train()`` honours.

Metric keys are ``<phase>/<split>/<output>/<metric>`` (e.g. ``finetune/val/two_stage/dice``)
because every phase runs its own ``Trainer.fit`` and restarts the global step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MeanMetric

from nucleiseg.lightning.output_losses import check_loss_weights, known_channels, output_loss
from nucleiseg.lightning.phases import Phase
from nucleiseg.metrics.objects import MissedNuclei, NucleusMetrics
from nucleiseg.metrics.per_image import PerImageScores
from nucleiseg.metrics.pixel import pixel_metrics, summarise
from nucleiseg.models.dihedral import dihedral_tta
from nucleiseg.models.resampling import resample_batch, scaled_size
from nucleiseg.postprocessing.watershed import InstanceSettings, instances_from_probability

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
EVAL_SPLITS = ("val", "test")


def pixel_and_nucleus_summary(pixels: Any, objects: Any | None) -> dict[str, Any]:
    """One output's figures: its pixel metrics and, where given, its nucleus metrics."""
    summary: dict[str, Any] = summarise(pixels.compute())
    if objects is not None:
        summary["objects"] = {k: float(v) for k, v in objects.compute().items()}
    return summary


class NonFiniteError(FloatingPointError):
    """A loss or metric became NaN/inf; the message names the phase and step."""


class SegmentationModule(L.LightningModule):
    """Base for the stage modules. Subclasses define ``parts`` and ``compute_outputs``."""

    #: names of the probability maps this module produces, e.g. ("stage1", "two_stage")
    outputs: tuple[str, ...] = ()

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        threshold: float = 0.5,
        postprocess: dict[str, Any] | None = None,
        scheduler: SchedulerFactory | None = None,
        channels: Sequence[str] = ("nucleus",),
        loss_weights: Mapping[str, float] | None = None,
        outputs: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if outputs is not None:  # a module whose outputs are its members' (an ensemble)
            self.outputs = tuple(outputs)
        self.scheduler_factory = scheduler
        # what the networks output (conf/output_kind/): "nucleus" first, then instance-aware maps
        self.channels = known_channels(channels)
        self.loss_weights = check_loss_weights(self.channels, loss_weights)
        settings = {**(postprocess or {"threshold": threshold}), "channels": self.channels}
        self.instance_settings = InstanceSettings(**settings)
        self.optimizer_factory = optimizer
        # set by configure_phase only
        self.phase = "train"  # log prefix
        self.phase_lr: float | None = None
        self.frozen_parts: frozenset[str] = frozenset()
        self.epoch_offset = 0  # epochs run in earlier phases: one axis across phases
        self.phase_index = 0
        # the composed backbone/model/postprocess config, stored in every checkpoint so that
        # predict/evaluate/export can rebuild the model from the checkpoint alone
        self.model_config: dict[str, Any] | None = None
        # whole-image stain normalisation the model was trained with (set by build_modules)
        self.stain_normalizer: Callable[[np.ndarray], np.ndarray] | None = None
        # µm per pixel the networks were trained at (set by build_modules; None: unknown)
        self.mpp: float | None = None
        # µm per pixel of what evaluation and inference feed in (set_input_mpp)
        self.input_mpp: float | None = None
        # evaluation outputs averaged over the 8 dihedral views (evaluate/tune_postprocess tta=)
        self.tta = False
        # whether the stored post-processing was tuned on such averaged maps (load_model)
        self.tuned_with_tta = False
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{output}": pixel_metrics(threshold)
                for split in EVAL_SPLITS
                for output in self.outputs
            }
        )
        # nucleus-level metrics on the test split (watershed instances of each output)
        self.object_metrics = nn.ModuleDict({o: NucleusMetrics() for o in self.outputs})
        self.missed_nuclei = MissedNuclei() if len(self.outputs) > 1 else None
        self.per_image = nn.ModuleDict({o: PerImageScores(threshold) for o in self.outputs})
        self.threshold = threshold
        # several sources (dataset=mix): their names in loader order and sampling weights,
        # with metrics of their own (configure_sources); empty for one dataset
        self.source_weights: dict[str, float] = {}
        self.source_metrics = nn.ModuleDict()

    # -- several sources (dataset=mix) ----------------------------------------------------
    def setup(self, stage: str) -> None:
        """Metrics per source when the datamodule has several (before Lightning moves the
        module to its device, so they move with it)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        self.configure_sources(getattr(datamodule, "source_weights", None) or {})

    def configure_sources(self, weights: Mapping[str, float]) -> None:
        """Evaluate each of several sources apart: ``weights`` (source name -> sampling weight,
        in the order of the evaluation loaders) get their own pixel and nucleus metrics and a
        mean loss, and the validation loss that early stopping watches is their weighted
        mean. One source (or none) keeps the single set of metrics."""
        weights = dict(weights) if len(weights) > 1 else {}
        if weights == self.source_weights:
            return
        self.source_weights = weights
        metrics: dict[str, nn.Module] = {}
        for source in weights:
            for split in EVAL_SPLITS:
                metrics[f"{split}_{source}_loss"] = MeanMetric()
                for output in self.outputs:
                    metrics[f"{split}_{source}_{output}"] = pixel_metrics(self.threshold)
            for output in self.outputs:
                metrics[f"objects_{source}_{output}"] = NucleusMetrics()
        self.source_metrics = nn.ModuleDict(metrics).to(self.device)

    def _source_of(self, split: str, dataloader_idx: int) -> str | None:
        if split not in EVAL_SPLITS or not self.source_weights:
            return None
        return list(self.source_weights)[dataloader_idx]

    # -- to implement (``loss`` where the final output's alone is not it) -------------------
    @property
    def parts(self) -> dict[str, nn.Module]:
        """Named sub-networks that phases freeze or train (``stage1``, ``enhancer``)."""
        raise NotImplementedError

    def compute_outputs(
        self, image: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Logits per output name, and extra loss terms (auxiliary heads, given ``target``)."""
        raise NotImplementedError

    def loss(
        self,
        logits: dict[str, torch.Tensor],
        target: torch.Tensor,
        instance_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The training loss; ``target`` (N, C, H, W) holds the output's channels. By
        default the loss of the module's final output (its last in ``outputs``)."""
        return self.output_loss(logits[self.outputs[-1]], target, instance_weight)

    def output_loss(
        self, logits: torch.Tensor, target: torch.Tensor, instance_weight: torch.Tensor | None
    ) -> torch.Tensor:
        """The loss of one output's channels (nucleus BCE, and each instance-aware channel's)."""
        return output_loss(logits, target, self.channels, self.loss_weights, instance_weight)

    # -- phases ---------------------------------------------------------------------------
    def configure_phase(self, phase: Phase, index: int = 0, epoch_offset: int = 0) -> None:
        """Enter ``phase``: its parts train (gradients, train mode), the others are frozen
        (no gradients, eval mode, kept so by ``train()``); its learning rate and log prefix.
        """
        parts = self.parts
        missing = set(phase.trainable) - set(parts)
        if missing:
            raise ValueError(
                f"phase '{phase.name}' trains {sorted(missing)}, which "
                f"{type(self).__name__} lacks (it has {sorted(parts)})"
            )
        self.frozen_parts = frozenset(set(parts) - set(phase.trainable))
        for name, part in parts.items():
            part.requires_grad_(name not in self.frozen_parts)
        self.phase, self.phase_lr = phase.name, phase.lr
        self.phase_index, self.epoch_offset = index, epoch_offset
        self.train()

    def train(self, mode: bool = True) -> SegmentationModule:
        """Train mode for the parts the phase trains; frozen parts stay in eval mode."""
        super().train(mode)
        if mode:
            for name in self.frozen_parts:
                self.parts[name].eval()
        return self

    # -- the input's pixel grid -----------------------------------------------------------
    def set_input_mpp(self, input_mpp: float | None) -> None:
        """Evaluation and inference inputs are at ``input_mpp`` µm per pixel: they are
        resampled to the model's ``mpp`` and the outputs back to the input's grid, and the
        post-processing's pixel settings converted (None: inputs at the model's own)."""
        if input_mpp is not None and not input_mpp > 0:
            raise ValueError(f"input_mpp must be a positive µm per pixel, got {input_mpp}")
        self.input_mpp = input_mpp

    @property
    def input_pixels_per_model_pixel(self) -> float:
        """The side of one model pixel in input pixels (1.0 when either size is unknown)."""
        if self.mpp is None or self.input_mpp is None:
            return 1.0
        factor = float(self.mpp) / float(self.input_mpp)
        return 1.0 if abs(factor - 1.0) < 1e-3 else factor

    def input_settings(self, settings: InstanceSettings | None = None) -> InstanceSettings:
        """Post-processing settings (chosen at the model's grid) in the input's pixels."""
        chosen = replace(settings or self.instance_settings, channels=self.channels)
        return chosen.scaled(self.input_pixels_per_model_pixel)

    def _outputs_at_input_grid(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits at the input's grid: the input resampled to the model's and back; with
        ``tta``, the logits of the probabilities averaged over the 8 dihedral views."""
        if not self.tta:
            return self._plain_outputs_at_input_grid(image)

        def probabilities(batch: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self._plain_outputs_at_input_grid(batch)
            return {name: torch.sigmoid(value.float()) for name, value in logits.items()}

        averaged = dihedral_tta(probabilities, self.channels)(image)
        return {name: torch.logit(prob, eps=1e-6) for name, prob in averaged.items()}

    def _plain_outputs_at_input_grid(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        factor = self.input_pixels_per_model_pixel
        if factor == 1.0:
            return self.compute_outputs(image)[0]
        size = tuple(image.shape[-2:])
        logits = self.compute_outputs(resample_batch(image, scaled_size(size, 1 / factor)))[0]
        return {name: resample_batch(value, size) for name, value in logits.items()}

    # -- training -------------------------------------------------------------------------
    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._outputs_at_input_grid(image)

    def _shared_step(
        self, batch: dict[str, Any], split: str, dataloader_idx: int = 0
    ) -> torch.Tensor:
        image, target = batch["image"], batch.get("targets", batch["mask"])
        if split == "train":
            logits, extra_loss = self.compute_outputs(image, target)
        else:
            logits, extra_loss = self._outputs_at_input_grid(image), 0.0
        loss = self.loss(logits, target, batch.get("instance_weight")) + extra_loss
        source = self._source_of(split, dataloader_idx)
        # several sources: each its own loss; the pooled one is logged at the epoch's end
        key = f"{self.phase}/{split}/{source}/loss" if source else f"{self.phase}/{split}/loss"
        self.log(
            key,
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=split != "test",
            batch_size=image.shape[0],
            sync_dist=True,
            add_dataloader_idx=False,
        )
        if source:
            self.source_metrics[f"{split}_{source}_loss"].update(loss.detach(), image.shape[0])
        if split in EVAL_SPLITS:
            mask = batch["mask"].int()
            for output, value in logits.items():
                nucleus = torch.sigmoid(value[:, :1])  # pixel metrics: the nucleus channel
                self.metrics[f"{split}_{output}"].update(nucleus, mask)
                if source:
                    self.source_metrics[f"{split}_{source}_{output}"].update(nucleus, mask)
        if split == "test" and "instances" in batch:
            self._update_test_only_metrics(logits, batch, source)
        return loss

    def _update_test_only_metrics(
        self, logits: dict[str, torch.Tensor], batch: dict[str, Any], source: str | None = None
    ) -> None:
        """Nucleus-level metrics (watershed instances of each output) and per-image scores."""
        true = batch["instances"]
        predicted = {}
        settings = self.input_settings()
        for output, value in logits.items():
            prob = torch.sigmoid(value)
            maps = prob.float().cpu().numpy()  # (N, C, H, W): every channel post-processes
            predicted[output] = np.stack(
                [instances_from_probability(m if len(m) > 1 else m[0], settings) for m in maps]
            )
            self.object_metrics[output].update(predicted[output], true)
            if source:
                self.source_metrics[f"objects_{source}_{output}"].update(predicted[output], true)
            self.per_image[output].update(
                batch["index"], prob[:, :1], batch["mask"], predicted[output], true
            )
        if self.missed_nuclei is not None:
            self.missed_nuclei.update(predicted["stage1"], predicted["two_stage"], true)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"non-finite training loss ({loss.item()}) in phase '{self.phase}' at step "
                f"{self.global_step} (epoch {self.current_epoch}, batch {batch_idx}); the last "
                "good checkpoint is kept. Lower model.optimizer.lr or check the data."
            )
        return loss

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._shared_step(batch, "val", dataloader_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._shared_step(batch, "test", dataloader_idx)

    def _split_metrics(self, split: str) -> list[Any]:
        metrics = [self.metrics[f"{split}_{output}"] for output in self.outputs]
        metrics += [m for k, m in self.source_metrics.items() if k.startswith(f"{split}_")]
        if split == "test":
            metrics += [*self.object_metrics.values(), *self.per_image.values()]
            metrics += [m for k, m in self.source_metrics.items() if k.startswith("objects_")]
            metrics += [self.missed_nuclei] if self.missed_nuclei is not None else []
        return metrics

    def _reset_split_metrics(self, split: str) -> None:
        for metric in self._split_metrics(split):
            metric.reset()

    def split_results(self, split: str) -> dict[str, dict[str, Any]]:
        """The metrics of the last ``val`` or ``test`` epoch, per output (synced across DDP
        ranks by torchmetrics; computed once and cached until the next epoch starts)."""
        results: dict[str, dict[str, Any]] = {}
        for output in self.outputs:
            objects = self.object_metrics[output] if split == "test" else None
            summary = pixel_and_nucleus_summary(self.metrics[f"{split}_{output}"], objects)
            if split == "test":
                summary["per_image"] = self.per_image[output].compute()
            results[output] = summary
        if split == "test" and self.missed_nuclei is not None:
            missed = {k: int(v) for k, v in self.missed_nuclei.compute().items()}
            results["two_stage"]["nuclei_vs_stage1"] = missed
        for output in self.outputs:  # several sources: a row of each under every output
            if self.source_weights:
                results[output]["sources"] = {
                    s: self._source_results(split, s, output) for s in self.source_weights
                }
        return results

    def _source_results(self, split: str, source: str, output: str) -> dict[str, Any]:
        objects = self.source_metrics[f"objects_{source}_{output}"] if split == "test" else None
        return pixel_and_nucleus_summary(self.source_metrics[f"{split}_{source}_{output}"], objects)

    def _log_pooled_loss(self, split: str) -> None:
        """The sources' mean losses, weighted as the sources are sampled: the loss of the
        split that early stopping, checkpoints and the learning-rate schedule watch."""
        losses = {s: self.source_metrics[f"{split}_{s}_loss"] for s in self.source_weights}
        seen = {s: m for s, m in losses.items() if m.update_count > 0}
        if not seen:
            return
        total = sum(self.source_weights[s] for s in seen)
        pooled = sum(self.source_weights[s] * m.compute() for s, m in seen.items()) / total
        self.log(f"{self.phase}/{split}/loss", pooled, prog_bar=split != "test", sync_dist=True)

    def _log_split_metrics(self, split: str) -> None:
        # already synced by torchmetrics: every rank holds the same value
        if self.source_weights:
            self._log_pooled_loss(split)
        for output, summary in self.split_results(split).items():
            rows = {"": summary, **{f"{s}/": r for s, r in summary.get("sources", {}).items()}}
            for prefix, row in rows.items():
                self._log_summary(f"{self.phase}/{split}/{prefix}{output}", row)
        if split == "val":
            val_loss = self.trainer.callback_metrics.get(f"{self.phase}/val/loss")
            if val_loss is not None and not torch.isfinite(val_loss):
                raise NonFiniteError(
                    f"non-finite validation loss in phase '{self.phase}' at epoch "
                    f"{self.current_epoch}; the last good checkpoint is kept"
                )
            # one x-axis across phases (each phase's trainer restarts its step), and the phase
            self.log("epoch_total", float(self.epoch_offset + self.current_epoch), sync_dist=True)
            self.log("phase", float(self.phase_index), sync_dist=True)

    def _log_summary(self, key: str, summary: dict[str, Any]) -> None:
        for name, value in summary.items():
            if name == "objects":
                for metric, number in value.items():
                    self.log(f"{key}/objects/{metric}", number, sync_dist=True)
            elif isinstance(value, float):
                self.log(f"{key}/{name}", value, sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self._reset_split_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._reset_split_metrics("test")

    def on_validation_epoch_end(self) -> None:
        self._log_split_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_split_metrics("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model_config is not None:
            checkpoint["nucleiseg"] = {**self.model_config, "phase": self.phase}

    def configure_optimizers(self) -> Any:
        """A fresh optimizer over the trainable weights, at the phase's learning rate where it
        sets one, and the configured learning-rate schedule (``model.scheduler``, stepped
        per epoch on the phase's validation loss); each phase's fit calls this anew."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError(f"phase '{self.phase}' has no trainable weights")
        if self.optimizer_factory is None:
            optimizer = torch.optim.Adam(params, lr=self.phase_lr or 1e-4)
        elif self.phase_lr is not None:
            optimizer = self.optimizer_factory(params, lr=self.phase_lr)
        else:
            optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        schedule = {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch",
                    "monitor": f"{self.phase}/val/loss"}  # fmt: skip
        return {"optimizer": optimizer, "lr_scheduler": schedule}
