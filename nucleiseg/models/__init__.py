"""Stage-1 backbones and the stage-2 enhancement network (smp-style constructors)."""

from nucleiseg.models.classic import ClassicUNet, UNetPlusPlus
from nucleiseg.models.enhancer import EnhancementNet
from nucleiseg.models.micronet import MicroNet
from nucleiseg.models.padding import PadToMultiple
from nucleiseg.models.smp_backbones import build_smp_model

__all__ = [
    "ClassicUNet",
    "EnhancementNet",
    "MicroNet",
    "PadToMultiple",
    "UNetPlusPlus",
    "build_smp_model",
]
