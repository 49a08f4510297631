"""The geometry of a section region: cell ids, signed distance to the membrane edge, per-cell tables.

Pixel coordinates are bent by a smooth domain warp before the power diagram is taken; the membrane is where
the distance to the cell outline, with rounded corners, is below the local half width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volseg.core.noise import hash_ints, uniform, value_noise
from volseg.core.synth.params import SynthContext
from volseg.core.synth.seeds import Seeds, cell_range, section_seeds
from volseg.core.synth.tessellation import boundaries, candidates, from_tiles, to_tiles

__all__ = ["Geometry", "geometry"]


_TABLE = ("id", "tone", "vesicles", "specks", "radius", "half_width")


def _cell_table(ctx: SynthContext, ids: np.ndarray) -> np.ndarray:
    """Per-cell appearance from its id, ``(..., len(_TABLE))`` float32 (the id bit-cast).

    Columns: id, brightness, vesicle richness, granule density, corner radius, and half the
    cell's share of membrane width (a membrane's width is the sum over its two cells).
    """
    p = ctx.params
    h = hash_ints(ctx.keys["tone"], ids)
    lo, hi = p.cell_brightness
    r_lo, r_hi = p.corner_radius
    w_lo, w_hi = p.membrane_width
    u = uniform(h, 5)
    columns = [
        ids.astype(np.uint32).view(np.float32),
        (lo + (hi - lo) * uniform(h, 1)).astype(np.float32),
        np.clip(2.0 * uniform(h, 2) - 0.4, 0.0, 1.0).astype(np.float32),
        (0.15 + 0.85 * uniform(h, 3)).astype(np.float32),
        (r_lo + (r_hi - r_lo) * uniform(h, 4)).astype(np.float32),
        (0.25 * (w_lo + (w_hi - w_lo) * u * np.sqrt(u))).astype(np.float32),  # u**1.5, IEEE-exact ops only
    ]
    return np.stack(columns, axis=-1)


@dataclass
class Geometry:
    """Image-layout geometry of a padded region: ids, signed distance to the membrane edge, tables."""

    ids: np.ndarray  # uint32 cell id
    edge: np.ndarray  # float32 distance inside the cell from the membrane edge (< 0 on the membrane)
    tone: np.ndarray
    vesicles: np.ndarray
    specks: np.ndarray
    seeds: Seeds


@dataclass
class _Tiles:
    """A tile-aligned region cut into ``tile x tile`` tiles, sorted by decreasing candidate count."""

    ny: int
    nx: int
    size: int
    order: np.ndarray  # position in the sorted layout -> tile index in the region
    cand: np.ndarray  # (tiles, C) seed indices, sorted layout
    rows: list[int]  # rows[c]: how many sorted tiles have a candidate in slot c
    origin_y: np.ndarray  # (tiles, 1) float64
    origin_x: np.ndarray

    def to(self, a: np.ndarray) -> np.ndarray:
        return to_tiles(a, self.size)[self.order]

    def back(self, a: np.ndarray) -> np.ndarray:
        out = np.empty_like(a)
        out[self.order] = a
        return from_tiles(out, self.ny, self.nx, self.size)


def _warped(
    ctx: SynthContext, z: int, ys: tuple[int, int], xs: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Tile-local warped pixel coordinates (image layout, float32)."""
    p, t = ctx.params, ctx.tile
    qy = value_noise(ctx.keys["warp_y"], z, ys, xs, p.warp_scale, p.warp_sections, normalize=False)
    qx = value_noise(ctx.keys["warp_x"], z, ys, xs, p.warp_scale, p.warp_sections, normalize=False)
    qy *= np.float32(p.warp)
    qx *= np.float32(p.warp)
    if p.wiggle > 0:
        for q, name in ((qy, "warp_y"), (qx, "warp_x")):
            fine = value_noise(hash_ints(ctx.keys[name], 1), z, ys, xs, 14.0, 4.0, normalize=False)
            fine *= np.float32(p.wiggle)
            q += fine
    qy += (np.arange(ys[1] - ys[0]) % t).astype(np.float32)[:, None]
    qx += (np.arange(xs[1] - xs[0]) % t).astype(np.float32)[None, :]
    return qy, qx


