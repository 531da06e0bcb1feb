"""Learning curves of a run: loss and validation Dice per epoch, phases one after another."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def read_phase_series(csv_path: Path, phases: list[dict[str, Any]]) -> dict[str, list]:
    """Per metric, (global epoch, value) points and the epochs where phases start."""
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    series: dict[str, list[tuple[float, float]]] = {
        "train loss": [],
        "val loss": [],
        "val dice": [],
    }
    boundaries, offset = [], 0
    for phase in phases:
        name, output = phase["name"], phase["output"]
        keys = {
            "train loss": f"{name}/train/loss",
            "val loss": f"{name}/val/loss",
            "val dice": f"{name}/val/{output}/dice",
        }
        for label, key in keys.items():
            for row in rows:
                if row.get(key) not in (None, ""):
                    series[label].append((offset + int(row["epoch"]) + 1, float(row[key])))
        boundaries.append(offset)
        offset += phase["epochs"]
    return {"series": series, "boundaries": boundaries, "names": [p["name"] for p in phases]}


#: how each phase ended, written under its name (early stopping or the epoch cap)
STOP_LABELS = {"early_stopping": "(early stop)", "max_epochs": "(epoch cap)"}


def plot_learning_curves(csv_path: Path, phases: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = read_phase_series(csv_path, phases)
    stops = {p.get("name"): p.get("stop_reason") for p in phases}
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label in ("train loss", "val loss"):
        points = sorted(data["series"][label])
        if points:
            ax_loss.plot(*zip(*points, strict=True), marker=".", label=label)
    points = sorted(data["series"]["val dice"])
    if points:
        ax_dice.plot(*zip(*points, strict=True), marker=".", color="tab:green", label="val dice")
    for ax in (ax_loss, ax_dice):
        for start, name in zip(data["boundaries"], data["names"], strict=True):
            ax.axvline(start + 0.5, color="gray", linestyle="--", linewidth=0.8)
            label = f"{name}\n{STOP_LABELS.get(stops.get(name), '')}".strip()
            ax.text(
                start + 0.6, 1.0, label, transform=ax.get_xaxis_transform(), fontsize=8, va="top"
            )
        ax.set_xlabel("epoch (all phases)")
        ax.legend(loc="lower left" if ax is ax_dice else "center right", fontsize=8)
    ax_loss.set_ylabel("BCE loss (log scale)")
    ax_loss.set_yscale("log")  # a first-epoch spike would flatten the rest of the curve
    ax_dice.set_ylabel("Dice")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
