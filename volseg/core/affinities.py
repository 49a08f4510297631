"""Affinity targets from instance labels, their offsets, and a boundary map reduced from affinities.

Pure functions of arrays, no paths and no torch. An *offset* is a ``(dz, dy, dx)`` integer triple; the
affinity of voxel ``v`` for offset ``o`` is stored at ``v`` and says whether ``v`` and ``v + o`` belong to
the same object: 1 when both carry the same nonzero (non-background) instance id, else 0. Negative offsets
look back, as in the mutex watershed (Wolf et al. 2018) and MALA/gunpowder conventions, so the nearest
neighbour offset ``(0, -1, 0)`` compares each voxel with the one above it in y.

:func:`affinities` also returns a mask of the pairs whose answer is known: a pair is masked out where
``v + o`` leaves the array, where either voxel carries the ``ignore`` label, and, for per-section truths
(``per_section=True``), for every offset that crosses sections. Background pairs are not masked: a pair
with a background voxel is a boundary (0), which trains the same solid membrane band a boundary map has.

:func:`instances_from_binary` turns ISBI-style binary labels (255 = cell, 0 = membrane) into per-section
instance ids; :func:`synth_instances` takes the 3-D ids of a volseg synth truth.
:func:`boundaries_from_affinities` reduces the nearest-neighbour in-plane affinities to a boundary map for
today's watershed. Definitions, the default offsets and a worked example are in ``docs/affinities.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import scipy.ndimage as ndi

from volseg.core.synth import MEMBRANE
from volseg.errors import OptionError

__all__ = [
    "DEFAULT_OFFSETS",
    "Offset",
    "affinities",
    "boundaries_from_affinities",
    "check_offsets",
    "default_offsets",
    "format_offsets",
    "instances_from_binary",
    "offset_reach",
    "parse_offsets",
    "synth_instances",
]


class Offset(NamedTuple):
    """An affinity offset in voxels: the pair ``(v, v + (dz, dy, dx))``, stored at ``v``."""

    dz: int
    dy: int
    dx: int

    @property
    def in_plane(self) -> bool:
        """Whether the pair lies within one section (``dz == 0``)."""
        return self.dz == 0

    def __str__(self) -> str:
        return f"{self.dz},{self.dy},{self.dx}"


#: Nearest neighbours in y and x, across sections, and long-range in-plane offsets of 3, 9 and 27 px.
DEFAULT_OFFSETS: tuple[Offset, ...] = (
    Offset(0, -1, 0),
    Offset(0, 0, -1),
    Offset(-1, 0, 0),
    Offset(0, -3, 0),
    Offset(0, 0, -3),
    Offset(0, -9, 0),
    Offset(0, 0, -9),
    Offset(0, -27, 0),
    Offset(0, 0, -27),
)

_SYNTAX = "expected triples dz,dy,dx separated by ';', e.g. '0,-1,0;0,0,-1;-1,0,0'"


def default_offsets() -> tuple[Offset, ...]:
    """The default offset list, :data:`DEFAULT_OFFSETS` (its text: ``format_offsets(default_offsets())``)."""
    return DEFAULT_OFFSETS


def format_offsets(offsets: Iterable[Sequence[int]]) -> str:
    """The text form ``"0,-1,0;0,0,-1"`` that :func:`parse_offsets` reads back (model files, metadata)."""
    return ";".join(str(Offset(*map(int, o))) for o in offsets)


def parse_offsets(text: str | None, option: str = "offsets") -> tuple[Offset, ...]:
    """Parse ``"0,-1,0;0,0,-1;-1,0,0;0,-9,0"`` into offsets; ``None`` or blank text gives the default list.

    ``option`` names the argument in error messages (the CLI shows its flag). The order is kept: it is
    the channel order of the affinities. Bad syntax, a zero offset and a repeated offset are refused.
    """
    if text is None or not str(text).strip():
        return DEFAULT_OFFSETS
    parsed: list[tuple[int, ...]] = []
    for item in (part.strip() for part in str(text).split(";")):
        if not item:
            continue
        try:
            values = tuple(int(v) for v in item.split(","))
        except ValueError:
            raise OptionError(
                f"{option} {text!r}: {item!r} is not integers; {_SYNTAX}", argument=option
            ) from None
        if len(values) != 3:
            raise OptionError(
                f"{option} {text!r}: {item!r} has {len(values)} numbers, not 3; {_SYNTAX}", argument=option
            )
        parsed.append(values)
    return check_offsets(parsed, option, text)


def check_offsets(offsets: Any, option: str = "offsets", shown: Any = None) -> tuple[Offset, ...]:
    """``offsets`` (text, or ``(dz, dy, dx)`` integer triples) checked, as :class:`Offset` values.

    Refused: text that :func:`parse_offsets` refuses, an empty list, a triple that is not three integers,
    the zero offset (a voxel paired with itself) and repeats (a channel twice).
    """
    if offsets is None or isinstance(offsets, str):
        return parse_offsets(offsets, option)
    shown = list(offsets) if shown is None else shown
    out: list[Offset] = []
    for o in offsets:
        values = tuple(o) if isinstance(o, Sequence | np.ndarray) else (o,)
        if len(values) != 3 or not all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values
        ):
            raise OptionError(
                f"{option} {shown!r}: {o!r} is not three integers (dz, dy, dx)", argument=option
            )
        off = Offset(*(int(v) for v in values))
        if off == (0, 0, 0):
            raise OptionError(
                f"{option} {shown!r}: the zero offset pairs a voxel with itself; remove it", argument=option
            )
        if off in out:
            raise OptionError(
                f"{option} {shown!r}: offset {off} is given twice; give each once", argument=option
            )
        out.append(off)
    if not out:
        raise OptionError(f"{option} {shown!r}: no offset given; {_SYNTAX}", argument=option)
    return tuple(out)


def offset_reach(offsets: Any) -> tuple[int, int, int]:
    """How far the offsets reach along ``(z, y, x)``: the halo a block needs for exact affinities."""
    offs = check_offsets(offsets)
    return tuple(max(abs(o[axis]) for o in offs) for axis in range(3))  # type: ignore[return-value]


def _pair_slices(
    offset: Sequence[int], shape: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Slices of ``v`` and of ``v + offset`` over the voxels whose partner lies in the array (None: none)."""
    here, there = [], []
    for k, n in zip(offset, shape, strict=True):
        if abs(k) >= n:
            return None
        here.append(slice(-k, n) if k < 0 else slice(0, n - k))
        there.append(slice(0, n + k) if k < 0 else slice(k, n))
    return tuple(here), tuple(there)


