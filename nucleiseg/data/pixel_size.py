"""The µm per pixel an image file states about itself, where it states one.

Microscopy exports often carry their pixel size: OME-TIFF (``PhysicalSizeX``), ImageJ TIFF
(QuPath's and Fiji's exports: resolution in pixels per ``unit=micron``), TIFF resolution
tags in pixels per centimetre or inch, and PNG's pHYs density (pixels per metre, read by
Pillow as dots per inch). JPEG's JFIF density is not read: its 16 bits per inch cannot
hold a 40x pixel (0.25 µm is 101,600 dpi), so what it holds is an editor's default or a
wrapped value. Only values a microscope gives are believed (:data:`PLAUSIBLE_MPP`): the 72
or 96 dpi that image editors write by default is 353 or 265 µm per pixel, not a pixel
size, and is ignored.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ElementTree
from pathlib import Path

log = logging.getLogger(__name__)

PLAUSIBLE_MPP = (0.05, 5.0)  # µm per pixel: a 400x objective to a 2x overview
MICRONS_PER_UNIT = {"inch": 25400.0, "centimeter": 10000.0, "cm": 10000.0}
OME_UNITS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3}  # -> µm
IMAGEJ_MICRONS = {"micron", "microns", "um", "µm", "\\u00B5m"}


def stated_mpp(path: str | Path) -> float | None:
    """The µm per pixel ``path`` states (OME/ImageJ/TIFF tags, PNG density), or None
    when it states none, an implausible one (:data:`PLAUSIBLE_MPP`) or cannot be read."""
    path = Path(path)
    try:
        suffix = path.suffix.lower()
        if suffix in (".tif", ".tiff"):
            mpp = _tiff_mpp(path)
        elif suffix == ".png":
            mpp = _png_mpp(path)
        else:
            return None
    except Exception as err:  # unreadable metadata is no pixel size; the image read reports
        log.debug("'%s': no pixel size read (%s)", path, err)
        return None
    if mpp is None:
        return None
    low, high = PLAUSIBLE_MPP
    if not low <= mpp <= high:
        log.debug("'%s' states %.4g µm per pixel, not a microscope's: ignored", path, mpp)
        return None
    return mpp


def _tiff_mpp(path: Path) -> float | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            mpp = _ome_mpp(tif.ome_metadata)
            if mpp is not None:
                return mpp
        page = tif.pages.first
        tag = page.tags.get("XResolution")
        if tag is None:
            return None
        numerator, denominator = tag.value
        if not numerator or not denominator:
            return None
        per_unit = numerator / denominator  # pixels per unit
        unit = page.tags.get("ResolutionUnit")
        unit_name = unit.value.name.lower() if unit is not None else "inch"  # TIFF default
        if unit_name == "none":
            imagej = tif.imagej_metadata or {}
            if str(imagej.get("unit", "")).lower() in IMAGEJ_MICRONS:
                return 1.0 / per_unit
            return None
        microns = MICRONS_PER_UNIT.get(unit_name)
        return microns / per_unit if microns else None


def _ome_mpp(xml: str) -> float | None:
    root = ElementTree.fromstring(xml)
    for element in root.iter():
        if element.tag.endswith("Pixels") and "PhysicalSizeX" in element.attrib:
            unit = element.attrib.get("PhysicalSizeXUnit", "µm")
            scale = OME_UNITS.get(unit)
            return float(element.attrib["PhysicalSizeX"]) * scale if scale else None
    return None


def _png_mpp(path: Path) -> float | None:
    from PIL import Image

    with Image.open(path) as image:
        dpi = image.info.get("dpi")
    if not dpi or not dpi[0]:
        return None
    return MICRONS_PER_UNIT["inch"] / float(dpi[0])


def pixel_size_groups(paths: list[Path], given: float | None) -> dict[float | None, list[Path]]:
    """The inputs by the µm per pixel they are predicted at: ``given`` for all of them when
    set (``input_mpp=``), else what each file states (None: states nothing believable)."""
    if given is not None:
        return {float(given): list(paths)}
    groups: dict[float | None, list[Path]] = {}
    for path in paths:
        groups.setdefault(stated_mpp(path), []).append(path)
    for mpp, group in groups.items():
        if mpp is not None:
            log.info("%d image(s) state %.4g µm per pixel in their metadata (such as '%s'): "
                     "predicted at that size (input_mpp= overrides it)", len(group), mpp,
                     group[0])  # fmt: skip
    return groups
