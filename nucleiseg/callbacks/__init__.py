"""Callbacks: the phase driver, resumable random states, preemption checkpoints."""

from nucleiseg.callbacks.phase_controller import PhaseController
from nucleiseg.callbacks.preemption import PreemptionCheckpoint
from nucleiseg.callbacks.random_state import RandomStateCheckpoint

__all__ = ["PhaseController", "PreemptionCheckpoint", "RandomStateCheckpoint"]
