"""The three-phase training run behind ``python -m nucleiseg.train``: orchestration only.

``train(cfg)`` builds the data, the modules and the phases from the Hydra config, runs each
phase with ``phase_runner.run_phase`` (the next phase starts from the best weights of the
one before) and writes ``results.json`` into the run directory after every phase.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from nucleiseg.files.atomic import write_json_atomic as write_results
from nucleiseg.lightning.phases import build_phases
from nucleiseg.training.branching import branched_phases
from nucleiseg.training.builders import build_loggers, build_modules, fit_stain_normalization
from nucleiseg.training.checkpoints import load_weights
from nucleiseg.training.phase_runner import reuse_phase, run_phase
from nucleiseg.training.process_control import (
    forward_sigusr1_as_sigterm,
    forward_submitit_preemption,
)
from nucleiseg.training.run_dir import (
    RunExistsError,
    lock_run_dir,
    new_results,
    resolve_previous_run,
)
from nucleiseg.training.run_outputs import close_loggers, publish_run_outputs
from nucleiseg.viz.snapshots import FigureSnapshots

log = logging.getLogger(__name__)
__all__ = ["RunExistsError", "train"]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run every phase of the recipe ``cfg.stage`` and return (and write) the run's results."""
    run_dir = Path(cfg.paths.output_dir)
    writer = rank_zero_only.rank == 0  # DDP ranks > 0 rerun this function: they only follow
    lock = lock_run_dir(run_dir) if writer else None  # one live run per run dir
    try:
        return _train(cfg, run_dir, writer)
    finally:
        if lock is not None:
            lock.close()


def _train(cfg: DictConfig, run_dir: Path, writer: bool) -> dict[str, Any]:
    phases = build_phases(cfg)
    previous = resolve_previous_run(run_dir, cfg, phases, rank0=writer)  # before any write
    if OmegaConf.is_missing(cfg.stage, "init_from"):
        raise ValueError(
            f"stage '{cfg.stage.name}' starts from trained weights: set "
            "stage.init_from=<run dir>/checkpoints/<phase>/best.ckpt"
        )
    results, loggers = new_results(cfg, run_dir / "config.yaml"), []
    # a new run may take its first phases from a finished run (stage.branch_from)
    branching = previous is None and cfg.stage.get("branch_from")
    branched = branched_phases(cfg, phases, run_dir) if branching else []
    done = (previous or {}).get("phases", []) or branched  # finished in earlier attempts
    if writer and previous is None:  # a resumed run keeps the config it was begun with
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        write_results(run_dir / "results.json", results)
    forward_sigusr1_as_sigterm()
    forward_submitit_preemption()
    try:  # from here on, a failure is recorded in results.json
        L.seed_everything(cfg.seed, workers=True)
        datamodule = instantiate(cfg.dataset.datamodule)
        fit_stain_normalization(cfg, datamodule)  # before the modules: checkpoints carry it
        modules = build_modules(cfg)
        if cfg.stage.init_from:
            load_weights(modules["two_stage"], cfg.stage.init_from)
        # Stage 1 is built first, so its initial weights depend on the seed alone; reseeding
        # makes data order and augmentation independent of the enhancer's size too: recipes
        # sharing phase 1 (two_stage, base_extended, enhance_no_image) train the same stage 1.
        L.seed_everything(cfg.seed, workers=True)
        loggers = build_loggers(cfg)
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        snapshots = FigureSnapshots(cfg.get("figures", {}).get("test_images", 0))
        for index, phase in enumerate(phases):
            module = modules[phase.module]
            if index < len(done):
                record = reuse_phase(module, done[index], run_dir)
            else:
                offset = sum(r["epochs"] for r in results["phases"])
                record = run_phase(cfg, phase, index, module, datamodule, run_dir, loggers,
                                   epoch_offset=offset, resume=previous is not None)  # fmt: skip
            if phase.test_as in ("stage1", "two_stage"):
                snapshots.record(module, datamodule, phase.test_as, phase.module)
            results["phases"].append(record)
            if "test" in datamodule.samples:  # names: the report pairs runs image by image
                results["test_images"] = list(datamodule.samples["test"].names)
            if phase.test_as:
                results["test"][phase.test_as] = record["test"][phase.module]
            if writer:
                write_results(run_dir / "results.json", results)
    except BaseException as err:
        status = "interrupted" if isinstance(err, KeyboardInterrupt | SystemExit) else "failed"
        results.update(status=status, error=f"{type(err).__name__}: {err}")
        # phases finished earlier and not walked again before the failure stay recorded
        results["phases"].extend(done[len(results["phases"]) :])
        if writer:
            write_results(run_dir / "results.json", results)
        close_loggers(loggers)
        raise
    results["status"] = "finished"
    if writer:
        write_results(run_dir / "results.json", results)
        publish_run_outputs(run_dir, results, snapshots, loggers)
        log.info("%s", results_summary(results))
        log.info("results written to %s", run_dir / "results.json")
    close_loggers(loggers)
    return results


def results_summary(results: dict[str, Any]) -> str:
    """One line of the run's test figures, e.g. ``test Dice (pixels pooled): stage1 0.907,
    stage2_frozen 0.749, two_stage 0.955; 116 s of training``."""
    rows = [f"{name} {row['dice']:.3f}" for name, row in results["test"].items() if "dice" in row]
    seconds = sum(p.get("wall_seconds") or 0 for p in results["phases"])
    return f"test Dice (pixels pooled): {', '.join(rows)}; {seconds:.0f} s of training"
