"""OME-Zarr (NGFF 0.5) metadata: the multiscales block volseg writes, its checks, where a volume lies.

These functions read and write the ``ome`` attribute block of a volume as plain data (no zarr
objects), so that :mod:`volseg.storage.volumes` and :mod:`volseg.storage.pyramids` share them
without importing each other.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from volseg.errors import InputError

__all__ = [
    "AXES",
    "CHANNEL_AXES",
    "NGFF_VERSION",
    "channel_axis",
    "check_multiscales",
    "ome_attrs",
    "overlap_region",
    "voxel_offset",
]

NGFF_VERSION = "0.5"
AXES = ("z", "y", "x")
#: A volume of several channels per voxel (affinities): the channel axis first, as OME-Zarr orders axes.
CHANNEL_AXES = ("c", "z", "y", "x")


def channel_axis(ome: Any) -> bool:
    """Whether the ``ome`` block's axes are ``(c, z, y, x)`` with a first axis of type ``channel``."""
    try:
        axes = ome["multiscales"][0]["axes"]
        return len(axes) == 4 and axes[0].get("type") == "channel"
    except (KeyError, IndexError, TypeError, AttributeError):
        return False


def ome_attrs(
    name: str,
    unit: str | None,
    levels: Sequence[tuple[str, Sequence[float]]],
    kind: str,
    channels: bool = False,
) -> dict[str, Any]:
    """The ``ome`` block of a volume; ``levels`` are ``(path, (z, y, x) scale)``.

    With ``channels`` the axes are ``(c, z, y, x)``: a first axis of type ``channel`` with scale 1.
    """
    # No unit at all (NGFF allows that) when the physical size is unknown.
    axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in AXES]
    lead = [1.0] if channels else []
    ome: dict[str, Any] = {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": ([{"name": "c", "type": "channel"}] if channels else []) + axes,
                "datasets": [
                    {
                        "path": path,
                        "coordinateTransformations": [
                            {"type": "scale", "scale": lead + [float(v) for v in scale]}
                        ],
                    }
                    for path, scale in levels
                ],
            }
        ],
    }
    if kind == "label":
        ome["image-label"] = {"version": NGFF_VERSION}
    return {"ome": ome}


def check_multiscales(ome: Any, path: object) -> None:
    """Refuse an ``ome`` block without a usable level 0 (a scale of 3 positive numbers, 3 axes).

    A channel volume (:func:`channel_axis`) has 4 of each, the first for the channel axis.
    """
    n = 4 if channel_axis(ome) else 3
    ms = ome.get("multiscales") if isinstance(ome, dict) else None
    ok = isinstance(ms, list) and ms and isinstance(ms[0], dict)
    datasets = ms[0].get("datasets") if ok else None
    axes = ms[0].get("axes") if ok else None
    ok = (
        ok
        and isinstance(datasets, list)
        and datasets
        and all(isinstance(d, dict) and "path" in d for d in datasets)
    )
    ok = ok and isinstance(axes, list) and len(axes) == n and all(isinstance(a, dict) for a in axes)
    if ok:
        transforms = datasets[0].get("coordinateTransformations")
        scales = (
            [t.get("scale") for t in transforms if isinstance(t, dict) and t.get("type") == "scale"]
            if isinstance(transforms, list)
            else []
        )
        ok = len(scales) == 1 and isinstance(scales[0], list) and len(scales[0]) == n
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in scales[0])
        ok = ok and datasets[0]["path"] == "0"
    if not ok:
        raise InputError(
            f"{path}: its OME multiscales metadata is damaged (level 0 with a scale of 3 positive numbers "
            "and 3 axes is needed); write it again with the command that made it"
        )


#: A translation within this many voxels of a whole number counts as whole (float rounding).
_WHOLE_VOXEL = 1e-3


