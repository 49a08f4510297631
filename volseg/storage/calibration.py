"""Voxel sizes and their units: what a TIFF says about its calibration, and the user's overrides.

A :class:`Calibration` is a voxel size ``(z, y, x)`` and an OME-Zarr unit name (``None`` when the physical
size is unknown). :func:`tiff_calibration` reads OME-XML, else ImageJ metadata, else the resolution tags;
:func:`resolve_calibration` applies ``--voxel-size`` / ``--unit``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

import tifffile

__all__ = ["UNITS", "Calibration", "normalise_unit", "resolve_calibration", "tiff_calibration"]

# OME-Zarr unit names volseg writes, in metres.
UNITS = {
    "picometer": 1e-12,
    "angstrom": 1e-10,
    "nanometer": 1e-9,
    "micrometer": 1e-6,
    "millimeter": 1e-3,
    "centimeter": 1e-2,
    "meter": 1.0,
    "inch": 0.0254,
}
_UNIT_ALIASES = {
    "pm": "picometer",
    "a": "angstrom",
    "å": "angstrom",
    "nm": "nanometer",
    "nanometre": "nanometer",
    "um": "micrometer",
    "micron": "micrometer",
    "micrometre": "micrometer",
    "mm": "millimeter",
    "millimetre": "millimeter",
    "cm": "centimeter",
    "centimetre": "centimeter",
    "m": "meter",
    "metre": "meter",
    "in": "inch",
}
# TIFF ResolutionUnit -> micrometres per unit (1 = none).
_TIFF_RESUNIT_UM = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}
# Resolution tags that give pixels this large (72 or 300 dpi, say) are a writer's default, not a calibration.
_MAX_CALIBRATED_PIXEL_UM = 10.0


def normalise_unit(text: str | None) -> str | None:
    """Map ``nm``, ``micron``, ``µm``, ... to an OME-Zarr unit name; None when unknown."""
    if not text:
        return None
    t = str(text).strip().lower().replace("\\u00b5", "u").replace("µ", "u").replace("μ", "u")
    if t.endswith("s") and t[:-1] in {*UNITS, *_UNIT_ALIASES}:
        t = t[:-1]  # plurals: microns, nanometers
    t = _UNIT_ALIASES.get(t, t)
    return t if t in UNITS else None


@dataclass(frozen=True)
class Calibration:
    """Voxel size ``(z, y, x)`` in ``unit``; ``unit=None`` means the physical size is unknown."""

    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    unit: str | None = None

    def to(self, unit: str) -> Calibration:
        """The same calibration in another unit (an unknown one is taken as ``unit``)."""
        if self.unit is None:
            return Calibration(self.voxel_size, unit)
        f = UNITS[self.unit] / UNITS[unit]
        return Calibration(tuple(float(v * f) for v in self.voxel_size), unit)  # type: ignore[arg-type]


def resolve_calibration(
    found: Calibration, voxel_size: Sequence[float] | None, unit: str | None
) -> Calibration:
    """Apply ``--voxel-size`` / ``--unit`` to what the source says.

    ``--voxel-size`` wins and is read in ``--unit`` (nanometer when not given);
    ``--unit`` alone converts the source's calibration to that unit.
    """
    if voxel_size is not None:
        return Calibration(tuple(float(v) for v in voxel_size), unit or "nanometer")  # type: ignore[arg-type]
    return found.to(unit) if unit else found


def _imagej_calibration(tf: tifffile.TiffFile) -> Calibration | None:
    meta = tf.imagej_metadata or {}
    unit = normalise_unit(meta.get("unit"))
    if unit is None:
        return None
    xres, yres = tf.pages.first.resolution
    x = 1.0 / xres if xres > 0 else 1.0
    y = 1.0 / yres if yres > 0 else x
    return Calibration((float(meta.get("spacing", 1.0)), y, x), unit)


def _ome_calibration(tf: tifffile.TiffFile) -> Calibration | None:
    try:
        root = ET.fromstring(tf.ome_metadata or "")
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None
    unit = normalise_unit(pixels.get("PhysicalSizeXUnit", "µm"))
    if unit is None:
        return None
    sizes = []
    for ax in "ZYX":
        value, ax_unit = (
            pixels.get(f"PhysicalSize{ax}"),
            normalise_unit(pixels.get(f"PhysicalSize{ax}Unit", "µm")),
        )
        if value is None or ax_unit is None:
            sizes.append(1.0 if ax == "Z" else sizes[-1])  # y missing: square pixels
        else:
            sizes.append(float(value) * UNITS[ax_unit] / UNITS[unit])
    return Calibration(tuple(sizes), unit)  # type: ignore[arg-type]


def _tag_calibration(tf: tifffile.TiffFile) -> Calibration | None:
    page = tf.pages.first
    per_unit = _TIFF_RESUNIT_UM.get(int(page.resolutionunit))
    xres, yres = page.resolution
    if per_unit is None or xres <= 0 or yres <= 0:
        return None
    x, y = per_unit / xres, per_unit / yres
    if max(x, y) >= _MAX_CALIBRATED_PIXEL_UM:
        return None
    return Calibration((1.0, y, x), "micrometer")


def tiff_calibration(tf: tifffile.TiffFile) -> Calibration:
    """Voxel size from OME-XML, else ImageJ metadata, else resolution tags, else unknown (1, 1, 1)."""
    found = (
        (_ome_calibration(tf) if tf.is_ome else None)
        or (_imagej_calibration(tf) if tf.is_imagej else None)
        or _tag_calibration(tf)
    )
    return found or Calibration()
