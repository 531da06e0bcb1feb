"""Callbacks that control the paper's training phases."""

from nucleiseg.callbacks.phase_controller import Phase, PhaseController, apply_phase

__all__ = ["Phase", "PhaseController", "apply_phase"]
