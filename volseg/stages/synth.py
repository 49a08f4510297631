"""Synthetic serial-section EM volumes with exact labels, any size, chunk by chunk.

The generator draws neurite cross-sections the way an ssTEM stack shows them: cells are
the Voronoi regions of seeds on a jittered grid, bent by a smooth domain warp, with
rounded corners, dark membranes of varying width, textured cytoplasm, vesicles,
mitochondria, uneven illumination, blur and Poisson-Gaussian noise. Seeds drift
smoothly from section to section and now and then a cell splits in two (a second
seed diverging from its parent) and merges back later.

Every random quantity is a hash of the seed and of *global* coordinates (lattice
points, grid cells, pixels), never a draw from a stateful generator, and every
neighbourhood operation is computed on a tile-aligned margin around the block. A
block therefore comes out bit for bit the same whatever the chunking, and memory
stays bounded by the block.

Label convention of ``membranes.zarr`` (that of the ISBI 2012 labels): 255 = cell
interior, 0 = membrane. ``cells.zarr`` holds uint32 cell ids (a complete partition,
no background), stable across sections so that a cell keeps its id in 3-D.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from volseg.errors import OptionError

__all__ = ["SynthParams", "SynthResult", "synth", "synth_block"]

MEMBRANE, INTERIOR = 0, 255


# ------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class SynthParams:
    """Appearance and dynamics of a synthetic stack (lengths in pixels, z in sections).

    The defaults mimic ISBI 2012 (ssTEM, 4 x 4 x 50 nm): about 115 cells per 512 x 512
    section, from 15 to 170 px across; labelled membranes 3.5 to 8 px wide (the
    visibly dark line is about 1 px narrower, as in the ISBI labels); about 20 % of the
    pixels membrane.
    """

    # cells
    cell_size: float = 44.0  # spacing of the seed grid: the typical cell diameter
    jitter: float = 0.9  # seed jitter inside its grid cell (fraction of the cell)
    missing: float = 0.2  # chance that a seed is absent (never the centre of a 3 x 3 block)
    big_cells: float = 0.15  # chance that a 3 x 3 block of grid cells is one big cell
    size_variation: float = 1.0  # power-diagram weights (x cell_size): some cells grow at others' expense
    # motion along z
    drift: float = 0.4  # largest seed drift per axis (fraction of cell_size)
    drift_sections: float = 8.0  # z spacing of the drift lattice (sections)
    split: float = 0.3  # chance per grid cell and split window that the cell splits
    split_sections: int = 40  # split window: a daughter is born and merges back inside one window
    split_distance: float = 0.55  # parent-daughter distance once split (fraction of cell_size)
    # outlines
    warp: float = 30.0  # bound of the domain warp that bends membranes (typical displacement ~1/5 of it)
    warp_scale: float = 48.0  # lattice spacing of the warp
    warp_sections: float = 5.0  # z spacing of the warp lattice (sections)
    wiggle: float = 8.0  # bound of a fine warp (14 px lattice) that makes membranes wiggle
    membrane_width: tuple[float, float] = (3.5, 8.0)  # labelled width range between two cells
    width_variation: float = 0.35  # relative width change along a membrane
    corner_radius: tuple[float, float] = (2.0, 8.0)  # rounded corners: extracellular space at junctions
    membrane_contrast: float = 0.6  # darkening at the membrane core (0..1)
    # content
    cell_brightness: tuple[float, float] = (0.52, 0.65)
    texture: float = 0.2  # band-limited cytoplasm texture (standard deviation, relative)
    grain: float = 0.9  # per-pixel grain before the blur (its blurred standard deviation is ~0.06)
    smudge: float = 0.3  # darkening of diffuse low-frequency patches
    mito_rate: float = 0.1  # mitochondria per cell and 16-section window
    mito_axes: tuple[float, float, float, float] = (20.0, 40.0, 14.0, 26.0)  # a_min, a_max, b_min, b_max
    vesicle_density: float = 0.45  # share of vesicle sites in use in vesicle-rich regions
    vesicle_radius: tuple[float, float] = (3.0, 6.0)
    # acquisition
    blur_sigma: float = 1.2  # gaussian PSF
    illumination: float = 0.12  # amplitude of the low-frequency gain field
    photons: float = 600.0  # photons at intensity 1 (Poisson part of the noise)
    read_noise: float = 0.01  # Gaussian part of the noise (intensity units)

    def validate(self) -> None:
        """Raise :class:`OptionError` naming the first parameter out of range."""
        checks = [
            ("cell_size", 24 <= self.cell_size <= 512, "24..512 px"),
            ("jitter", 0 <= self.jitter <= 1, "0..1"),
            ("missing", 0 <= self.missing <= 1, "0..1"),
            ("big_cells", 0 <= self.big_cells <= 1, "0..1"),
            ("drift", 0 <= self.drift <= 0.5, "0..0.5"),
            ("split", 0 <= self.split <= 1, "0..1"),
            ("split_sections", self.split_sections >= 8, ">= 8"),
            ("split_distance", 0 <= self.split_distance <= 0.7, "0..0.7"),
            ("size_variation", 0 <= self.size_variation <= 3, "0..3"),
            ("wiggle", 0 <= self.wiggle <= 12, "0..12"),
            ("warp", 0 <= self.warp <= self.cell_size, "0..cell_size"),
            (
                "membrane_width",
                1 <= self.membrane_width[0] <= self.membrane_width[1] <= 16,
                "1 <= lo <= hi <= 16",
            ),
            (
                "corner_radius",
                0 <= self.corner_radius[0] <= self.corner_radius[1] <= 40,
                "0 <= lo <= hi <= 40",
            ),
            ("drift_sections", self.drift_sections >= 1, ">= 1"),
            ("warp_scale", self.warp_scale >= 4, ">= 4"),
            ("warp_sections", self.warp_sections >= 1, ">= 1"),
            ("width_variation", 0 <= self.width_variation <= 0.6, "0..0.6"),
            ("membrane_contrast", 0 <= self.membrane_contrast <= 1, "0..1"),
            (
                "cell_brightness",
                0 < self.cell_brightness[0] <= self.cell_brightness[1] <= 1,
                "0 < lo <= hi <= 1",
            ),
            ("texture", 0 <= self.texture <= 1, "0..1"),
            ("grain", 0 <= self.grain <= 3, "0..3"),
            ("smudge", 0 <= self.smudge <= 1, "0..1"),
            ("mito_rate", 0 <= self.mito_rate <= 1, "0..1"),
            (
                "mito_axes",
                0 < self.mito_axes[0] <= self.mito_axes[1] <= 80
                and 0 < self.mito_axes[2] <= self.mito_axes[3] <= 80,
                "0 < a_min <= a_max <= 80, 0 < b_min <= b_max <= 80",
            ),
            ("vesicle_density", 0 <= self.vesicle_density <= 1, "0..1"),
            (
                "vesicle_radius",
                1 <= self.vesicle_radius[0] <= self.vesicle_radius[1] <= 6,
                "1 <= lo <= hi <= 6",
            ),
            ("blur_sigma", 0 <= self.blur_sigma <= 4, "0..4"),
            ("illumination", 0 <= self.illumination <= 1, "0..1"),
            ("photons", self.photons > 0, "> 0"),
            ("read_noise", 0 <= self.read_noise <= 1, "0..1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise OptionError(
                    f"synth parameter {name}={getattr(self, name)!r} is out of range; use {allowed}"
                )


@dataclass(frozen=True)
class SynthResult:
    """What :func:`synth` wrote."""

    out: Path
    image: Path
    cells: Path
    membranes: Path
    shape: tuple[int, int, int]
    seed: int
    seconds: float
    membrane_fraction: float

    @property
    def mvox_per_s(self) -> float:
        return float(np.prod(self.shape)) / max(self.seconds, 1e-9) / 1e6


# ------------------------------------------------------------------ counter-based hashing
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)
_STREAMS = (
    "cell",
    "drift",
    "split",
    "warp_y",
    "warp_x",
    "width",
    "texture",
    "grain",
    "vesicle",
    "vesicle_field",
    "mito",
    "gain",
    "noise",
    "section",
    "tone",
    "smudge",
)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijection of uint64 with full avalanche (arrays only, wraps silently)."""
    x = x ^ (x >> _S30)
    x = x * _M1
    x = x ^ (x >> _S27)
    x = x * _M2
    return x ^ (x >> _S31)


