"""Experiment loggers. ``wandb_logger`` decides W&B's mode before a run starts.

W&B online with no API key fails at once, and with a key but no network only after a long
timeout; so without credentials or a reachable server this logs offline (and uploads no
checkpoints), saying in one line how to ``wandb sync`` later. ``WANDB_MODE`` set by the
user (``offline``, ``disabled``, ``online``) is respected.
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_server_reachable(timeout_s: float = 3.0) -> bool:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def sweep_group() -> str | None:
    """The sweep's name (its dir, e.g. 2026-11-24/10-00-00) inside a Hydra multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return "/".join(Path(HydraConfig.get().sweep.dir).parts[-2:])
    except (ImportError, ValueError):
        pass
    return None


def wandb_logger(
    save_dir: str,
    project: str = "nucleiseg",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    log_model: bool = False,
    offline: bool | None = None,
    **kwargs: Any,
):
    """A Lightning ``WandbLogger`` whose online/offline mode is decided up front."""
    from lightning.pytorch.loggers import WandbLogger

    mode = os.environ.get("WANDB_MODE", "").lower()
    if offline is None:
        if mode in ("offline", "disabled", "dryrun"):
            offline = True
        elif mode == "online":
            offline = False
        elif not wandb_credentials_present():
            offline = True
            log.warning(
                "W&B: no credentials (WANDB_API_KEY or `wandb login`); logging offline to "
                "%s/wandb, upload later with `wandb sync %s/wandb/offline-run-*`",
                save_dir,
                save_dir,
            )
        elif not wandb_server_reachable():
            offline = True
            log.warning(
                "W&B: server unreachable; logging offline to %s/wandb, upload later with "
                "`wandb sync %s/wandb/offline-run-*`",
                save_dir,
                save_dir,
            )
        else:
            offline = False
    if offline and log_model:
        log.warning("W&B offline: checkpoints are not uploaded (logger.wandb.log_model ignored)")
        log_model = False
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        name=name,
        group=group or sweep_group(),
        tags=list(tags or []),
        log_model=log_model,
        offline=offline,
        **kwargs,
    )