def _tiles(ctx: SynthContext, seeds: Seeds, qy: np.ndarray, qx: np.ndarray, ys, xs) -> _Tiles:
    t = ctx.tile
    ny, nx = (ys[1] - ys[0]) // t, (xs[1] - xs[0]) // t
    oy = np.repeat(np.arange(ys[0], ys[1], t, dtype=np.float64), nx)
    ox = np.tile(np.arange(xs[0], xs[1], t, dtype=np.float64), ny)
    ty, tx = to_tiles(qy, t), to_tiles(qx, t)
    boxes_y = np.stack([oy + ty.min(1), oy + ty.max(1)], 1)
    boxes_x = np.stack([ox + tx.min(1), ox + tx.max(1)], 1)
    cand, counts = candidates(ctx, seeds, boxes_y, boxes_x, (ny, nx))
    order = np.argsort(-counts, kind="stable")
    rows = [int((counts > c).sum()) for c in range(cand.shape[1])]
    return _Tiles(ny, nx, t, order, cand[order], rows, oy[order, None], ox[order, None])


def geometry(ctx: SynthContext, z: int, ys: tuple[int, int], xs: tuple[int, int]) -> Geometry:
    """Ids and membrane distances of rows ``ys``, columns ``xs`` (tile-aligned) of section ``z``."""
    p = ctx.params
    seeds = section_seeds(ctx, z, cell_range(ctx, ys[0], ys[1], 0), cell_range(ctx, xs[0], xs[1], 1))
    qy, qx = _warped(ctx, z, ys, xs)
    tl = _tiles(ctx, seeds, qy, qx, ys, xs)
    far = np.float64(1e7)
    sy = (np.append(seeds.y, far)[tl.cand] - tl.origin_y).astype(np.float32)
    sx = (np.append(seeds.x, far)[tl.cand] - tl.origin_x).astype(np.float32)
    # powers are |q-s|^2 - w + W >= 0 (packable); W is a constant, not the tile's largest weight, so
    # that an extra candidate (lists are supersets that differ between chunkings) changes no rounding
    lift = (ctx.max_weight - np.append(seeds.weight, 0.0)[tl.cand]).astype(np.float32)
    part = boundaries(ctx, tl.to(qy), tl.to(qx), sy, sx, lift, tl.rows)
    table = _cell_table(ctx, np.append(seeds.id, 0)[tl.cand]).reshape(-1, len(_TABLE))
    base = (np.arange(tl.cand.shape[0], dtype=np.int32) * tl.cand.shape[1])[:, None]
    cell = np.take(table, (base + part.slot).ravel(), axis=0)
    col = {name: cell[:, k].reshape(part.slot.shape) for k, name in enumerate(_TABLE)}
    width = np.take(table[:, _TABLE.index("half_width")], base + part.near)
    width += col["half_width"]
    width *= 1.0 + np.float32(p.width_variation) * np.clip(
        tl.to(value_noise(ctx.keys["width"], z, ys, xs, 18.0)), -1.5, 1.5
    )
    np.maximum(width, np.float32(1.3), out=width)  # >= 2.6 px: the membrane never breaks between two cells
    edge = _rounded(col["radius"], part.d1, part.d2)
    edge -= width
    np.minimum(edge, np.float32(ctx.theta - p.membrane_width[1] / 2), out=edge)
    return Geometry(
        tl.back(np.ascontiguousarray(col["id"]).view(np.uint32)),
        tl.back(edge),
        tl.back(col["tone"]),
        tl.back(col["vesicles"]),
        tl.back(col["specks"]),
        seeds,
    )


def _rounded(radius: np.ndarray, d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """Distance to the cell outline with its corners rounded to ``radius`` (continuous in d1, d2)."""
    u1 = np.maximum(radius - d1, 0.0)
    u2 = np.maximum(radius - d2, 0.0)
    return radius - np.sqrt(u1 * u1 + u2 * u2) + np.maximum(d1 - radius, 0.0)