def _u64(value: Any) -> np.ndarray:
    return np.atleast_1d(np.asarray(value)).astype(np.uint64)


def _hash(key: np.ndarray, *parts: Any) -> np.ndarray:
    """Hash ``key`` with integer coordinates (broadcast together) into uint64."""
    h = key
    for p in parts:
        h = _mix(h ^ (_u64(p) * _M2 + _GOLD))
    return h


def _uniform(h: np.ndarray, k: int = 0) -> np.ndarray:
    """The ``k``-th independent uniform in [0, 1) (float64) derived from hashes ``h``."""
    if k:
        h = _mix(h + _u64(k) * _GOLD)
    return (h >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


def _keys(seed: int) -> dict[str, np.ndarray]:
    base = _mix(_u64(seed) ^ _GOLD)
    return {name: _hash(base, i + 1) for i, name in enumerate(_STREAMS)}


# ------------------------------------------------------------------------ value noise
_BSPLINE_SQ = 151.0 / 315.0  # mean over t of the sum of squared cubic B-spline weights


def _taps(start: int, stop: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index of tap 1 and the 4 cubic B-spline weights for coordinates ``start..stop-1``."""
    u = (np.arange(start, stop, dtype=np.float64) + 0.5) / spacing
    k = np.floor(u)
    t = u - k
    t2, s = t * t, 1.0 - t
    t3 = t2 * t
    w = np.stack([s * s * s, 3.0 * t3 - 6.0 * t2 + 4.0, -3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0, t3]) / 6.0
    return k.astype(np.int64), w


def _lattice(key: np.ndarray, z: int, ly: np.ndarray, lx: np.ndarray, z_spacing: float | None) -> np.ndarray:
    """Lattice values in [-1, 1], interpolated in z with B-spline weights when ``z_spacing`` is set."""
    if z_spacing is None:
        return 2.0 * _uniform(_hash(key, ly[:, None], lx[None, :])) - 1.0
    kz, wz = _taps(z, z + 1, z_spacing)
    out = np.zeros((ly.size, lx.size))
    for a in range(4):
        out += wz[a, 0] * (2.0 * _uniform(_hash(key, kz[0] - 1 + a, ly[:, None], lx[None, :])) - 1.0)
    return out


def value_noise(
    key: np.ndarray,
    z: int,
    ys: tuple[int, int],
    xs: tuple[int, int],
    spacing: float,
    z_spacing: float | None = None,
    *,
    normalize: bool = True,
) -> np.ndarray:
    """Smooth noise on a global lattice, evaluated on rows ``ys`` and columns ``xs`` of section ``z``.

    Cubic B-spline interpolation of hashed lattice values, done separably in a fixed
    order, so a pixel's value depends on its global coordinates only. With
    ``normalize`` the result has unit standard deviation, otherwise it is bounded by 1.

    Returns
    -------
    numpy.ndarray
        float32 ``(Y, X)``.
    """
    ky, wy = _taps(ys[0], ys[1], spacing)
    kx, wx = _taps(xs[0], xs[1], spacing)
    ly = np.arange(ky[0] - 1, ky[-1] + 3)
    lx = np.arange(kx[0] - 1, kx[-1] + 3)
    lat = _lattice(key, z, ly, lx, z_spacing).astype(np.float32)
    wx, wy = wx.astype(np.float32), wy.astype(np.float32)
    cols = kx - lx[0] - 1
    rows = ky - ly[0] - 1
    along_x = np.take(lat, cols, axis=1)
    along_x *= wx[0]
    tmp = np.empty_like(along_x)
    for b in range(1, 4):
        np.take(lat, cols + b, axis=1, out=tmp)
        tmp *= wx[b]
        along_x += tmp
    out = np.take(along_x, rows, axis=0)
    out *= wy[0][:, None]
    tmp = np.empty_like(out)
    for a in range(1, 4):
        np.take(along_x, rows + a, axis=0, out=tmp)
        tmp *= wy[a][:, None]
        out += tmp
    if normalize:
        dims = 2 if z_spacing is None else 3
        out *= np.float32(1.0 / math.sqrt(_BSPLINE_SQ**dims / 3.0))
    return out


def _pixel_hash(key: np.ndarray, z: int, ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray:
    """One uint64 per pixel of section ``z``, a function of ``(key, z, y, x)`` only."""
    rows = _hash(key, z, np.arange(*ys))
    cols = _u64(np.arange(*xs)) * _M2 + _GOLD
    return _mix(rows[:, None] ^ cols[None, :])


def _gaussian(h: np.ndarray) -> np.ndarray:
    """Approximately standard normal float32 from the four 16-bit parts of ``h`` (Irwin-Hall)."""
    m = np.uint64(0xFFFF)
    total = (h & m).astype(np.float32)
    for shift in (16, 32, 48):
        total += ((h >> np.uint64(shift)) & m).astype(np.float32)
    return (total - np.float32(4 * 32767.5)) * np.float32(1.0 / math.sqrt(4 * (65536.0**2 - 1) / 12.0))


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - np.float32(e0)) * np.float32(1.0 / (e1 - e0)), 0.0, 1.0)
    return t * t * (np.float32(3.0) - np.float32(2.0) * t)


# ------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class _Context:
    """Per-volume constants derived from the parameters, the seed and the volume shape."""

    params: SynthParams
    keys: dict[str, np.ndarray]
    margin_cells: int  # seeds this many grid cells beyond the volume can still shape it
    grid: tuple[int, int]  # grid rows, columns covered by ids (volume plus margins)
    slots: int  # ids per grid cell: the parent and one daughter per split window
    reach: float  # px around a region within which every seed that matters lies
    max_weight: float  # largest power-diagram weight
    theta: float  # distances to membranes are exact up to this value (px)
    tile: int = 16
    halo: int = 4


def _context(params: SynthParams, seed: int, full_shape: Sequence[int]) -> _Context:
    p, g = params, params.cell_size
    disp = p.drift * g + p.split_distance * g / 2  # per-axis drift of a seed off its home grid cell
    nearest = math.sqrt(2.0) * (2 * g + disp)  # a pixel's nearest seed is never farther (see _seeds)
    nearest = math.sqrt(nearest**2 + (p.size_variation * g) ** 2)  # a seed farther than this never wins
    theta = max(p.corner_radius[1], p.membrane_width[1] / 2 + p.vesicle_radius[1] + 3.0) + 1.0
    tile = 16
    halo = int(4.0 * p.blur_sigma + 0.5)
    reach = nearest + math.sqrt(2.0) * tile + 2 * theta + disp + p.warp + p.wiggle + 2.0
    margin = math.ceil((reach + tile + halo) / g) + 1
    grid = (math.ceil(full_shape[1] / g) + 2 * margin + 1, math.ceil(full_shape[2] / g) + 2 * margin + 1)
    slots = 2 + full_shape[0] // p.split_sections
    if grid[0] * grid[1] * slots >= 2**32 - 1:
        raise OptionError(
            f"synth shape {tuple(full_shape)}: too many cells for uint32 ids; use a larger cell_size"
        )
    return _Context(
        p, _keys(seed), margin, grid, slots, reach, (p.size_variation * g) ** 2, theta, tile, halo
    )


def _cell_range(ctx: _Context, lo: float, hi: float, axis: int) -> np.ndarray:
    g = ctx.params.cell_size
    first = max(math.floor((lo - ctx.reach) / g), -ctx.margin_cells)
    last = min(math.floor((hi + ctx.reach) / g), ctx.grid[axis] - ctx.margin_cells - 1)
    return np.arange(first, last + 1)


def _seed_ids(ctx: _Context, ii: np.ndarray, jj: np.ndarray, slot: Any) -> np.ndarray:
    m = ctx.margin_cells
    return 1 + ((ii + m) * ctx.grid[1] + (jj + m)) * ctx.slots + slot


def _drift(ctx: _Context, ii: np.ndarray, jj: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth per-seed displacement along z, bounded by ``drift * cell_size`` per axis."""
    p = ctx.params
    kz, wz = _taps(z, z + 1, p.drift_sections)
    dy = np.zeros(ii.shape)
    dx = np.zeros(ii.shape)
    for a in range(4):
        h = _hash(ctx.keys["drift"], ii, jj, kz[0] - 1 + a)
        dy += wz[a, 0] * (2.0 * _uniform(h, 1) - 1.0)
        dx += wz[a, 0] * (2.0 * _uniform(h, 2) - 1.0)
    amp = p.drift * p.cell_size
    return amp * dy, amp * dx


def _split(
    ctx: _Context, ii: np.ndarray, jj: np.ndarray, z: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Which cells have a daughter at section ``z``, and the parent-to-daughter offset."""
    p = ctx.params
    length = p.split_sections
    window = z // length
    h = _hash(ctx.keys["split"], ii, jj, window)
    born = window * length + np.floor(_uniform(h, 1) * 0.3 * length)
    dies = born + np.floor((0.4 + 0.25 * _uniform(h, 2)) * length)
    alive = (_uniform(h, 0) < p.split) & (born <= z) & (z < dies)
    ramp = np.clip(np.minimum(z - born + 1, dies - z) / 6.0, 0.0, 1.0)
    dist = p.split_distance * p.cell_size * (0.12 + 0.88 * ramp * ramp * (3.0 - 2.0 * ramp))
    vy, vx = _uniform(h, 3) - 0.5, _uniform(h, 4) - 0.5
    norm = np.sqrt(vy * vy + vx * vx) + 1e-9
    return alive, dist * vy / norm, dist * vx / norm, window


@dataclass
class _Seeds:
    """Seeds of one section, sorted by id (ties in distance go to the lower id)."""

    y: np.ndarray
    x: np.ndarray
    weight: np.ndarray  # power-diagram weight >= 0: heavier seeds get larger cells
    id: np.ndarray
    parent_y: np.ndarray  # parents only (for mitochondria), with their ids and grid cells
    parent_x: np.ndarray
    parent_id: np.ndarray
    parent_cell: np.ndarray


def _seeds(ctx: _Context, z: int, rows: np.ndarray, cols: np.ndarray) -> _Seeds:
    """Seeds of grid cells ``rows x cols`` at section ``z``.

    A grid cell holds one seed or none. Grid cells form 3 x 3 blocks whose centre always
    holds one, which bounds the distance to the nearest seed; a block may be a single big
    cell (only its centre seed, with the largest weight).
    """
    p, g = ctx.params, ctx.params.cell_size
    ii, jj = (a.ravel() for a in np.meshgrid(rows, cols, indexing="ij"))
    h = _hash(ctx.keys["cell"], ii, jj)
    centre = (ii % 3 == 1) & (jj % 3 == 1)
    big = _uniform(_hash(ctx.keys["cell"], ii // 3, jj // 3, -1)) < p.big_cells
    present = centre | (~big & (_uniform(h, 0) >= p.missing))
    dy, dx = _drift(ctx, ii, jj, z)
    y = (ii + 0.5 + p.jitter * (_uniform(h, 1) - 0.5)) * g + dy
    x = (jj + 0.5 + p.jitter * (_uniform(h, 2) - 0.5)) * g + dx
    alive, oy, ox, window = _split(ctx, ii, jj, z)
    alive &= present
    py, px = y - np.where(alive, oy / 2, 0.0), x - np.where(alive, ox / 2, 0.0)
    pid = _seed_ids(ctx, ii, jj, 0)
    sy = np.concatenate([py[present], (y + oy / 2)[alive]])
    sx = np.concatenate([px[present], (x + ox / 2)[alive]])
    sid = np.concatenate([pid[present], _seed_ids(ctx, ii[alive], jj[alive], 1 + window)])
    weight = (p.size_variation * g) ** 2 * np.where(centre & big, 1.0, _uniform(h, 3) ** 2)
    weight = np.concatenate([weight[present], weight[alive]])
    order = np.argsort(sid, kind="stable")
    cell = np.stack([ii, jj], 1)[present]
    return _Seeds(
        sy[order], sx[order], weight[order], sid[order], py[present], px[present], pid[present], cell
    )


# ------------------------------------------------------------------------ tessellation
_SLOT_BITS = 5
_SLOT_MASK = np.int32((1 << _SLOT_BITS) - 1)
_VALUE_MASK = np.int32(~((1 << _SLOT_BITS) - 1))
_INT_MAX = np.iinfo(np.int32).max
_INF_CODE = np.int32(0x7F800000 | ((1 << _SLOT_BITS) - 1))  # unpacks to +inf


def _to_tiles(a: np.ndarray, t: int) -> np.ndarray:
    ny, nx = a.shape[0] // t, a.shape[1] // t
    return a.reshape(ny, t, nx, t).transpose(0, 2, 1, 3).reshape(ny * nx, t * t)


def _from_tiles(a: np.ndarray, ny: int, nx: int, t: int) -> np.ndarray:
    return a.reshape(ny, nx, t, t).transpose(0, 2, 1, 3).reshape(ny * t, nx * t)


def _pack(value: np.ndarray, slot: int) -> np.ndarray:
    """Order-preserving int32 code of a non-negative float32 with the slot in its low bits."""
    return (value.view(np.int32) & _VALUE_MASK) | np.int32(slot)


def _unpack(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (code & _VALUE_MASK).view(np.float32), code & _SLOT_MASK


def _cull(ctx: _Context, box: tuple[np.ndarray, ...], sy: np.ndarray, sx: np.ndarray, w: np.ndarray):
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


def _candidates(ctx: _Context, seeds: _Seeds, ty: np.ndarray, tx: np.ndarray, shape: tuple[int, int]):
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
class _Partition:
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


def _boundaries(ctx: _Context, qy, qx, sy: np.ndarray, sx: np.ndarray, lift: np.ndarray, rows: list[int]):
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
    return _Partition(slot, near, np.minimum(d1, theta), np.minimum(d2, theta))


_TABLE = ("id", "tone", "vesicles", "specks", "radius", "half_width")


def _cell_table(ctx: _Context, ids: np.ndarray) -> np.ndarray:
    """Per-cell appearance from its id, ``(..., len(_TABLE))`` float32 (the id bit-cast).

    Columns: id, brightness, vesicle richness, granule density, corner radius, and half the
    cell's share of membrane width (a membrane's width is the sum over its two cells).
    """
    p = ctx.params
    h = _hash(ctx.keys["tone"], ids)
    lo, hi = p.cell_brightness
    r_lo, r_hi = p.corner_radius
    w_lo, w_hi = p.membrane_width
    u = _uniform(h, 5)
    columns = [
        ids.astype(np.uint32).view(np.float32),
        (lo + (hi - lo) * _uniform(h, 1)).astype(np.float32),
        np.clip(2.0 * _uniform(h, 2) - 0.4, 0.0, 1.0).astype(np.float32),
        (0.15 + 0.85 * _uniform(h, 3)).astype(np.float32),
        (r_lo + (r_hi - r_lo) * _uniform(h, 4)).astype(np.float32),
        (0.25 * (w_lo + (w_hi - w_lo) * u * np.sqrt(u))).astype(np.float32),  # u**1.5, IEEE-exact ops only
    ]
    return np.stack(columns, axis=-1)


@dataclass
class _Geometry:
    """Image-layout geometry of a padded region: ids, signed distance to the membrane edge, tables."""

    ids: np.ndarray  # uint32 cell id
    edge: np.ndarray  # float32 distance inside the cell from the membrane edge (< 0 on the membrane)
    tone: np.ndarray
    vesicles: np.ndarray
    specks: np.ndarray
    seeds: _Seeds


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
        return _to_tiles(a, self.size)[self.order]

    def back(self, a: np.ndarray) -> np.ndarray:
        out = np.empty_like(a)
        out[self.order] = a
        return _from_tiles(out, self.ny, self.nx, self.size)


def _warped(ctx: _Context, z: int, ys: tuple[int, int], xs: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Tile-local warped pixel coordinates (image layout, float32)."""
    p, t = ctx.params, ctx.tile
    qy = value_noise(ctx.keys["warp_y"], z, ys, xs, p.warp_scale, p.warp_sections, normalize=False)
    qx = value_noise(ctx.keys["warp_x"], z, ys, xs, p.warp_scale, p.warp_sections, normalize=False)
    qy *= np.float32(p.warp)
    qx *= np.float32(p.warp)
    if p.wiggle > 0:
        for q, name in ((qy, "warp_y"), (qx, "warp_x")):
            fine = value_noise(_hash(ctx.keys[name], 1), z, ys, xs, 14.0, 4.0, normalize=False)
            fine *= np.float32(p.wiggle)
            q += fine
    qy += (np.arange(ys[1] - ys[0]) % t).astype(np.float32)[:, None]
    qx += (np.arange(xs[1] - xs[0]) % t).astype(np.float32)[None, :]
    return qy, qx


def _tiles(ctx: _Context, seeds: _Seeds, qy: np.ndarray, qx: np.ndarray, ys, xs) -> _Tiles:
    t = ctx.tile
    ny, nx = (ys[1] - ys[0]) // t, (xs[1] - xs[0]) // t
    oy = np.repeat(np.arange(ys[0], ys[1], t, dtype=np.float64), nx)
    ox = np.tile(np.arange(xs[0], xs[1], t, dtype=np.float64), ny)
    ty, tx = _to_tiles(qy, t), _to_tiles(qx, t)
    boxes_y = np.stack([oy + ty.min(1), oy + ty.max(1)], 1)
    boxes_x = np.stack([ox + tx.min(1), ox + tx.max(1)], 1)
    cand, counts = _candidates(ctx, seeds, boxes_y, boxes_x, (ny, nx))
    order = np.argsort(-counts, kind="stable")
    rows = [int((counts > c).sum()) for c in range(cand.shape[1])]
    return _Tiles(ny, nx, t, order, cand[order], rows, oy[order, None], ox[order, None])


def _geometry(ctx: _Context, z: int, ys: tuple[int, int], xs: tuple[int, int]) -> _Geometry:
    p = ctx.params
    seeds = _seeds(ctx, z, _cell_range(ctx, ys[0], ys[1], 0), _cell_range(ctx, xs[0], xs[1], 1))
    qy, qx = _warped(ctx, z, ys, xs)
    tl = _tiles(ctx, seeds, qy, qx, ys, xs)
    far = np.float64(1e7)
    sy = (np.append(seeds.y, far)[tl.cand] - tl.origin_y).astype(np.float32)
    sx = (np.append(seeds.x, far)[tl.cand] - tl.origin_x).astype(np.float32)
    # powers are |q-s|^2 - w + W >= 0 (packable); W is a constant, not the tile's largest weight, so
    # that an extra candidate (lists are supersets that differ between chunkings) changes no rounding
    lift = (ctx.max_weight - np.append(seeds.weight, 0.0)[tl.cand]).astype(np.float32)
    part = _boundaries(ctx, tl.to(qy), tl.to(qx), sy, sx, lift, tl.rows)
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
    return _Geometry(
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


# ------------------------------------------------------------------------- rendering
def _section_key(ctx: _Context, name: str, z: int) -> np.ndarray:
    return _hash(ctx.keys[name], z)


def _vesicles(ctx: _Context, z: int, geo: _Geometry, ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray:
    """Darkening by small vesicles (rings and dots), one possible site per 14 x 14 px cell.

    Each site's disc stays inside its own site cell, so a pixel only looks at its own site.
    """
    p, s = ctx.params, 14
    gy = np.arange(ys[0] // s, (ys[1] - 1) // s + 1)
    gx = np.arange(xs[0] // s, (xs[1] - 1) // s + 1)
    h = _hash(_section_key(ctx, "vesicle", z), gy[:, None], gx[None, :])
    field = value_noise(ctx.keys["vesicle_field"], z, (gy[0], gy[-1] + 1), (gx[0], gx[-1] + 1), 4.0, 4.0)
    active = _uniform(h, 0) < p.vesicle_density * np.clip(0.5 + 0.5 * field, 0.0, 1.0)
    r_lo, r_hi = p.vesicle_radius
    radius = r_lo + (r_hi - r_lo) * _uniform(h, 1)
    free = s / 2 - radius - 1.0
    # centres relative to their site cell, so that float32 stays exact far from the origin
    cy = s / 2 - 0.5 + (2.0 * _uniform(h, 2) - 1.0) * free
    cx = s / 2 - 0.5 + (2.0 * _uniform(h, 3) - 1.0) * free
    ring = _uniform(h, 4) < 0.75
    site = ((np.arange(*ys) // s - gy[0])[:, None] * gx.size + (np.arange(*xs) // s - gx[0])[None, :]).ravel()
    pick = lambda a: np.take(np.asarray(a, dtype=np.float32).ravel(), site).reshape(geo.ids.shape)  # noqa: E731
    dy = pick(cy)
    dy -= (np.arange(*ys) % s).astype(np.float32)[:, None]
    dx = pick(cx)
    dx -= (np.arange(*xs) % s).astype(np.float32)[None, :]
    rho = np.sqrt(dy * dy + dx * dx)
    r = pick(radius)
    rim = 1.0 - _smoothstep(0.4, 1.4, np.abs(rho - r + np.float32(0.8)))
    dot = 1.0 - _smoothstep(-0.5, 0.7, rho - r * np.float32(0.75))
    is_ring = pick(ring)
    dark = (is_ring * rim * np.float32(0.5) + (1.0 - is_ring) * dot * np.float32(0.5)) * pick(active)
    dark *= _smoothstep(0.35, 0.75, geo.vesicles)
    dark *= _smoothstep(r_hi + 0.5, r_hi + 2.5, geo.edge)  # not across membranes
    return dark


def _mitochondria(ctx: _Context, z: int, seeds: _Seeds) -> list[tuple[float, ...]]:
    """Mitochondria alive at section ``z``: (owner id, cy, cx, a, b, cos, sin, phase).

    Each parent seed may hold one per 16-section window; it rides along with its seed,
    grows and shrinks over 6 to 14 sections and turns slowly.
    """
    p, g, length = ctx.params, ctx.params.cell_size, 16
    a_lo, a_hi, b_lo, b_hi = p.mito_axes
    out = []
    ii, jj = seeds.parent_cell[:, 0], seeds.parent_cell[:, 1]
    for window in (z // length - 1, z // length, z // length + 1):
        h = _hash(ctx.keys["mito"], ii, jj, window)
        zc = window * length + length * _uniform(h, 1)
        half = 3.0 + 4.0 * _uniform(h, 2)
        live = np.nonzero((_uniform(h, 0) < p.mito_rate) & (np.abs(z - zc) < half))[0]
        for k in live:
            scale = 0.35 + 0.65 * math.sqrt(max(0.0, 1.0 - ((z - zc[k]) / half[k]) ** 2))
            u = [float(_uniform(h[k : k + 1], n)[0]) for n in range(3, 9)]
            a = (a_lo + (a_hi - a_lo) * u[0]) * scale
            b = min((b_lo + (b_hi - b_lo) * u[1]) * scale, a)
            angle = 2.0 * math.pi * u[2] + 0.06 * (z - zc[k])
            cy = seeds.parent_y[k] + (u[3] - 0.5) * 0.3 * g
            cx = seeds.parent_x[k] + (u[4] - 0.5) * 0.3 * g
            out.append((float(seeds.parent_id[k]), cy, cx, a, b, math.cos(angle), math.sin(angle), u[5]))
    return out


def _draw_mitochondrion(img: np.ndarray, geo: _Geometry, m: tuple[float, ...], ys, xs) -> None:
    owner, cy, cx, a, b, cos, sin, phase = m
    r0, r1 = max(math.floor(cy - a - 2), ys[0]), min(math.ceil(cy + a + 3), ys[1])
    c0, c1 = max(math.floor(cx - a - 2), xs[0]), min(math.ceil(cx + a + 3), xs[1])
    if r0 >= r1 or c0 >= c1:
        return
    yy = (np.arange(r0, r1) - cy).astype(np.float32)[:, None]
    xx = (np.arange(c0, c1) - cx).astype(np.float32)[None, :]
    u = np.float32(cos) * yy + np.float32(sin) * xx  # along the long axis
    v = np.float32(cos) * xx - np.float32(sin) * yy
    rho = np.sqrt((u * np.float32(1.0 / a)) ** 2 + (v * np.float32(1.0 / b)) ** 2)
    out_px = (rho - np.float32(1.0)) * np.float32(b)  # ~ px outside the outline
    inside = 1.0 - _smoothstep(-0.6, 0.6, out_px)
    rim = 1.0 - _smoothstep(0.5, 1.6, np.abs(out_px + np.float32(1.2)))
    stripe = u * np.float32(1.0 / 6.5) + np.float32(phase)
    tri = np.abs(np.float32(2.0) * (stripe - np.floor(stripe)) - np.float32(1.0))
    cristae = (1.0 - _smoothstep(0.2, 0.55, tri)) * (1.0 - _smoothstep(0.55, 0.85, rho))
    dark = inside * np.float32(0.32) + rim * np.float32(0.3) + cristae * np.float32(0.22)
    rows, cols = slice(r0 - ys[0], r1 - ys[0]), slice(c0 - xs[0], c1 - xs[0])
    mask = (geo.ids[rows, cols] == np.uint32(owner)) * _smoothstep(0.0, 1.5, geo.edge[rows, cols])
    img[rows, cols] *= 1.0 - np.minimum(dark, np.float32(0.8)) * mask


def _render(ctx: _Context, z: int, geo: _Geometry, ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray:
    """The clean section before optics: float32 intensities, about 0..1."""
    p = ctx.params
    mid = value_noise(_section_key(ctx, "texture", z), 0, ys, xs, 3.5)
    grain = _uniform(_pixel_hash(ctx.keys["grain"], z, ys, xs)).astype(np.float32)
    grain -= np.float32(0.5)
    grain *= np.float32(p.grain)  # white, then band-limited by the PSF: the finest texture
    img = np.float32(1.0) + np.float32(p.texture) * mid
    img += grain
    img -= np.float32(1.6 * p.texture) * _smoothstep(0.7, 1.9, mid) * geo.specks  # dark granules
    img *= geo.tone
    smudge = value_noise(ctx.keys["smudge"], z, ys, xs, 70.0, 8.0)
    img *= 1.0 - np.float32(p.smudge) * _smoothstep(0.6, 2.0, smudge)
    # the dark line is a little narrower than the labelled band, as in hand-drawn ISBI labels
    img *= 1.0 - np.float32(p.membrane_contrast) * (1.0 - _smoothstep(-1.6, 0.2, geo.edge))
    img *= 1.0 - _vesicles(ctx, z, geo, ys, xs)
    for m in _mitochondria(ctx, z, geo.seeds):
        _draw_mitochondrion(img, geo, m, ys, xs)
    return img


def _acquire(ctx: _Context, z: int, img: np.ndarray, ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray:
    """Uneven illumination, per-section brightness, Poisson-Gaussian noise, 8-bit output."""
    p = ctx.params
    gain = value_noise(ctx.keys["gain"], z, ys, xs, 240.0, 40.0)
    gain *= np.float32(p.illumination * 0.5)
    gain += np.float32(1.0 + 0.05 * (2.0 * _uniform(_hash(ctx.keys["section"], z))[0] - 1.0))
    img = img * gain
    np.maximum(img, 0.0, out=img)
    sd = np.sqrt(img * np.float32(1.0 / p.photons) + np.float32(p.read_noise**2))
    img += sd * _gaussian(_pixel_hash(ctx.keys["noise"], z, ys, xs))
    img *= np.float32(255.0)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _section(ctx: _Context, z: int, ys: tuple[int, int], xs: tuple[int, int]):
    """One section of a block: the image, cell ids and ISBI-convention membrane labels."""
    t, h = ctx.tile, ctx.halo
    py = (math.floor((ys[0] - h) / t) * t, math.ceil((ys[1] + h) / t) * t)  # tile-aligned, with halo
    px = (math.floor((xs[0] - h) / t) * t, math.ceil((xs[1] + h) / t) * t)
    geo = _geometry(ctx, z, py, px)
    clean = _render(ctx, z, geo, py, px)
    if ctx.params.blur_sigma > 0:
        clean = ndi.gaussian_filter(clean, ctx.params.blur_sigma, mode="nearest", truncate=4.0)
    crop = (slice(ys[0] - py[0], ys[1] - py[0]), slice(xs[0] - px[0], xs[1] - px[0]))
    image = _acquire(ctx, z, clean[crop], ys, xs)
    labels = np.where(geo.edge[crop] < 0, np.uint8(MEMBRANE), np.uint8(INTERIOR))
    return image, geo.ids[crop], labels


# --------------------------------------------------------------------------- blocks
def _as_shape(value: Any, name: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise OptionError(f"synth {name} {value!r}: expected three integers (Z, Y, X)") from None
    if len(shape) != 3:
        raise OptionError(f"synth {name} {value!r}: expected three integers (Z, Y, X)")
    return shape  # type: ignore[return-value]


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise OptionError(f"synth seed {seed!r}: expected an integer in 0..2**64-1")
    return int(seed)


def synth_block(
    shape: Sequence[int],
    seed: int = 0,
    offset: Sequence[int] = (0, 0, 0),
    full_shape: Sequence[int] | None = None,
    params: SynthParams | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one block of a synthetic stack in memory.

    The block at ``offset`` of a volume of ``full_shape`` is the same, bit for bit,
    whether it is generated alone, as part of a bigger block, or the whole volume at once.

    Parameters
    ----------
    shape
        Block size ``(Z, Y, X)``.
    seed
        Selects the volume (any integer in 0..2**64-1).
    offset
        Global index ``(z, y, x)`` of the block's first voxel.
    full_shape
        Shape of the whole volume; it fixes the numbering of cell ids. Defaults to ``offset + shape``.
    params
        Appearance and dynamics; :class:`SynthParams` defaults mimic ISBI 2012.

    Returns
    -------
    image : numpy.ndarray
        uint8 ``(Z, Y, X)`` EM-like intensities.
    cells : numpy.ndarray
        uint32 ``(Z, Y, X)`` cell ids, a complete partition, stable across sections.
    membranes : numpy.ndarray
        uint8 ``(Z, Y, X)``: 255 = cell interior, 0 = membrane (ISBI 2012 convention).
    """
    params = params or SynthParams()
    params.validate()
    shape, offset = _as_shape(shape, "shape"), _as_shape(offset, "offset")
    full = (
        _as_shape(full_shape, "full_shape")
        if full_shape is not None
        else tuple(o + s for o, s in zip(offset, shape, strict=True))
    )
    if min(shape) < 1:
        raise OptionError(f"synth shape {shape}: every size must be at least 1")
    if min(offset) < 0 or any(o + s > f for o, s, f in zip(offset, shape, full, strict=True)):
        raise OptionError(f"synth block {shape} at {offset} does not fit in a volume of {full}")
    ctx = _context(params, _check_seed(seed), full)
    image = np.empty(shape, np.uint8)
    cells = np.empty(shape, np.uint32)
    membranes = np.empty(shape, np.uint8)
    ys, xs = (offset[1], offset[1] + shape[1]), (offset[2], offset[2] + shape[2])
    for dz in range(shape[0]):
        image[dz], cells[dz], membranes[dz] = _section(ctx, offset[0] + dz, ys, xs)
    return image, cells, membranes


# ------------------------------------------------------------------------ volumes
NAMES = ("image.zarr", "cells.zarr", "membranes.zarr")
LABEL_CONVENTION = {"255": "cell interior", "0": "membrane"}


def _check_volume_args(shape: Any, seed: Any, chunks: Any) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
    shape = _as_shape(shape, "shape")
    if min(shape) < 1:
        raise OptionError(f"synth shape {shape}: every size must be at least 1")
    if int(np.prod(shape, dtype=np.float64)) > 2**40:
        raise OptionError(f"synth shape {shape}: more than 2**40 voxels; generate a smaller volume")
    seed = _check_seed(seed)
    if chunks is None:
        chunks = (1, min(shape[1], 1024), min(shape[2], 1024))
    chunks = _as_shape(chunks, "chunks")
    if min(chunks) < 1:
        raise OptionError(f"synth chunks {chunks}: every size must be at least 1")
    return shape, seed, tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))


def _create(out: Path, shape, chunks, voxel_size, codec, overwrite, config) -> list[Any]:
    from volseg.errors import OutputError
    from volseg.storage.volumes import create_volume, provenance

    existing = [out / n for n in NAMES if (out / n).exists()]
    if existing and not overwrite:
        raise OutputError(f"{existing[0]}: output already exists; pass --overwrite to replace it")
    prov = provenance(config=config)
    common = {"voxel_size": voxel_size, "codec": codec, "overwrite": overwrite, "provenance_block": prov}
    return [
        create_volume(
            out / NAMES[0], shape, np.uint8, chunks, kind="image", extra={"synth": config}, **common
        ),
        create_volume(
            out / NAMES[1], shape, np.uint32, chunks, kind="label", extra={"synth": config}, **common
        ),
        create_volume(
            out / NAMES[2],
            shape,
            np.uint8,
            chunks,
            kind="mask",
            fill_value=INTERIOR,
            extra={"synth": config, "label_convention": LABEL_CONVENTION},
            **common,
        ),
    ]


def synth(
    out: str | Path,
    shape: Sequence[int] = (30, 512, 512),
    seed: int = 0,
    *,
    chunks: Sequence[int] | None = None,
    overwrite: bool = False,
    voxel_size: Sequence[float] = (50.0, 4.0, 4.0),
    codec: str | None = None,
    params: SynthParams | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Write a synthetic ssTEM-like stack with exact labels, chunk by chunk.

    Parameters
    ----------
    out
        Folder to write ``image.zarr``, ``cells.zarr`` and ``membranes.zarr`` into.
    shape
        Volume size ``(Z, Y, X)`` in voxels.
    seed
        Selects the volume; the same seed and shape give the same bytes on any chunking.
    chunks
        Chunk shape ``(Z, Y, X)``, also the unit of generation (memory is bounded by it);
        default ``(1, min(Y, 1024), min(X, 1024))``.
    overwrite
        Replace existing volumes of the same names.
    voxel_size
        Physical voxel size ``(z, y, x)`` in nanometres, recorded in the metadata.
    codec
        Compression (see :func:`volseg.storage.volumes.parse_codec`); default ``blosc-zstd``.
    params
        Appearance and dynamics; defaults mimic ISBI 2012.
    workers
        Threads generating and writing chunks at once (numpy, compression and I/O release
        the GIL); the bytes do not depend on it. Memory is about ``workers`` chunks.
    progress
        Called as ``progress(done, total)`` after each chunk.

    Returns
    -------
    SynthResult
        Paths, shape, seed, time taken and the membrane fraction.

    Notes
    -----
    ``membranes.zarr`` follows the ISBI 2012 convention, 255 = cell interior and
    0 = membrane, so a command that trains on ISBI labels trains on it unchanged.
    """
    shape, seed, chunks = _check_volume_args(shape, seed, chunks)
    params = params or SynthParams()
    params.validate()
    from volseg.storage.volumes import DEFAULT_CODEC

    out = Path(out)
    config = {"shape": list(shape), "seed": seed, "params": asdict(params)}
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise OptionError(f"synth workers {workers!r}: expected a positive integer")
    vols = _create(out, shape, chunks, voxel_size, codec or DEFAULT_CODEC, overwrite, config)
    start, membrane, blocks = time.perf_counter(), 0, list(vols[0].block_ids())

    def one(index: tuple[int, ...]) -> int:
        region = vols[0].block_region(index)
        data = synth_block(
            tuple(r.stop - r.start for r in region), seed, tuple(r.start for r in region), shape, params
        )
        for vol, block in zip(vols, data, strict=True):
            vol.write_block(index, block)
        return int(np.count_nonzero(data[2] == MEMBRANE))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, count in enumerate(pool.map(one, blocks), 1):
            membrane += count
            if progress is not None:
                progress(done, len(blocks))
    fraction = membrane / float(np.prod(shape))
    for vol in vols:
        vol.update_meta(membrane_fraction=round(fraction, 5))
        vol.mark_complete()
    seconds = time.perf_counter() - start
    return SynthResult(out, *(v.path for v in vols), shape, seed, seconds, fraction)
