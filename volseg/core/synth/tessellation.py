"""The power diagram of the seeds, tile by tile: each pixel's nearest seed and its distances to the outline.

A region is cut into ``tile x tile`` tiles on a global grid. Each tile keeps only the seeds that can
matter to it (exact, nesting culling: the result does not depend on which other seeds a block collected),
then two passes over those candidates give the nearest seed by power and the distances to the two nearest
power bisectors. Everything is float32 in a tile-local frame, packed into order-preserving int32 codes so
that ties break by candidate slot (ascending seed id), identically in every chunking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volseg.core.synth.params import SynthContext
from volseg.core.synth.seeds import Seeds
from volseg.errors import OptionError

__all__ = ["Partition", "boundaries", "candidates", "from_tiles", "to_tiles"]

_SLOT_BITS = 5
_SLOT_MASK = np.int32((1 << _SLOT_BITS) - 1)
_VALUE_MASK = np.int32(~((1 << _SLOT_BITS) - 1))
_INT_MAX = np.iinfo(np.int32).max
_INF_CODE = np.int32(0x7F800000 | ((1 << _SLOT_BITS) - 1))  # unpacks to +inf


def to_tiles(a: np.ndarray, t: int) -> np.ndarray:
    """``(Y, X)`` -> ``(tiles, t * t)``, tiles in row order (``Y`` and ``X`` multiples of ``t``)."""
    ny, nx = a.shape[0] // t, a.shape[1] // t
    return a.reshape(ny, t, nx, t).transpose(0, 2, 1, 3).reshape(ny * nx, t * t)


def from_tiles(a: np.ndarray, ny: int, nx: int, t: int) -> np.ndarray:
    """The inverse of :func:`to_tiles` for a grid of ``ny x nx`` tiles."""
    return a.reshape(ny, nx, t, t).transpose(0, 2, 1, 3).reshape(ny * t, nx * t)


def _pack(value: np.ndarray, slot: int) -> np.ndarray:
    """Order-preserving int32 code of a non-negative float32 with the slot in its low bits."""
    return (value.view(np.int32) & _VALUE_MASK) | np.int32(slot)


def _unpack(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (code & _VALUE_MASK).view(np.float32), code & _SLOT_MASK


def _cull(ctx: SynthContext, box: tuple[np.ndarray, ...], sy: np.ndarray, sx: np.ndarray, w: np.ndarray):
    """Which seeds can matter to some point of each box: ``(boxes, seeds)`` bool.

    With power ``P_s(q) = |q-s|^2 - w_s``, a seed ``b`` matters to a point ``q`` whose
    nearest seed is ``a`` only if their bisector is closer than ``theta``:
    ``P_b - P_a < 2 theta |a-b| <= 2 theta (|q-a| + |q-b|)``. ``U``, the smallest
    farthest-corner power of any seed over the box, bounds ``P_a`` everywhere in it, and
    ``|q-a|^2 <= U + W`` (W: the largest weight), so ``b`` must satisfy
    ``(|q-b| - theta)^2 < U + w_b + 2 theta sqrt(U + W) + theta^2``. The test is exact
    and nests (a seed that matters to a sub-box passes for the box), so culling can go
    coarse to fine, and the result does not depend on which other seeds a block collected.
    """
    ylo, yhi, xlo, xhi = (b[:, None] for b in box)
    dyn = np.maximum(np.maximum(ylo - sy, sy - yhi), 0.0)
    dxn = np.maximum(np.maximum(xlo - sx, sx - xhi), 0.0)
    dyf = np.maximum(np.abs(sy - ylo), np.abs(sy - yhi))
    dxf = np.maximum(np.abs(sx - xlo), np.abs(sx - xhi))
    theta = ctx.theta + 0.5  # a little slack against rounding
    u = (dyf * dyf + dxf * dxf - w).min(axis=1, keepdims=True)
    limit = u + w + 2.0 * theta * np.sqrt(np.maximum(u + ctx.max_weight, 0.0)) + theta * theta + 1.0
    near = np.maximum(np.sqrt(dyn * dyn + dxn * dxn) - theta, 0.0)
    return near * near <= limit


def _lists(mask: np.ndarray, values: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise ``values[mask]`` as a ``(rows, width)`` array padded with ``pad``, and the counts."""
    rows, cols = np.nonzero(mask)
    counts = np.bincount(rows, minlength=mask.shape[0])
    slot = np.arange(rows.size) - (np.cumsum(counts) - counts)[rows]
    out = np.full((mask.shape[0], max(int(counts.max()), 1)), pad, dtype=np.int64)
    out[rows, slot] = np.broadcast_to(values, mask.shape)[rows, cols]
    return out, counts


