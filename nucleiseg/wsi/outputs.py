"""A slide's outputs, written as the run goes and resumable: QuPath GeoJSON, a CSV of nuclei.

Nuclei are appended per finished row of tiles to hidden partial files beside the outputs
(``.<slide>.partial/``); a small progress record (written atomically after the row's lines
are on disk) says how many rows and bytes are final. A run that stops is continued from
there: the partial files are cut back to the recorded bytes, so no nucleus is written twice
or lost. When the last row is done, ``<slide>.geojson`` (a FeatureCollection of QuPath
*detections*, polygons in full-resolution slide pixels) and ``<slide>_nuclei.csv`` are
assembled from them, each into a temporary file that is renamed.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shapely.geometry import Polygon, mapping
from shapely.validation import make_valid

from nucleiseg.files.atomic import write_atomic, write_json_atomic
from nucleiseg.wsi.seams import Nucleus

CSV_COLUMNS = (
    "id", "centroid_x_px", "centroid_y_px", "centroid_x_um", "centroid_y_um", "area_px",
    "area_um2", "bbox_min_x_px", "bbox_min_y_px", "bbox_max_x_px", "bbox_max_y_px",
    "mean_probability",
)  # fmt: skip
#: how QuPath shows the nuclei (File > Import objects, or drag the .geojson onto a slide)
CLASSIFICATION = {"name": "Nucleus", "color": [0, 200, 0]}


class SlideOutputConflict(ValueError):
    """A slide's outputs exist, or an unfinished run used other settings."""


def valid_polygon(points: list[tuple[float, float]]) -> Polygon | None:
    """A valid, closed shapely polygon of the outline (the largest part when an outline
    touches itself); None for a degenerate outline."""
    if len(points) < 4:
        return None
    polygon = Polygon(points)
    if not polygon.is_valid:
        fixed = make_valid(polygon)
        parts = [g for g in getattr(fixed, "geoms", [fixed]) if isinstance(g, Polygon)]
        if not parts:
            return None
        polygon = max(parts, key=lambda g: g.area)
    return polygon if polygon.area > 0 else None


