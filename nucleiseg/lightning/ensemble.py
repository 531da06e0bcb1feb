"""Several trained models as one: their probability maps averaged.

nnU-Net ensembles the models of its five cross-validation folds by averaging their softmax
outputs (Isensee et al., Nature Methods 2021); here the members are models of one kind
(the same output channels, pixel size and stain normalisation: e.g. the seeds of one
recipe), each output's probabilities averaged channel by channel, so the instance-aware
channels (contour, distance, HV offsets: all linear in the maps) are averaged alike. The
ensemble is evaluated, tuned, exported and predicted like one model
(``nucleiseg.inference.ensembling`` writes and reads its one checkpoint file).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nucleiseg.lightning.base import SegmentationModule


def mean_probability_logits(
    per_member: Sequence[dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Each output's probabilities averaged over the members, as logits (what the module's
    metrics, losses and TTA expect)."""
    names = per_member[0].keys()
    return {
        name: torch.logit(
            torch.stack([torch.sigmoid(out[name].float()) for out in per_member]).mean(0),
            eps=1e-6,
        )
        for name in names
    }


class EnsembleModule(SegmentationModule):
    """Trained modules of one kind whose outputs are averaged; nothing in it trains."""

    def __init__(
        self,
        members: Sequence[SegmentationModule],
        postprocess: dict[str, Any] | None = None,
        threshold: float = 0.5,
    ) -> None:
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        first = members[0]
        super().__init__(
            threshold=threshold, postprocess=postprocess, channels=first.channels,
            outputs=first.outputs,
        )  # fmt: skip
        self.members = nn.ModuleList(members)
        self.mpp = first.mpp
        self.stain_normalizer = first.stain_normalizer

    @property
    def parts(self) -> dict[str, nn.Module]:
        return {}  # members are trained apart; an ensemble is only evaluated and applied

    def compute_outputs(
        self, image: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        per_member = [member.compute_outputs(image)[0] for member in self.members]
        return mean_probability_logits(per_member), image.new_zeros(())
