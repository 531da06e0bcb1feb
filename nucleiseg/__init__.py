"""nucleiseg: two-stage cell-nuclei segmentation in H&E histopathology.

Implements "A Novel Two-Stage Deep Learning Method for Enhanced Cell Nuclei Segmentation"
(CVR 2025) with PyTorch Lightning and Hydra.
"""

__version__ = "0.1.0"
