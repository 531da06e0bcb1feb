"""nucleiseg: two-stage cell-nuclei segmentation in H&E histopathology.

Implements "A Novel Two-Stage Deep Learning Method for Enhanced Cell Nuclei Segmentation"
(CVR 2025) with PyTorch Lightning and Hydra.
"""

__version__ = "0.1.0"

from omegaconf import OmegaConf

# ${mul:a,b} in configs (e.g. a control's epoch budget = 2 x stage.max_epochs)
OmegaConf.register_new_resolver("mul", lambda a, b: int(a) * int(b), replace=True)
# ${cpu_precision:} : bf16-mixed where the CPU computes bf16 natively, else 32-true


def _cpu_precision() -> str:
    from nucleiseg.training.precision import cpu_precision  # imports torch: only when resolved

    return cpu_precision()


OmegaConf.register_new_resolver("cpu_precision", _cpu_precision, replace=True)
