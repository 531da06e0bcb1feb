"""Many slides in one call: each predicted in turn; one that fails is reported by name with
its reason and the others go on."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nucleiseg.data.io import DatasetError
from nucleiseg.postprocessing.watershed import InstanceSettings
from nucleiseg.wsi.run import Predictor, SlideResult, predict_slide
from nucleiseg.wsi.slide import SlideReader

log = logging.getLogger(__name__)


@dataclass
class SlideReport:
    results: list[SlideResult] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def predict_slide_files(
    slides: list[Path],
    stems: dict[Path, Path],
    predict: Predictor,
    model_mpp: float | None,
    settings: InstanceSettings,
    run_settings: dict[str, Any],
    input_mpp: float | None = None,
    **options: Any,
) -> SlideReport:
    """Predict every slide to ``stems[slide]`` (see ``predict_slide`` for ``options``).

    A slide without a pixel size (and no ``input_mpp``), a corrupt or unsupported file, or
    existing outputs stop that slide only."""
    report = SlideReport()
    if model_mpp is None:
        message = (
            "the checkpoint stores no pixel size (written before model.mpp was stored): "
            "slides cannot be read at its resolution; retrain it with this version"
        )
        report.failed += [(path, message) for path in slides]
        log.error(message)
        return report
    for path in slides:
        try:
            reader = SlideReader(path, model_mpp, input_mpp)
        except DatasetError as err:
            log.error("failed: '%s': %s", path, err)
            report.failed.append((path, str(err)))
            continue
        try:
            log.info("'%s': %dx%d px at %.4g µm per pixel, read at level %d, model grid %dx%d",
                     path, *reader.handle.dimensions, reader.mpp, reader.level,
                     reader.size[1], reader.size[0])  # fmt: skip
            settings_here = {**run_settings, "slide_mpp": reader.mpp}
            result = predict_slide(reader, predict, settings, stems[path], settings_here,
                                   **options)  # fmt: skip
            log.info("'%s': %d nuclei in %d tissue tiles of %d, %.2f MP/s of tissue",
                     path, result.nuclei, result.tissue_tiles, result.tiles,
                     result.megapixels_per_second)  # fmt: skip
            report.results.append(result)
        except Exception as err:  # any slide that fails is reported by name; the rest go on
            message = f"{type(err).__name__}: {err}".strip()
            log.error("failed: '%s': %s", path, message)
            report.failed.append((path, message))
        finally:
            reader.close()
    return report
