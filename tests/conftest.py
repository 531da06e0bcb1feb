"""Shared fixtures: Hydra composition of the real configs, and one smoke run per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"


def compose_config(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The config a command line would give, with the run dir pointed at ``output_dir``."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def smoke_overrides(*extra: str) -> list[str]:
    return ["experiment=smoke", "trainer.enable_progress_bar=false", *extra]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One full three-phase smoke run of U-Net, shared by the tests that read its outputs."""
    from nucleiseg.training import train

    run_dir = tmp_path_factory.mktemp("smoke_run")
    cfg = compose_config(smoke_overrides(), run_dir)
    return run_dir, train(cfg)


def shared_dataset(name: str) -> Path:
    """A folder of ../shared/data; skipped when absent, but a failure under CI=true."""
    path = SHARED_DATA / name
    if not path.is_dir():
        message = f"real test data '{path}' is missing (see ../shared/data/README.md)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
