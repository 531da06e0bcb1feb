"""The study behind ``python -m nucleiseg.study`` (``make study``): does stage 2 help?

Trains every arm of the study (``conf/study.yaml``: backbones x arms x seeds x splits) into
``<output_dir>/<split>/<backbone>/seed_<n>/<arm>/``, one ``nucleiseg.train`` process per run:

- phase 1 is trained once per (split, backbone, seed): the ``two_stage`` run trains it and
  every arm that starts with the same phase branches from it (``stage.branch_from``);
- interrupted at any point and started again, it continues: finished runs are never
  retrained, an unfinished one resumes from its last checkpoint (``resume=auto``);
- ``max_runs`` trains at most that many runs per call (a study in parts); the progress
  (runs done, left, failed) is in ``<output_dir>/study_progress.json`` and the report
  (``nucleiseg.report``) is rewritten after every call, and copied to ``docs_dir`` when set
  (``make study``: ``docs/study/``), also when a run of the call failed.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger("nucleiseg.study")
#: arms whose recipes start with the paper's phase 1: they branch from two_stage
BRANCHING_ARMS = ("base_extended", "enhance_no_image", "enhance_residual")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class StudyRun:
    split: str
    backbone: str
    seed: int
    arm: str
    run_dir: Path
    branch_from: Path | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.split}/{self.backbone}/seed_{self.seed}/{self.arm}"

    def command(self) -> list[str]:
        args = [*self.overrides, f"backbone={self.backbone}", f"stage={self.arm}",
                f"seed={self.seed}", f"paths.output_dir={self.run_dir}",
                f"hydra.run.dir={self.run_dir}"]  # fmt: skip
        if self.split != "default":  # "default": the dataset's own split (synthetic data)
            args.append(f"dataset.split_by={self.split}")
        if self.branch_from is not None:
            args.append(f"stage.branch_from={self.branch_from}")
        return [sys.executable, "-m", "nucleiseg.train", *args]


def plan(cfg: DictConfig) -> list[StudyRun]:
    """Every run, each two_stage run before the arms that branch from it."""
    out = Path(cfg.output_dir).resolve()
    overrides = [str(o) for o in cfg.overrides]
    unknown = set(cfg.arms) - {"two_stage", "base_wider", *BRANCHING_ARMS}
    if unknown:
        raise ValueError(f"study arms {sorted(unknown)} are not recipes the study knows")
    runs = []
    for split in [s or "default" for s in cfg.splits]:
        for backbone in cfg.backbones:
            arms = [*cfg.arms, *cfg.get("extra_arms", {}).get(backbone, [])]
            arms = ["two_stage"] + [a for a in dict.fromkeys(arms) if a != "two_stage"]
            for seed in cfg.seeds:
                base = out / str(split) / str(backbone) / f"seed_{seed}"
                for arm in arms:
                    source = base / "two_stage" if arm in BRANCHING_ARMS else None
                    runs.append(StudyRun(str(split), str(backbone), int(seed), arm,
                                         base / arm, source, overrides))  # fmt: skip
    return runs


def run_status(run_dir: Path) -> str:
    """``finished``, ``unfinished`` (started, resumable) or ``new``."""
    path = run_dir / "results.json"
    if not path.is_file():
        return "new"
    try:
        status = json.loads(path.read_text()).get("status")
    except (OSError, json.JSONDecodeError):
        return "unfinished"
    return "finished" if status == "finished" else "unfinished"


def run_study(cfg: DictConfig) -> dict[str, Any]:
    """Train what is not finished yet (at most ``max_runs``) and return the progress."""
    from nucleiseg.files.atomic import write_json_atomic

    runs = plan(cfg)
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = cfg.get("max_runs")
    trained, failed, seconds = 0, [], {}
    for index, run in enumerate(runs, start=1):
        if run_status(run.run_dir) == "finished":
            continue
        if budget is not None and trained >= budget:
            break
        if run.branch_from is not None and run_status(run.branch_from) != "finished":
            failed.append({"run": run.name, "error": f"{run.branch_from} did not finish"})
            continue
        log.info("[%d/%d] %s", index, len(runs), run.name)
        start = time.monotonic()
        done = subprocess.run(run.command(), cwd=ROOT)
        seconds[run.name] = round(time.monotonic() - start, 1)
        trained += 1
        if done.returncode != 0:
            failed.append({"run": run.name, "error": f"exit status {done.returncode}"})
            log.error("%s failed (exit status %d): see %s", run.name, done.returncode,
                      run.run_dir)  # fmt: skip
    statuses = [run_status(r.run_dir) for r in runs]
    progress = {
        "runs": len(runs),
        "finished": statuses.count("finished"),
        "left": len(runs) - statuses.count("finished"),
        "trained_this_call": trained,
        "seconds_this_call": seconds,
        "failed_this_call": failed,
        "left_runs": [r.name for r, s in zip(runs, statuses, strict=True) if s != "finished"],
    }
    write_json_atomic(out / "study_progress.json", progress)
    return progress


def publish(output_dir: Path, docs_dir: Path) -> list[Path]:
    """Copy the progress, report and figures of ``output_dir`` into ``docs_dir``.

    Only those files are replaced; anything else there (a README) is left as it is.
    """
    docs_dir.mkdir(parents=True, exist_ok=True)
    names = ["study_progress.json", "report.md", "report.csv"]
    sources = [output_dir / n for n in names] + sorted(output_dir.glob("figure_*.png"))
    copied = []
    for source in sources:
        if source.is_file():
            shutil.copy2(source, docs_dir / source.name)
            copied.append(docs_dir / source.name)
    return copied


def study_call(cfg: DictConfig) -> int:
    """One call of the study: train, report, publish; the exit status (1: a run failed).

    The report and its copy in ``docs_dir`` are written even when a run failed, so a part
    with one broken run still leaves the rest of its results.
    """
    from nucleiseg.analysis.report import report

    progress = run_study(cfg)
    log.info("study: %d of %d runs finished, %d left", progress["finished"], progress["runs"],
             progress["left"])  # fmt: skip
    out = Path(cfg.output_dir)
    if progress["finished"]:
        report(out)
    if cfg.get("docs_dir"):
        copied = publish(out, Path(cfg.docs_dir))
        log.info("copied %d files to %s", len(copied), cfg.docs_dir)
    if progress["failed_this_call"]:
        log.error("failed: %s", json.dumps(progress["failed_this_call"], indent=1))
        return 1
    return 0
