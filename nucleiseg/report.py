"""Entry point: ``python -m nucleiseg.report multirun_outputs/<date>/<time>``.

Writes ``report.md``, ``report.csv``, ``report.tex`` and figures beside a sweep's runs; the
tables are built by ``nucleiseg.analysis.report``.
"""

from __future__ import annotations

import sys

from nucleiseg.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
