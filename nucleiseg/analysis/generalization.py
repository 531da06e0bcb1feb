"""The generalization matrix behind ``python -m nucleiseg.generalization``: how far a model
travels.

Trains a recipe on each source alone and on their mix (``conf/generalization.yaml``:
``train``, a row each), tunes each model's post-processing on its own training data's
validation split (never a test split), scores every model on every test set (``test``, a
column each, plus any ``extra_test`` folders scored whole) and writes ``matrix.csv``,
``matrix.md`` and ``matrix.png`` into ``output_dir``: pixel Dice, AJI, PQ, detection F1 and
count error, for stage 1 alone (the phase-1 checkpoint) and the two-stage model.

Every step is one ``nucleiseg.train`` / ``tune_postprocess`` / ``evaluate`` process whose
output decides whether it is done: a second call trains, tunes and scores only what is
missing (an unfinished training resumes, ``resume=auto``), as ``make study`` does.
``split=val`` scores the validation splits of the test sets instead: the
leave-one-source-out comparison that chooses a recipe without touching a test split.
``restain_like={name: slide or image}`` adds, for every test set, a column of the same images
re-stained as that unlabelled slide of another lab (``evaluate restain_like``): how far each
model carries to a stain no source has.
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nucleiseg.analysis.study import ROOT, run_status

log = logging.getLogger("nucleiseg.generalization")
#: the models scored per training run: name -> (checkpoint phase, output scored)
MODELS = {"stage1": ("stage1", "stage1"), "two_stage": ("finetune", "two_stage")}
COLUMNS = ("dice", "aji", "pq", "det_f1", "count_error_pct")
HEADINGS = {"dice": "pixel Dice", "aji": "AJI", "pq": "PQ", "det_f1": "detection F1",
            "count_error_pct": "count error (%)"}  # fmt: skip


@dataclass
class Step:
    """One process of the matrix and the file that says it is done."""

    name: str
    module: str  # nucleiseg.train, nucleiseg.tune_postprocess or nucleiseg.evaluate
    args: list[str]
    done_file: Path

    def done(self) -> bool:
        if self.module == "nucleiseg.train":
            return run_status(self.done_file.parent) == "finished"
        return self.done_file.is_file()

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]


def scored_split(cfg: DictConfig) -> str:
    """The split of the test sets that is scored: ``test``, or ``val`` to choose a recipe."""
    split = str(cfg.get("split") or "test")
    if split not in ("test", "val"):
        raise ValueError(f"generalization: split={split!r}; choose test or val")
    return split


def eval_dir(out: Path, row: str, split: str, model: str, column: str) -> Path:
    """Where training run ``row``'s ``model`` is scored on ``column``'s ``split``."""
    return out / "runs" / row / "eval" / split / model / column


def restain_targets(cfg: DictConfig) -> dict[str, Path]:
    """``restain_like``'s name -> slide or image, each checked to exist."""
    targets = {}
    for name, path in (cfg.get("restain_like") or {}).items():
        path = Path(str(path)).expanduser()
        if not path.is_file():
            raise ValueError(
                f"generalization: restain_like.{name} '{path}' does not exist; give an "
                "unlabelled slide or image of the lab whose stain to score under"
            )
        targets[str(name)] = path.resolve()
    return targets


def test_sets(cfg: DictConfig) -> dict[str, list[str]]:
    """Column name -> the overrides that select its images (``extra_test`` folders are
    scored whole: every image is a test image); then each of them re-stained as each
    ``restain_like`` target (``<column>_like_<name>``)."""
    columns = {str(k): [str(o) for o in v] for k, v in (cfg.test or {}).items()}
    for folder in cfg.get("extra_test") or []:
        name = Path(str(folder)).name
        if name in columns:
            raise ValueError(f"extra_test folder '{folder}' is named like test set '{name}'")
        columns[name] = ["dataset=folder", f"dataset.root={folder}", "whole_dataset=true"]
        if cfg.get("extra_test_mpp") is not None:
            columns[name].append(f"dataset.mpp={cfg.extra_test_mpp}")
    restained = {
        f"{column}_like_{name}": [*selection, f"restain_like={path}"]
        for name, path in restain_targets(cfg).items()
        for column, selection in columns.items()
    }
    return {**columns, **restained}