def _check_labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3):
        raise OptionError(
            f"labels: shape {arr.shape} is not (Y, X) or (Z, Y, X); pass one section or a stack",
            argument="labels",
        )
    if arr.dtype.kind not in "biu":
        raise OptionError(
            f"labels: dtype {arr.dtype} is not an integer type; pass instance ids (instances_from_binary)",
            argument="labels",
        )
    return arr


def affinities(
    labels: Any,
    offsets: Any = None,
    *,
    background: int | None = 0,
    ignore: int | None = None,
    per_section: bool = False,
    dtype: Literal["uint8", "float32"] | type = np.uint8,
) -> tuple[np.ndarray, np.ndarray]:
    """Affinity targets and their mask from instance labels.

    ``targets[c, v] = 1`` when voxel ``v`` and ``v + offsets[c]`` carry the same instance id and that id is
    not ``background``; else 0. ``mask[c, v]`` is False where the answer is unknown, and there the target
    is 0 too.

    Parameters
    ----------
    labels
        Integer instance ids ``(Z, Y, X)``, or one section ``(Y, X)`` (then Z = 1 and the outputs are
        ``(C, Y, X)``).
    offsets
        ``(dz, dy, dx)`` triples or their text (:func:`parse_offsets`); None: :data:`DEFAULT_OFFSETS`.
    background
        The id of no object (membrane, extracellular space): a pair with a background voxel is a boundary,
        0 with mask True, background pairs included, so the whole membrane band trains as boundary. None:
        every id is an object.
    ignore
        The id of unlabelled voxels (unknown): every pair with such a voxel is masked out. Wins over
        ``background`` when the two are equal.
    per_section
        The ids mean something within a section only (ISBI-style 2-D label stacks): offsets with ``dz != 0``
        are masked out everywhere.
    dtype
        Of the targets: ``uint8`` (0/1) or ``float32`` (0.0/1.0).

    Returns
    -------
    targets : numpy.ndarray
        ``(C, Z, Y, X)`` (``(C, Y, X)`` for 2-D labels), of ``dtype``.
    mask : numpy.ndarray
        bool, the same shape: True where the pair lies in the array and is labelled.
    """
    arr = _check_labels(labels)
    offs = check_offsets(offsets)
    out_dtype = np.dtype(dtype)
    if out_dtype not in (np.dtype(np.uint8), np.dtype(np.float32)):
        raise OptionError(f"dtype: {out_dtype} is not uint8 or float32; choose one", argument="dtype")
    flat = arr.ndim == 2
    vol = arr[None] if flat else arr
    targets = np.zeros((len(offs), *vol.shape), out_dtype)
    mask = np.zeros((len(offs), *vol.shape), bool)
    # One bool volume each, so the temporaries stay within the size of one output channel.
    fg = vol != background if background is not None else None
    known = vol != ignore if ignore is not None else None
    for c, off in enumerate(offs):
        pair = None if per_section and off.dz != 0 else _pair_slices(off, vol.shape)
        if pair is None:
            continue
        here, there = pair
        same = vol[here] == vol[there]
        if fg is not None:
            same &= fg[here]
        if known is None:
            mask[c][here] = True
        else:
            np.logical_and(known[here], known[there], out=mask[c][here])
            same &= mask[c][here]
        targets[c][here] = same
    return (targets[:, 0], mask[:, 0]) if flat else (targets, mask)