def voxel_offset(ome: Any, ndim: int, level: int = 0, where: object = "the volume") -> tuple[int, ...]:
    """Where a volume lies: the ``(z, y, x)`` voxel index of its first voxel in the frame of its source.

    ``ome`` is the volume's ``ome`` attribute block, ``where`` names the volume in messages.

    Read from the OME ``translation`` of the level's dataset (after its ``scale``, in physical
    units: offset = translation / scale), which ``volseg predict --roi`` and ``volseg segment``
    record; a volume without one lies at ``(0, 0, 0)``. Refused (one line) when the transforms
    are malformed or the translation is not a whole number of voxels.
    """
    if channel_axis(ome):  # (c, z, y, x): the channel axis does not move
        return voxel_offset_of_channels(ome, ndim, level, where)
    transforms = _transforms(ome, level, where)
    scale = _vector(where, "scale", [t for t in transforms if t.get("type") == "scale"][:1], ndim)
    if scale is None:
        scale = np.ones(ndim)
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise InputError(
            f"{where}: its OME scale {scale.tolist()} is not {ndim} positive numbers; fix the volume's "
            "metadata (zarr.json) or convert it again"
        )
    shift = _vector(where, "translation", [t for t in transforms if t.get("type") == "translation"], ndim)
    if shift is None:
        return (0,) * ndim
    voxels = shift / scale
    whole = np.rint(voxels)
    if np.abs(voxels - whole).max(initial=0.0) > _WHOLE_VOXEL:
        raise InputError(
            f"{where}: its OME translation {shift.tolist()} is not a whole number of voxels of size "
            f"{scale.tolist()} ({voxels.round(3).tolist()} voxels); volseg places volumes on the voxel "
            "grid: crop it on whole voxels (as 'volseg predict --roi' does)"
        )
    return tuple(int(v) for v in whole)


def voxel_offset_of_channels(ome: Any, ndim: int, level: int, where: object) -> tuple[int, ...]:
    """:func:`voxel_offset` of a ``(c, z, y, x)`` volume: its spatial axes, the channel axis dropped."""
    stripped = copy.deepcopy(ome)
    ms = stripped["multiscales"][0]
    ms["axes"] = ms["axes"][1:]
    for t in _transforms(stripped, level, where):
        for key in ("scale", "translation"):
            if isinstance(t.get(key), list) and len(t[key]) == ndim + 1:
                t[key] = t[key][1:]
    return voxel_offset(stripped, ndim, level, where)


def _transforms(ome: Any, level: int, where: object) -> list[dict[str, Any]]:
    """The coordinate transformations of dataset ``level`` (one line when the metadata is malformed)."""
    try:
        datasets = ome["multiscales"][0]["datasets"]
        transforms = datasets[level].get("coordinateTransformations") or []
        if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
            raise TypeError
        return transforms
    except (KeyError, IndexError, TypeError, AttributeError):
        raise InputError(
            f"{where}: its OME metadata has no readable dataset {level} (multiscales/datasets/"
            "coordinateTransformations); fix the volume's metadata (zarr.json) or convert it again"
        ) from None


def _vector(where: object, name: str, transforms: list[dict[str, Any]], ndim: int) -> np.ndarray | None:
    """The sum of the ``name`` vectors of ``transforms`` (float, length ``ndim``); None if there are none."""
    if not transforms:
        return None
    total = np.zeros(ndim)
    for t in transforms:
        value = t.get(name)
        try:
            vector = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            vector = None
        if vector is None or vector.shape != (ndim,) or not np.all(np.isfinite(vector)):
            raise InputError(
                f"{where}: its OME {name} {value!r} is not {ndim} finite numbers (z, y, x); fix the "
                "volume's metadata (zarr.json) or convert it again"
            )
        total += vector
    return total


def overlap_region(
    a_offset: Sequence[int], a_shape: Sequence[int], b_offset: Sequence[int], b_shape: Sequence[int]
) -> tuple[tuple[int, int], ...] | None:
    """``[start, stop)`` per axis, in the common frame, where two placed boxes overlap; None if nowhere."""
    region = tuple(
        (max(ao, bo), min(ao + an, bo + bn))
        for ao, an, bo, bn in zip(a_offset, a_shape, b_offset, b_shape, strict=True)
    )
    return region if all(lo < hi for lo, hi in region) else None
