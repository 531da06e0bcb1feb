"""LightningModules wrapping stage 1 alone and the two-stage model."""

from nucleiseg.lightning.stage1 import Stage1Module
from nucleiseg.lightning.two_stage import TwoStageModule

__all__ = ["Stage1Module", "TwoStageModule"]