def instances_from_binary(
    labels: Any, cell_value: int = 255, *, connectivity: Literal[1, 2] = 1
) -> np.ndarray:
    """Per-section instance ids from binary labels (ISBI 2012: 255 = cell, 0 = membrane).

    Each section's cells (voxels equal to ``cell_value``) are split into connected components in
    (y, x), with ``connectivity`` 1 (4-neighbours: a diagonal gap in a membrane does not join two
    cells) or 2 (8-neighbours). Ids are 1, 2, ... and unique through the stack (section after section),
    so an affinity across sections is 0 even where ``per_section`` was forgotten; pass
    ``per_section=True`` to :func:`affinities` to mask those pairs as unknown. Membrane is 0.

    Returns
    -------
    numpy.ndarray
        uint32 ``(Z, Y, X)`` (``(Y, X)`` for a 2-D input).
    """
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3):
        raise OptionError(f"labels: shape {arr.shape} is not (Y, X) or (Z, Y, X)", argument="labels")
    if connectivity not in (1, 2):
        raise OptionError(
            f"connectivity: {connectivity!r} is not 1 or 2 (4- or 8-neighbours)", argument="connectivity"
        )
    vol = arr[None] if arr.ndim == 2 else arr
    structure = ndi.generate_binary_structure(2, connectivity)
    out = np.zeros(vol.shape, np.uint32)
    next_id = 0
    for z in range(vol.shape[0]):
        ids, n = ndi.label(vol[z] == cell_value, structure, output=np.uint32)
        out[z] = np.where(ids > 0, ids + np.uint32(next_id), 0)
        next_id += n
    return out[0] if arr.ndim == 2 else out