def candidates(ctx: SynthContext, seeds: Seeds, ty: np.ndarray, tx: np.ndarray, shape: tuple[int, int]):
    """Per tile, the seeds (indices, ascending id) that can be nearest or lie within ``theta`` of a boundary.

    ``ty``, ``tx``: ``(tiles, 2)`` box of each tile's warped coordinates; ``shape``: tile grid.
    Culls for the whole region, then for groups of 4 x 4 tiles, then per tile.

    Returns
    -------
    cand : numpy.ndarray
        ``(tiles, C)`` seed indices, padded with ``len(seeds)`` (a far dummy seed).
    counts : numpy.ndarray
        ``(tiles,)`` number of real candidates.
    """
    n = seeds.y.size
    sy, sx, w = np.append(seeds.y, 1e7), np.append(seeds.x, 1e7), np.append(seeds.weight, 0.0)
    whole = (
        ty[:, 0].min(keepdims=True),
        ty[:, 1].max(keepdims=True),
        tx[:, 0].min(keepdims=True),
        tx[:, 1].max(keepdims=True),
    )
    kept = np.nonzero(_cull(ctx, whole, sy[None, :n], sx[None, :n], w[None, :n])[0])[0]
    g = 4
    group = (
        (np.arange(shape[0]) // g)[:, None] * (-(-shape[1] // g)) + (np.arange(shape[1]) // g)[None, :]
    ).ravel()
    ngroups = int(group.max()) + 1
    box = [
        np.full(ngroups, np.inf),
        np.full(ngroups, -np.inf),
        np.full(ngroups, np.inf),
        np.full(ngroups, -np.inf),
    ]
    for k, (col, fn) in enumerate(
        ((ty[:, 0], np.minimum), (ty[:, 1], np.maximum), (tx[:, 0], np.minimum), (tx[:, 1], np.maximum))
    ):
        fn.at(box[k], group, col)
    glist, _ = _lists(_cull(ctx, tuple(box), sy[None, kept], sx[None, kept], w[None, kept]), kept[None, :], n)
    tlist = glist[group]
    tile_box = (ty[:, 0], ty[:, 1], tx[:, 0], tx[:, 1])
    cand, counts = _lists(_cull(ctx, tile_box, sy[tlist], sx[tlist], w[tlist]), tlist, n)
    if cand.shape[1] > 1 << _SLOT_BITS:
        raise OptionError(f"synth: {cand.shape[1]} seeds compete for one tile; use a larger cell_size")
    return cand, counts


@dataclass
class Partition:
    """Tile-layout result of the tessellation: nearest seed and distances to boundaries."""

    slot: np.ndarray  # (tiles, T*T) int32: slot of the nearest seed
    near: np.ndarray  # slot of the neighbour across the nearest boundary
    d1: np.ndarray  # float32 distance to the nearest boundary (warped space), capped at theta
    d2: np.ndarray  # distance to the second nearest boundary, capped at theta


def _nearest(
    qy: np.ndarray, qx: np.ndarray, sy: np.ndarray, sx: np.ndarray, lift: np.ndarray, rows: list[int]
):
    """Pass 1: nearest seed by power (squared distance + lift); keeps the per-slot powers.

    Tiles are sorted by decreasing candidate count, so slot ``c`` concerns the first
    ``rows[c]`` tiles only.
    """
    best = np.full(qy.shape, _INT_MAX, dtype=np.int32)
    d2s = []
    for c, n in enumerate(rows):
        dy = qy[:n] - sy[:n, c : c + 1]
        dx = qx[:n] - sx[:n, c : c + 1]
        d2 = dy * dy
        d2 += dx * dx
        d2 += lift[:n, c : c + 1]
        d2s.append(d2)
        np.minimum(best[:n], _pack(d2, c), out=best[:n])
    return best, d2s


def _inverse_spans(sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
    """``1 / (2 |a - c|)`` for every pair of tile candidates, as ``(C, tiles * C)`` float32.

    Row ``c``, entry ``tile * C + a``. A seed paired with itself gets the largest float32,
    so that its "bisector" is never near.
    """
    dy = sy[None, :, :] - sy.T[:, :, None]
    dx = sx[None, :, :] - sx.T[:, :, None]
    span = np.sqrt(dy * dy + dx * dx)
    span += span
    with np.errstate(divide="ignore"):
        inv = np.float32(1.0) / span
    return np.minimum(inv, np.finfo(np.float32).max).reshape(sy.shape[1], -1)


def boundaries(ctx: SynthContext, qy, qx, sy: np.ndarray, sx: np.ndarray, lift: np.ndarray, rows: list[int]):
    """Both passes over the tile candidates: nearest seed, then the two nearest bisectors.

    The distance from ``q`` to the power bisector of seeds ``a`` (nearest) and ``c`` is
    ``(P_c - P_a) / (2 |a-c|)``; the smallest over ``c`` is the distance to the
    (warped) cell outline, the second smallest that to the next side, used at corners.
    """
    best, powers = _nearest(qy, qx, sy, sx, lift, rows)
    pa, slot = _unpack(best)
    # one ulp below P_a: the nearest seed's own term is then > 0 and, times the largest float, +inf
    pa = np.nextafter(pa, np.float32(-np.inf))
    inverse = _inverse_spans(sy, sx)
    nearest = (np.arange(sy.shape[0], dtype=np.int32) * np.int32(sy.shape[1]))[:, None] + slot
    m1 = np.full(qy.shape, _INF_CODE, dtype=np.int32)
    m2 = m1.copy()
    factor = np.empty(qy.shape, dtype=np.float32)
    larger = np.empty(qy.shape, dtype=np.int32)
    with np.errstate(over="ignore"):
        for c, (n, num) in enumerate(zip(rows, powers, strict=True)):
            num -= pa[:n]
            np.take(inverse[c], nearest[:n], out=factor[:n])
            num *= factor[:n]
            code = num.view(np.int32)  # packed in place, as in _pack
            code &= _VALUE_MASK
            code |= np.int32(c)
            np.maximum(m1[:n], code, out=larger[:n])
            np.minimum(m2[:n], larger[:n], out=m2[:n])
            np.minimum(m1[:n], code, out=m1[:n])
    d1, near = _unpack(m1)
    d2, _ = _unpack(m2)
    theta = np.float32(ctx.theta)
    return Partition(slot, near, np.minimum(d1, theta), np.minimum(d2, theta))
