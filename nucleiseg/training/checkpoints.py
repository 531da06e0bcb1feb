"""Reading checkpoints: one reader for training (``stage.init_from``, best weights between
phases) and for predict/evaluate/export, with errors that name the file and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(ValueError):
    """The checkpoint is missing, unreadable or not a nucleiseg training checkpoint."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A nucleiseg checkpoint's contents (tensors and plain types only: nothing runs)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointError(
            f"checkpoint '{path}' {what}; use a .ckpt file written by a run "
            "(<run dir>/checkpoints/<phase>/best.ckpt)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated, empty or foreign file: say which
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot read checkpoint '{path}' ({type(err).__name__}: {reason}); is it a "
            "complete .ckpt written by a nucleiseg run?"
        ) from err
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise CheckpointError(
            f"'{path}' is not a nucleiseg training checkpoint (it holds no state_dict); use a "
            ".ckpt from a run's checkpoints/ folder"
        )
    return state


#: what a training checkpoint holds only to resume training: the optimizer's moments and the
#: schedulers', the loops' and callbacks' progress (early stopping, the checkpoint callback),
#: and a weight average's trained weights beside the averaged ones (Lightning's
#: ``WeightAveraging``). A model for use (a tuned copy) needs none of it.
RESUME_ONLY_KEYS = (
    "optimizer_states", "lr_schedulers", "loops", "callbacks", "current_model_state",
    "averaging_state",
)  # fmt: skip


def for_use(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's contents without what only resuming its training reads: the weights,
    the stored model config and the run's metadata stay."""
    return {key: value for key, value in state.items() if key not in RESUME_ONLY_KEYS}


def holds_enhancer(weights: dict[str, Any]) -> bool:
    """Whether a checkpoint's weights include the enhancer: a two-stage model, not stage 1."""
    return any(key.startswith("enhancer.") for key in weights)


def load_weights(module: nn.Module, checkpoint: str | Path) -> dict[str, Any]:
    """Load a checkpoint's weights into ``module``; parts absent from it keep their weights.
    Returns the checkpoint read (its ``epoch`` and the rest), so nobody reads it twice."""
    contents = read_checkpoint(checkpoint)
    state = contents["state_dict"]
    weights = {k: v for k, v in state.items() if not k.startswith("metrics.")}
    result = module.load_state_dict(weights, strict=False)
    loaded_parts = {k.split(".", 1)[0] for k in weights}
    missing = [k for k in result.missing_keys if k.split(".", 1)[0] in loaded_parts]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint '{checkpoint}' does not fit this model (missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}); was it trained with the same backbone "
            "settings?"
        )
    return contents


#: what a checkpoint's stored model config may build: this project's networks and modules
ALLOWED_TARGETS = frozenset(
    {
        "nucleiseg.models.ClassicUNet",
        "nucleiseg.models.EnhancementNet",
        "nucleiseg.models.UNetPlusPlus",
        "nucleiseg.models.MicroNet",
        "nucleiseg.models.build_smp_model",
        "nucleiseg.lightning.Stage1Module",
        "nucleiseg.lightning.TwoStageModule",
    }
)


def _is_torch_optimizer_or_scheduler(target: str) -> bool:
    """``torch.optim.<Optimizer>`` or ``torch.optim.lr_scheduler.<LRScheduler>``, by name."""
    import torch.optim
    import torch.optim.lr_scheduler as schedulers

    for prefix, namespace, base in (
        ("torch.optim.lr_scheduler.", schedulers, schedulers.LRScheduler),
        ("torch.optim.", torch.optim, torch.optim.Optimizer),
    ):
        if target.startswith(prefix):
            name = target[len(prefix) :]
            candidate = getattr(namespace, name, None) if name.isidentifier() else None
            return isinstance(candidate, type) and issubclass(candidate, base)
    return False


def check_model_config(config: Any, path: str | Path, key: str = "") -> None:
    """Refuse a stored config that would build anything but this project's networks.

    Hydra's ``instantiate`` calls whatever ``_target_`` names, so a shared checkpoint could
    otherwise write files or run code the moment it is loaded. A stored config is data: it
    was saved resolved, so any interpolation in it (``${oc.create:...}``, ``${oc.decode:...}``,
    ``${oc.env:...}``, a custom resolver) is refused before anything resolves it, since a
    resolver can turn a harmless-looking string into a ``_target_`` at build time.
    """
    if isinstance(config, str) and "${" in config:
        shown = config if len(config) <= 40 else config[:37] + "..."
        raise CheckpointError(
            f"checkpoint '{path}' refused: {key or '<root>'} holds an interpolation "
            f"({shown!r}); a checkpoint's config is stored resolved, so this one was crafted"
        )
    if isinstance(config, dict):
        target = config.get("_target_")
        if target is not None:
            allowed = isinstance(target, str) and (
                target in ALLOWED_TARGETS or _is_torch_optimizer_or_scheduler(target)
            )
            if not allowed:
                raise CheckpointError(
                    f"checkpoint '{path}' refused: {key or '<root>'}._target_ is '{target}', "
                    "which is not one of nucleiseg's networks, modules or torch.optim classes"
                )
        elif "_args_" in config:
            raise CheckpointError(
                f"checkpoint '{path}' refused: {key or '<root>'} has _args_ without an "
                "allowed _target_"
            )
        for name, value in config.items():
            check_model_config(value, path, f"{key}.{name}" if key else str(name))
    elif isinstance(config, list | tuple):
        for index, value in enumerate(config):
            check_model_config(value, path, f"{key}[{index}]")


def stored_model_config(state: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The model config a checkpoint carries, checked, with encoder downloads switched off."""
    config = state.get("nucleiseg")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"'{path}' is not a nucleiseg training checkpoint (no stored model config); "
            "use a .ckpt from a run's checkpoints/ folder"
        )
    check_model_config(config, path)
    members = (config.get("ensemble") or {}).get("members") or []  # an ensemble's models
    for model in [config, *members]:
        net = model.get("backbone", {}).get("net", {}) if isinstance(model, dict) else None
        if isinstance(net, dict) and "encoder_weights" in net:
            net["encoder_weights"] = None  # the weights are in the checkpoint: never download
    return config
