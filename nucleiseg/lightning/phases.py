"""A training phase: which module trains, which of its parts learn, and when it stops.

The paper trains in three phases, each ended by early stopping on validation loss:
(1) stage 1 alone; (2) stage 1 frozen, the enhancer trained; (3) both fine-tuned together.
Each phase is defined once in ``conf/phase/`` and a training recipe (``conf/stage/``) lists
the phases it runs. What a phase means for a network (gradients, train/eval mode,
learning rate) is owned by ``SegmentationModule.configure_phase``.

Words used across the project:
- *recipe* (config group ``stage``, key ``stage`` in ``results.json``): the phases a run
  goes through (``two_stage``, ``base``, the controls ``base_extended``, ...);
- *part*: a network inside a module, ``stage1`` (the encoder-decoder) or ``enhancer``;
- *module*: the LightningModule a phase trains, ``stage1`` (stage 1 alone) or
  ``two_stage`` (stage 1 + enhancer); it is also the name of the output the phase is
  judged on (its probability map);
- ``test_as``: the row of ``results.json``'s ``test`` block the phase's output fills.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

PARTS = ("stage1", "enhancer")
MODULES = ("stage1", "two_stage")


@dataclass
class Phase:
    """One training phase; ``module`` is also the output the phase is judged on."""

    name: str
    module: str  # "stage1" or "two_stage"
    trainable: list[str] = field(default_factory=lambda: ["stage1"])
    max_epochs: int = 100
    patience: int = 10
    min_epochs: int = 1
    test_as: str | None = None  # key under results.json "test" for this phase's output
    lr: float | None = None  # this phase's learning rate; None: model.optimizer's

    def __post_init__(self) -> None:
        if self.module not in MODULES:
            raise ValueError(
                f"phase '{self.name}': module must be one of {MODULES}, got '{self.module}'"
            )
        unknown = set(self.trainable) - set(PARTS)
        if unknown:
            raise ValueError(
                f"phase '{self.name}': unknown trainable part(s) {sorted(unknown)}; "
                f"choose from {PARTS}"
            )
        if not self.trainable:
            raise ValueError(f"phase '{self.name}' trains nothing: list at least one part")
        if self.max_epochs < self.min_epochs:
            raise ValueError(
                f"phase '{self.name}': max_epochs {self.max_epochs} < min_epochs {self.min_epochs}"
            )


def build_phases(cfg: DictConfig) -> list[Phase]:
    """The phases of the run's recipe (``stage.phases``, a dict keyed by phase name), in order."""
    phases_cfg = cfg.stage.get("phases")
    if not phases_cfg:
        raise ValueError(f"stage '{cfg.stage.name}' lists no phases under stage.phases")
    phases = []
    for name, settings in phases_cfg.items():
        if settings is None:  # `~stage.phases.<name>` on the command line drops a phase
            continue
        values = OmegaConf.to_container(settings, resolve=True)
        try:
            phases.append(Phase(name=str(name), **values))
        except TypeError as err:  # an unknown key: say which phase and what is allowed
            raise ValueError(
                f"stage.phases.{name}: {err}; a phase takes {list(Phase.__dataclass_fields__)}"
            ) from err
    return phases