def synth_instances(cells: Any, membranes: Any = None, *, membrane_value: int = MEMBRANE) -> np.ndarray:
    """3-D instance ids from a volseg synth truth (``cells.zarr``, optionally ``membranes.zarr``).

    Synth's cells are uint32 ids from 1, stable across sections, and a complete partition: the membrane
    between two cells belongs to one of them, so affinities from ``cells`` alone are cut on a one-voxel
    seam. With ``membranes`` (255 = interior, ``membrane_value`` = membrane), the membrane voxels become
    background 0, so the affinities are cut over the labelled membrane band as in ISBI-style labels.

    Returns
    -------
    numpy.ndarray
        uint32, the shape of ``cells``; a new array.
    """
    ids = _check_labels(cells).astype(np.uint32, copy=True)
    if membranes is not None:
        mem = np.asarray(membranes)
        if mem.shape != ids.shape:
            raise OptionError(
                f"membranes: shape {mem.shape} differs from the cells' {ids.shape}; pass the same block",
                argument="membranes",
            )
        ids[mem == membrane_value] = 0
    return ids


def _in_plane_channel(offs: tuple[Offset, ...], axis: int) -> int:
    """The channel of the in-plane nearest neighbour along ``axis`` (1: y, 2: x), either sign."""
    for c, o in enumerate(offs):
        if abs(o[axis]) == 1 and sum(map(abs, o)) == 1:
            return c
    name = "y" if axis == 1 else "x"
    raise OptionError(
        f"offsets {format_offsets(offs)!r}: no nearest neighbour in {name} (0,-1,0 / 0,0,-1 or +1); "
        "boundaries need both in-plane nearest neighbours",
        argument="offsets",
    )


def boundaries_from_affinities(
    affs: Any, offsets: Any = None, *, reduce: Literal["min", "mean"] = "min"
) -> np.ndarray:
    """A boundary map from the nearest-neighbour in-plane affinities, for boundary-based watersheds.

    A voxel ``v`` belongs to up to four in-plane nearest-neighbour pairs: with the voxels above, below,
    left and right of it. The channel of offset ``o`` holds the pair ``(v, v + o)`` at ``v``, and the pair
    ``(v - o, v)`` at ``v - o``, so both are read. With ``reduce="min"`` the boundary is ``1 - min`` over
    the pairs that lie in the array (one cut pair makes ``v`` a boundary; a seam between two cells
    becomes two voxels wide, one on each side); with ``"mean"`` it is ``1 - mean`` over them.

    Parameters
    ----------
    affs
        Affinities in ``[0, 1]`` (1: same object), ``(C, Z, Y, X)`` or ``(C, Y, X)``; scaled uint8
        predictions are converted to probabilities first.
    offsets
        The offsets of the channels (:func:`check_offsets`); they must hold ``(0, +-1, 0)`` and
        ``(0, 0, +-1)``.
    reduce
        ``"min"`` or ``"mean"``.

    Returns
    -------
    numpy.ndarray
        float32 ``(Z, Y, X)`` (``(Y, X)`` for 3-D ``affs``), 1 = boundary.
    """
    arr = np.asarray(affs)
    offs = check_offsets(offsets)
    if arr.ndim not in (3, 4) or arr.shape[0] != len(offs):
        raise OptionError(
            f"affs: shape {arr.shape} is not (C, Z, Y, X) or (C, Y, X) with C = {len(offs)} offsets",
            argument="affs",
        )
    if reduce not in ("min", "mean"):
        raise OptionError(f"reduce: {reduce!r} is not 'min' or 'mean'", argument="reduce")
    vol = arr[:, None] if arr.ndim == 3 else arr
    shape = vol.shape[1:]
    best = np.ones(shape, np.float32)
    total = np.zeros(shape, np.float32)
    count = np.zeros(shape, np.float32)
    for axis in (1, 2):
        c = _in_plane_channel(offs, axis)
        channel = vol[c].astype(np.float32, copy=False)
        here, there = _pair_slices(offs[c], shape) or ((slice(0, 0),) * 3,) * 2
        for side in (here, there):
            pairs = channel[here]  # each pair once, read from the voxel that holds it
            np.minimum(best[side], pairs, out=best[side])
            total[side] += pairs
            count[side] += 1
    if reduce == "min":
        out = 1.0 - best
    else:
        out = np.where(count > 0, 1.0 - total / np.maximum(count, 1), 0.0).astype(np.float32)
    return out[0] if arr.ndim == 3 else out