def plan(cfg: DictConfig) -> list[Step]:
    """Every step, each training before the tuning and scoring of its models."""
    out = Path(cfg.output_dir).resolve()
    if not cfg.train:
        raise ValueError("generalization: `train` names no training run (name: [overrides])")
    unknown = set(cfg.models) - set(MODELS)
    if unknown:
        raise ValueError(
            f"generalization: models {sorted(unknown)} unknown; choose from {list(MODELS)}"
        )
    split, columns = scored_split(cfg), test_sets(cfg)
    tune_overrides = [str(o) for o in cfg.get("tune") or []]
    steps = []
    for row, overrides in cfg.train.items():
        overrides = [str(o) for o in overrides]
        run_dir = out / "runs" / str(row)
        where = [f"paths.output_dir={run_dir}", f"hydra.run.dir={run_dir}"]
        steps.append(Step(f"{row}: train", "nucleiseg.train", [*overrides, *where],
                          run_dir / "results.json"))  # fmt: skip
        for model in cfg.models:
            phase, _ = MODELS[model]
            tune_dir = run_dir / "tuning" / model
            tuned = tune_dir / "tuned.ckpt"  # the step's own: an interrupted one is redone
            # (overwrite=true), as it is done only once postprocess_tuning.json is written
            steps.append(Step(
                f"{row}: tune {model}", "nucleiseg.tune_postprocess",
                [*overrides, f"ckpt={run_dir / 'checkpoints' / phase / 'best.ckpt'}",
                 f"tuned_ckpt={tuned}", f"paths.output_dir={tune_dir}",
                 f"hydra.run.dir={tune_dir}", "overwrite=true", *tune_overrides],
                tune_dir / "postprocess_tuning.json",
            ))  # fmt: skip
            for column, selection in columns.items():
                scored = eval_dir(out, str(row), split, model, column)
                chosen = [] if "whole_dataset=true" in selection else [f"split={split}"]
                steps.append(Step(
                    f"{row}: {model} on {column}", "nucleiseg.evaluate",
                    [*selection, *chosen, f"ckpt={tuned}", "trainer.precision=32-true",
                     f"paths.output_dir={scored}", f"hydra.run.dir={scored}"],
                    scored / "results.json",
                ))  # fmt: skip
    return steps


def run_steps(steps: list[Step]) -> dict[str, Any]:
    """Run every step not done yet; a failed step skips what depends on it (the same row's
    later steps that need its output) and the rest goes on."""
    failed: list[dict[str, str]] = []
    seconds: dict[str, float] = {}
    broken_rows: set[str] = set()
    for index, step in enumerate(steps, start=1):
        row = step.name.split(":")[0]
        if step.done():
            continue
        if row in broken_rows:
            failed.append({"step": step.name, "error": "an earlier step of this row failed"})
            continue
        log.info("[%d/%d] %s", index, len(steps), step.name)
        start = time.monotonic()
        done = subprocess.run(step.command(), cwd=ROOT)
        seconds[step.name] = round(time.monotonic() - start, 1)
        if done.returncode != 0 or not step.done():
            failed.append({"step": step.name, "error": f"exit status {done.returncode}"})
            log.error("%s failed (exit status %d)", step.name, done.returncode)
            if step.module != "nucleiseg.evaluate":
                broken_rows.add(row)
    return {"steps": len(steps), "done": sum(s.done() for s in steps),
            "seconds_this_call": seconds, "failed_this_call": failed}  # fmt: skip


def cell(results_path: Path, output: str) -> dict[str, float] | None:
    """The matrix's figures from one evaluation's ``results.json`` (None: not scored)."""
    if not results_path.is_file():
        return None
    test = json.loads(results_path.read_text())["test"][output]
    objects = test.get("objects", {})
    count = objects.get("count_error_pct")
    if count is None:  # results.json written before count_error_pct existed (session 49)
        true = objects.get("true_count") or 0.0
        count = 100 * float(objects.get("count_error", 0.0)) / true if true else float("nan")
    return {
        "dice": float(test["dice"]),
        "aji": float(objects.get("aji", float("nan"))),
        "pq": float(objects.get("pq", float("nan"))),
        "det_f1": float(objects.get("det_f1", float("nan"))),
        "count_error_pct": float(count),  # signed: over-counting is positive
    }


def collect(cfg: DictConfig) -> list[dict[str, Any]]:
    """A row per (training run, model, test set), with its figures or None."""
    out = Path(cfg.output_dir).resolve()
    split, columns = scored_split(cfg), list(test_sets(cfg))
    rows = []
    for train_row in cfg.train:
        for model in cfg.models:
            for column in columns:
                path = eval_dir(out, str(train_row), split, model, column) / "results.json"
                rows.append({"train": str(train_row), "model": model, "test": column,
                             "split": split, "figures": cell(path, MODELS[model][1])})  # fmt: skip
    return rows


