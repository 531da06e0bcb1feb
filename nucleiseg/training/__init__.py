"""The phase engine: phases run one by one (``orchestration.train``), one phase as one
``Trainer.fit`` (``phase_runner``), and what a run keeps: its directory and records
(``run_dir``), checkpoints (``checkpoints``), loggers, callbacks and process control.

Imports from ``data``, ``models``, ``metrics``, ``postprocessing``, ``lightning``, ``viz`` and
``files`` only; the entry points and ``inference`` sit above it.
"""
