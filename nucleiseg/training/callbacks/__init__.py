"""Callbacks: the phase driver, resumable random states, preemption checkpoints."""

from nucleiseg.training.callbacks.phase_controller import PhaseController
from nucleiseg.training.callbacks.preemption import PreemptionCheckpoint
from nucleiseg.training.callbacks.random_state import RandomStateCheckpoint

__all__ = ["PhaseController", "PreemptionCheckpoint", "RandomStateCheckpoint"]