def training_record(run_dir: Path) -> str:
    """Wall time and stop reason per phase of a finished training run."""
    path = run_dir / "results.json"
    if not path.is_file():
        return "not trained"
    phases = json.loads(path.read_text()).get("phases", [])
    minutes = sum(p.get("wall_seconds") or 0 for p in phases) / 60
    stops = ", ".join(f"{p['name']} {p['epochs']} ep. ({p['stop_reason']})" for p in phases)
    return f"{minutes:.1f} min: {stops}"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["train", "model", "test", "split", *COLUMNS])
        for r in rows:
            values = [r["figures"][c] if r["figures"] else "" for c in COLUMNS]
            writer.writerow([r["train"], r["model"], r["test"], r["split"], *values])


def format_value(figures: dict[str, float] | None, column: str) -> str:
    if figures is None:
        return "-"
    value = figures[column]
    return f"{value:+.1f}" if column == "count_error_pct" else f"{value:.3f}"


def write_markdown(cfg: DictConfig, rows: list[dict[str, Any]], path: Path) -> None:
    out = Path(cfg.output_dir).resolve()
    columns = list(test_sets(cfg))
    split = scored_split(cfg)
    lines = [
        "# Generalization matrix",
        "",
        f"Rows: training runs; columns: the {split} split of each test set"
        " (folders of `extra_test`: every image). Post-processing tuned on each training"
        " run's own validation split. Written by `python -m nucleiseg.generalization`.",
    ]
    for name, target in restain_targets(cfg).items():
        lines += ["", f"`*_like_{name}`: the same images re-stained as `{target}`."]
    for model in cfg.models:
        for column in COLUMNS:
            lines += ["", f"## {model}: {HEADINGS[column]}", "",
                      "| trained on | " + " | ".join(columns) + " |",
                      "|---|" + "---|" * len(columns)]  # fmt: skip
            for train_row in cfg.train:
                cells = {r["test"]: r["figures"] for r in rows
                         if r["train"] == str(train_row) and r["model"] == model}  # fmt: skip
                values = [format_value(cells.get(c), column) for c in columns]
                lines.append(f"| {train_row} | " + " | ".join(values) + " |")
    lines += ["", "## Training runs", "", "| run | overrides | training |", "|---|---|---|"]
    for train_row, overrides in cfg.train.items():
        args = " ".join(f"`{o}`" for o in overrides)
        lines.append(f"| {train_row} | {args} | {training_record(out / 'runs' / str(train_row))} |")
    path.write_text("\n".join(lines) + "\n")


def write_heatmap(cfg: DictConfig, rows: list[dict[str, Any]], path: Path) -> None:
    """Pixel Dice and AJI, one panel per model and metric, rows = training runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    trains, columns = [str(t) for t in cfg.train], list(test_sets(cfg))
    split = scored_split(cfg)
    panels = [(m, c) for m in cfg.models for c in ("dice", "aji")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 0.6 * len(trains) + 2))
    for ax, (model, column) in zip(np.atleast_1d(axes), panels, strict=True):
        grid = np.full((len(trains), len(columns)), np.nan)
        for r in rows:
            if r["model"] == model and r["figures"] is not None:
                grid[trains.index(r["train"]), columns.index(r["test"])] = r["figures"][column]
        ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, "-" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                    color="white" if np.isnan(value) or value < 0.6 else "black")  # fmt: skip
        ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
        ax.set_yticks(range(len(trains)), trains)
        ax.set_title(f"{model}: {HEADINGS[column]}")
        ax.set_xlabel(f"test set ({split} split)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def generalization_call(cfg: DictConfig) -> int:
    """Run what is missing, then write the matrix (also when a step failed); exit status."""
    from nucleiseg.files.atomic import write_json_atomic

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "generalization.yaml", resolve=True)
    progress = run_steps(plan(cfg))
    write_json_atomic(out / "progress.json", progress)
    rows = collect(cfg)
    write_csv(rows, out / "matrix.csv")
    write_markdown(cfg, rows, out / "matrix.md")
    write_heatmap(cfg, rows, out / "matrix.png")
    log.info("matrix: %d of %d steps done; %s", progress["done"], progress["steps"],
             out / "matrix.md")  # fmt: skip
    if progress["failed_this_call"]:
        log.error("failed: %s", json.dumps(progress["failed_this_call"], indent=1))
        return 1
    return 0