class SlideOutputs:
    """The files of one slide: final outputs beside partial files that make it resumable."""

    def __init__(
        self, stem: Path, settings: dict[str, Any], overwrite: bool = False, gz: bool = False
    ) -> None:
        self.stem = Path(stem)
        self.settings = settings
        self.overwrite = overwrite
        self.geojson = self.stem.with_name(self.stem.name + (".geojson.gz" if gz else ".geojson"))
        self.csv = self.stem.with_name(self.stem.name + "_nuclei.csv")
        self.tissue = self.stem.with_name(self.stem.name + "_tissue.png")
        self.overlay = self.stem.with_name(self.stem.name + "_overlay.png")
        self.partial = self.stem.with_name(f".{self.stem.name}.partial")
        self.features_path = self.partial / "features.jsonl"
        self.rows_path = self.partial / "nuclei.csv.part"
        self.progress_path = self.partial / "progress.json"
        self.rows_done = 0
        self.next_id = 1

    @property
    def finals(self) -> list[Path]:
        return [self.geojson, self.csv, self.tissue, self.overlay]

    def start(self) -> int:
        """Rows already done (0 for a fresh start); refuses to replace finished outputs
        without ``overwrite``, or to continue an unfinished run made with other settings."""
        existing = [p for p in self.finals if p.exists()]
        if existing and not self.overwrite:
            raise SlideOutputConflict(
                f"'{existing[0]}' exists (an earlier prediction?); pass overwrite=true to "
                "replace it, or choose another output folder"
            )
        progress = self._read_progress()
        if progress is not None and progress["settings"] != self.settings:
            if not self.overwrite:
                raise SlideOutputConflict(
                    f"'{self.partial}' holds an unfinished prediction made with other settings "
                    "(checkpoint, tiling or post-processing); pass overwrite=true to start "
                    "again, or rerun with the settings it was started with"
                )
            progress = None
        if progress is None:
            shutil.rmtree(self.partial, ignore_errors=True)
            self.partial.mkdir(parents=True)
            self.features_path.touch()
            self.rows_path.touch()
            self.rows_done, self.next_id = 0, 1
            self._write_progress(0, 0)
            return 0
        for path, size in ((self.features_path, progress["features_bytes"]),
                           (self.rows_path, progress["csv_bytes"])):  # fmt: skip
            with path.open("r+b") as handle:  # drop what a killed run wrote after the record
                handle.truncate(size)
        self.rows_done, self.next_id = progress["rows_done"], progress["next_id"]
        return self.rows_done

    def _read_progress(self) -> dict[str, Any] | None:
        if not self.progress_path.is_file():
            return None
        try:
            return json.loads(self.progress_path.read_text())
        except json.JSONDecodeError:
            return None  # a progress file is written atomically: treat garbage as none

    def _write_progress(self, features_bytes: int, csv_bytes: int) -> None:
        write_json_atomic(self.progress_path, {
            "settings": self.settings, "rows_done": self.rows_done, "next_id": self.next_id,
            "features_bytes": features_bytes, "csv_bytes": csv_bytes,
        })  # fmt: skip

    def add_row(
        self, nuclei: list[Nucleus], level0_per_model: float, mpp: float,
        bounds: tuple[int, int],
    ) -> int:  # fmt: skip
        """Append one finished row of tiles' nuclei (model-grid coordinates, converted to
        level-0 slide pixels of ``mpp`` µm, clipped to the slide's ``bounds`` (width,
        height): the model grid's last pixel may reach past them); returns how many."""
        width, height = bounds
        features, rows = io.StringIO(), io.StringIO()
        writer = csv.writer(rows, lineterminator="\n")
        written = 0
        for nucleus in nuclei:
            points = [(round(min(max(x * level0_per_model, 0.0), width), 2),
                       round(min(max(y * level0_per_model, 0.0), height), 2))
                      for x, y in nucleus.outline]  # fmt: skip
            polygon = valid_polygon(points)
            if polygon is None:
                continue
            record = self._record(nucleus, level0_per_model, mpp)
            feature = {
                "type": "Feature",
                "geometry": mapping(polygon),
                "properties": {
                    "objectType": "detection",
                    "classification": CLASSIFICATION,
                    "measurements": {k: record[k] for k in
                                     ("id", "area_um2", "area_px", "mean_probability")},
                },
            }  # fmt: skip
            features.write(json.dumps(feature, separators=(",", ":")) + "\n")
            writer.writerow([record[c] for c in CSV_COLUMNS])
            self.next_id += 1
            written += 1
        sizes = []
        for path, text in ((self.features_path, features.getvalue()),
                           (self.rows_path, rows.getvalue())):  # fmt: skip
            with path.open("a", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            sizes.append(path.stat().st_size)
        self.rows_done += 1
        self._write_progress(*sizes)
        return written

    def _record(self, nucleus: Nucleus, scale: float, mpp: float) -> dict[str, Any]:
        cy, cx = nucleus.centroid
        # centroid: continuous coordinates (pixel i spans [i, i+1)), as the outline's
        x, y = (cx + 0.5) * scale, (cy + 0.5) * scale
        area_px = nucleus.area * scale**2
        r0, c0, r1, c1 = nucleus.bbox
        return {
            "id": self.next_id, "centroid_x_px": round(x, 2), "centroid_y_px": round(y, 2),
            "centroid_x_um": round(x * mpp, 3), "centroid_y_um": round(y * mpp, 3),
            "area_px": round(area_px, 2), "area_um2": round(area_px * mpp**2, 3),
            "bbox_min_x_px": round(c0 * scale, 2), "bbox_min_y_px": round(r0 * scale, 2),
            "bbox_max_x_px": round(c1 * scale, 2), "bbox_max_y_px": round(r1 * scale, 2),
            "mean_probability": round(nucleus.mean_probability, 4),
        }  # fmt: skip

    def features(self) -> Iterator[dict[str, Any]]:
        """The features written so far, one at a time."""
        with self.features_path.open(encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)

    def finish(self) -> list[Path]:
        """Assemble the GeoJSON and the CSV from the partial files; remove them."""

        def write_geojson(tmp: Path) -> None:
            opener = gzip.open if self.geojson.suffix == ".gz" else open
            with opener(tmp, "wt", encoding="utf-8") as out, self.features_path.open() as src:
                out.write('{"type":"FeatureCollection","features":[\n')
                for index, line in enumerate(src):
                    out.write(("," if index else "") + line)
                out.write("]}\n")

        def write_csv(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8") as out, self.rows_path.open() as src:
                out.write(",".join(CSV_COLUMNS) + "\n")
                shutil.copyfileobj(src, out)

        written = [write_atomic(self.geojson, write_geojson), write_atomic(self.csv, write_csv)]
        shutil.rmtree(self.partial)
        return written
