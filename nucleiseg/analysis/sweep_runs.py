"""Reading a sweep dir: every job's ``results.json``, sorted into finished runs, failed or
unfinished jobs, and files that are unreadable or not a training run's."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Sweep:
    finished: list[dict[str, Any]] = field(default_factory=list)
    incomplete: list[tuple[Path, str]] = field(default_factory=list)  # (job dir, why)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (results.json, why)


def on_paper_split(run: dict[str, Any]) -> bool:
    """Whether the run used the paper's image-level split (the default)."""
    return run.get("split_by", "image") in (None, "image")


def dataset_label(run: dict[str, Any]) -> str:
    """The dataset, with its split when not the paper's image-level one."""
    return run["dataset"] if on_paper_split(run) else f"{run['dataset']} ({run['split_by']} split)"


TRAINING_KEYS = ("dataset", "backbone", "stage", "seed", "status", "test", "phases")


def find_runs(sweep_dir: Path) -> Sweep:
    """Finished runs, and job dirs whose run failed or is unfinished."""
    sweep = Sweep()
    job_dirs = {p.parent for p in sweep_dir.rglob(".hydra")} | {
        p.parent for p in sweep_dir.rglob("results.json")
    }
    for job in sorted(job_dirs):
        path = job / "results.json"
        if not path.is_file():
            sweep.incomplete.append((job, "no results.json (failed or still running)"))
            continue
        try:
            results = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            sweep.unreadable.append((path, f"{type(err).__name__}: {err}"))
            continue
        missing = [k for k in TRAINING_KEYS if not isinstance(results, dict) or k not in results]
        if missing:  # an evaluate result, or a file of another tool
            sweep.unreadable.append((path, f"not a training run's results (no {missing})"))
            continue
        if results.get("status") != "finished":
            why = f"status '{results.get('status')}'"
            if results.get("error"):
                why += f": {results['error']}"
            sweep.incomplete.append((job, why))
            continue
        results["run_dir"] = str(job)
        results["dataset_label"] = dataset_label(results)
        sweep.finished.append(results)
    return sweep
