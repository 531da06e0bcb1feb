"""Reading finished runs: sweep results, two-stage-versus-control comparisons, arm
summaries, the report and the study that trains them (in subprocesses, never importing the
engine). Imports from ``files`` and ``viz`` only."""
