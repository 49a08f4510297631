"""Seeds of the cells: a jittered grid whose seeds drift along z, and cells that split and merge back.

A grid cell ``(i, j)`` holds one seed or none; its id is a function of ``(i, j)`` and of the split window
only, so a cell keeps its id from section to section and across blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from volseg.core.noise import bspline_taps, hash_ints, uniform
from volseg.core.synth.params import SynthContext

__all__ = ["Seeds", "cell_range", "section_seeds"]


def cell_range(ctx: SynthContext, lo: float, hi: float, axis: int) -> np.ndarray:
    """Grid rows (``axis`` 0) or columns (1) whose seeds can shape pixels ``lo .. hi``."""
    g = ctx.params.cell_size
    first = max(math.floor((lo - ctx.reach) / g), -ctx.margin_cells)
    last = min(math.floor((hi + ctx.reach) / g), ctx.grid[axis] - ctx.margin_cells - 1)
    return np.arange(first, last + 1)


def _seed_ids(ctx: SynthContext, ii: np.ndarray, jj: np.ndarray, slot: Any) -> np.ndarray:
    m = ctx.margin_cells
    return 1 + ((ii + m) * ctx.grid[1] + (jj + m)) * ctx.slots + slot


def _drift(ctx: SynthContext, ii: np.ndarray, jj: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth per-seed displacement along z, bounded by ``drift * cell_size`` per axis."""
    p = ctx.params
    kz, wz = bspline_taps(z, z + 1, p.drift_sections)
    dy = np.zeros(ii.shape)
    dx = np.zeros(ii.shape)
    for a in range(4):
        h = hash_ints(ctx.keys["drift"], ii, jj, kz[0] - 1 + a)
        dy += wz[a, 0] * (2.0 * uniform(h, 1) - 1.0)
        dx += wz[a, 0] * (2.0 * uniform(h, 2) - 1.0)
    amp = p.drift * p.cell_size
    return amp * dy, amp * dx


def _split(
    ctx: SynthContext, ii: np.ndarray, jj: np.ndarray, z: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Which cells have a daughter at section ``z``, and the parent-to-daughter offset."""
    p = ctx.params
    length = p.split_sections
    window = z // length
    h = hash_ints(ctx.keys["split"], ii, jj, window)
    born = window * length + np.floor(uniform(h, 1) * 0.3 * length)
    dies = born + np.floor((0.4 + 0.25 * uniform(h, 2)) * length)
    alive = (uniform(h, 0) < p.split) & (born <= z) & (z < dies)
    ramp = np.clip(np.minimum(z - born + 1, dies - z) / 6.0, 0.0, 1.0)
    dist = p.split_distance * p.cell_size * (0.12 + 0.88 * ramp * ramp * (3.0 - 2.0 * ramp))
    vy, vx = uniform(h, 3) - 0.5, uniform(h, 4) - 0.5
    norm = np.sqrt(vy * vy + vx * vx) + 1e-9
    return alive, dist * vy / norm, dist * vx / norm, window


@dataclass
class Seeds:
    """Seeds of one section, sorted by id (ties in distance go to the lower id)."""

    y: np.ndarray
    x: np.ndarray
    weight: np.ndarray  # power-diagram weight >= 0: heavier seeds get larger cells
    id: np.ndarray
    parent_y: np.ndarray  # parents only (for mitochondria), with their ids and grid cells
    parent_x: np.ndarray
    parent_id: np.ndarray
    parent_cell: np.ndarray


def section_seeds(ctx: SynthContext, z: int, rows: np.ndarray, cols: np.ndarray) -> Seeds:
    """Seeds of grid cells ``rows x cols`` at section ``z``.

    A grid cell holds one seed or none. Grid cells form 3 x 3 blocks whose centre always
    holds one, which bounds the distance to the nearest seed; a block may be a single big
    cell (only its centre seed, with the largest weight).
    """
    p, g = ctx.params, ctx.params.cell_size
    ii, jj = (a.ravel() for a in np.meshgrid(rows, cols, indexing="ij"))
    h = hash_ints(ctx.keys["cell"], ii, jj)
    centre = (ii % 3 == 1) & (jj % 3 == 1)
    big = uniform(hash_ints(ctx.keys["cell"], ii // 3, jj // 3, -1)) < p.big_cells
    present = centre | (~big & (uniform(h, 0) >= p.missing))
    dy, dx = _drift(ctx, ii, jj, z)
    y = (ii + 0.5 + p.jitter * (uniform(h, 1) - 0.5)) * g + dy
    x = (jj + 0.5 + p.jitter * (uniform(h, 2) - 0.5)) * g + dx
    alive, oy, ox, window = _split(ctx, ii, jj, z)
    alive &= present
    py, px = y - np.where(alive, oy / 2, 0.0), x - np.where(alive, ox / 2, 0.0)
    pid = _seed_ids(ctx, ii, jj, 0)
    sy = np.concatenate([py[present], (y + oy / 2)[alive]])
    sx = np.concatenate([px[present], (x + ox / 2)[alive]])
    sid = np.concatenate([pid[present], _seed_ids(ctx, ii[alive], jj[alive], 1 + window)])
    weight = (p.size_variation * g) ** 2 * np.where(centre & big, 1.0, uniform(h, 3) ** 2)
    weight = np.concatenate([weight[present], weight[alive]])
    order = np.argsort(sid, kind="stable")
    cell = np.stack([ii, jj], 1)[present]
    return Seeds(
        sy[order], sx[order], weight[order], sid[order], py[present], px[present], pid[present], cell
    )
