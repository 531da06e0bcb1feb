"""Datasets: sources that produce splits, and the shared LightningDataModule."""
