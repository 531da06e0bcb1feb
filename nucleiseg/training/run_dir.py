"""A run directory's policy: what a rerun may do with it (resume, refuse, overwrite), and
its ``results.json`` written atomically."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf

from nucleiseg.lightning.phases import Phase

log = logging.getLogger(__name__)

RUN_OUTPUTS = ("results.json", "config.yaml", "split.csv", "checkpoints", "csv", "figures", "wandb")
#: the resume decision of rank 0, inherited by the DDP ranks it starts
PREVIOUS_RUN_ENV = "NUCLEISEG_PREVIOUS_RUN"


#: config keys that may change between attempts at one run (where it runs, how it reports;
#: ``size`` only names the preset, whose widths are compared under ``backbone``)
VOLATILE_KEYS = ("resume", "overwrite", "paths", "logger", "figures", "size")
VOLATILE_TRAINER_KEYS = (
    "devices",
    "accelerator",
    "strategy",
    "num_nodes",
    "sync_batchnorm",
    "enable_progress_bar",
    "enable_model_summary",
    "log_every_n_steps",
)

#: callbacks that only watch or report (their ``_target_``): they may come and go between
#: attempts at one run. Every other callback is fingerprinted, since it may change what is
#: trained (SWA, gradient accumulation, pruning, ...); a callback class of one's own that
#: cannot change results says so with a class attribute ``changes_results = False``.
OBSERVING_CALLBACKS = frozenset(
    f"lightning.pytorch.callbacks.{name}"
    for name in (
        "LearningRateMonitor", "DeviceStatsMonitor", "TQDMProgressBar", "RichProgressBar",
        "ModelSummary", "RichModelSummary", "Timer", "ThroughputMonitor",
    )
)  # fmt: skip


def changes_results(callback: Any) -> bool:
    """Whether a configured callback may change a run's results (unknown: it may)."""
    target = callback.get("_target_") if isinstance(callback, dict) else None
    if not isinstance(target, str):
        return True
    if target in OBSERVING_CALLBACKS:
        return False
    from hydra.utils import get_class

    try:
        declared = getattr(get_class(target), "changes_results", True)
    except Exception:  # not importable here: fingerprint it
        return True
    return declared is not False


class RunExistsError(RuntimeError):
    """The run dir already holds a run that must not be overwritten."""


def comparable_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config, flat (``a.b.c``), without the keys that may change on resume."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in VOLATILE_KEYS:
        data.pop(key, None)
    for key in VOLATILE_TRAINER_KEYS:
        data.get("trainer", {}).pop(key, None)
    callbacks = data.get("callbacks") or {}
    for key in [k for k, v in callbacks.items() if not changes_results(v)]:
        callbacks.pop(key)
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            flat[prefix] = value

    walk(data, "")
    return flat


def config_fingerprint(cfg: DictConfig) -> str:
    """sha256 of the comparable config: equal fingerprints, the same experiment."""
    text = json.dumps(comparable_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_config(run_dir: Path, cfg: DictConfig, previous: dict[str, Any]) -> None:
    """Refuse to continue a run under another config; list the keys that differ."""
    stored = previous.get("config_fingerprint")
    if stored is None or stored == config_fingerprint(cfg):
        return
    saved_path = run_dir / "config.yaml"
    differing: list[str] = []
    if saved_path.is_file():
        saved = comparable_config(OmegaConf.load(saved_path))
        now = comparable_config(cfg)
        # a key absent from the saved config reads as null: keys added to conf/ since the
        # run began, at a null default, do not change what it trains
        differing = [
            f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
            for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)
        ]
        if not differing:
            added = sorted(set(now) - set(saved))
            log.info("resuming %s: its config.yaml lacks %s, null here as well", run_dir, added)
            return
    raise RunExistsError(
        f"'{run_dir}' holds an unfinished run begun with another config ("
        + ("; ".join(differing[:8]) or "its config.yaml is missing")
        + "); rerun with the same settings to resume it, or choose another run dir"
    )


def lock_run_dir(run_dir: Path) -> IO[str]:
    """Hold ``<run_dir>/.lock`` for this process's life; a second live run is refused."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = (run_dir / ".lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunExistsError(
            f"'{run_dir}' is in use by a live run (it holds {run_dir / '.lock'}); wait for it "
            "to end or choose another run dir"
        ) from None
    return handle  # the lock is the open file's: nothing is written, so reruns change no byte


def new_results(cfg: DictConfig, config_path: Path) -> dict[str, Any]:
    """The ``results.json`` record of a run that has not finished a phase yet."""
    return {
        "dataset": cfg.dataset.name,
        "split_by": cfg.dataset.get("split_by", "image"),
        "split_seed": cfg.dataset.get("split_seed"),
        "backbone": cfg.backbone.name,
        "size": (cfg.get("size") or {}).get("name"),
        "stage": cfg.stage.name,
        "seed": cfg.seed,
        "config": str(config_path.resolve()),
        "config_fingerprint": config_fingerprint(cfg),
        "status": "running",
        "phases": [],
        "test": {},
    }


def remove_run_outputs(run_dir: Path) -> None:
    log.warning("overwrite=true: removing the earlier run in %s", run_dir)
    for name in RUN_OUTPUTS:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def previous_run(
    run_dir: Path, cfg: DictConfig, phases: list[Phase], may_delete: bool = True
) -> dict[str, Any] | None:
    """The unfinished run to resume in ``run_dir``, or None to start afresh.

    A finished run is never touched without ``overwrite=true``; an unfinished one is
    continued (``resume=auto``) from its last checkpoint, in the phase it was in.
    """
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    if cfg.get("overwrite", False):
        if may_delete:
            remove_run_outputs(run_dir)
        return None
    previous = json.loads(path.read_text())
    if previous.get("status") == "finished":
        raise RunExistsError(
            f"'{run_dir}' holds a finished run; choose another run dir, or pass "
            "overwrite=true to replace it"
        )
    if cfg.get("resume", "auto") != "auto":
        raise RunExistsError(
            f"'{run_dir}' holds an unfinished run; resume=auto continues it, overwrite=true "
            "starts it again"
        )
    check_same_config(run_dir, cfg, previous)
    done = [p["name"] for p in previous.get("phases", [])]
    if done != [p.name for p in phases[: len(done)]]:
        raise RunExistsError(
            f"'{run_dir}' was trained with phases {done}, which do not start the phases "
            f"{[p.name for p in phases]} of this config; use another run dir"
        )
    log.info("resuming the run in %s after %d finished phase(s)", run_dir, len(done))
    return previous


def resolve_previous_run(
    run_dir: Path, cfg: DictConfig, phases: list[Phase], rank0: bool
) -> dict[str, Any] | None:
    """Rank 0 decides (before any write); the DDP ranks it starts inherit its decision."""
    if rank0 or PREVIOUS_RUN_ENV not in os.environ:
        previous = previous_run(run_dir, cfg, phases, may_delete=rank0)
        os.environ[PREVIOUS_RUN_ENV] = json.dumps(previous)
        return previous
    return json.loads(os.environ[PREVIOUS_RUN_ENV])
