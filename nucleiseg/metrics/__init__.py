"""Segmentation metrics (torchmetrics collections)."""
