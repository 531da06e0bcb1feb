"""What a finished run leaves for people: figures in its run dir, and on the dashboard.

Writes ``figures/overlays.png`` (the paper's Figure 2/3 layout), ``figures/predictions.npz``
(for sweep-level figures) and ``figures/learning_curves.png``; where a W&B logger is
attached, logs the test metrics as a ``wandb.Table`` and the figures as images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger

from nucleiseg.viz.curves import plot_learning_curves
from nucleiseg.viz.snapshots import FigureSnapshots

log = logging.getLogger(__name__)
METRICS = ("precision", "recall", "dice", "iou")


def test_table_rows(results: dict[str, Any]) -> list[list[Any]]:
    """One row per tested output: [name, precision, recall, dice, iou]."""
    return [[name] + [values[m] for m in METRICS] for name, values in results["test"].items()]


def publish_run_outputs(
    run_dir: Path, results: dict[str, Any], snapshots: FigureSnapshots, loggers: list[Any]
) -> dict[str, Path]:
    figures: dict[str, Path] = {}
    overlay = snapshots.save(run_dir / "figures")
    if overlay is not None:
        figures["overlays"] = overlay
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            csv_path = Path(logger.log_dir) / "metrics.csv"
            if csv_path.is_file():
                path = run_dir / "figures" / "learning_curves.png"
                plot_learning_curves(csv_path, results["phases"], path)
                figures["learning_curves"] = path
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.log_table(
                key="test/metrics", columns=["output", *METRICS], data=test_table_rows(results)
            )
            for name, path in figures.items():
                logger.log_image(key=f"figures/{name}", images=[str(path)])
    return figures


def close_loggers(loggers: list[Any]) -> None:
    """Finish W&B runs so that the next run in this process starts its own."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
            logger.experiment.finish()
