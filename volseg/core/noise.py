"""Counter-based random values and smooth noise: functions of a key and of global integer coordinates.

No stateful generator: every value is a hash (splitmix64) of a key and of integer coordinates (a lattice
point, a grid cell, a pixel, a section). A block of any size asks for exactly the values it needs, in any
order, and gets the same bits as any other block that covers the same coordinates. The smooth fields are
cubic B-spline value noise on global lattices, evaluated separably in a fixed order with elementwise
operations only (no BLAS, whose summation order depends on array shapes).

Hashes wrap silently in uint64: that is the point of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "bspline_taps",
    "gaussian",
    "hash_ints",
    "pixel_hash",
    "smoothstep",
    "stream_keys",
    "uniform",
    "value_noise",
]

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)
_BSPLINE_SQ = 151.0 / 315.0  # mean over t of the sum of squared cubic B-spline weights


# ------------------------------------------------------------------ counter-based hashing
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijection of uint64 with full avalanche (arrays only, wraps silently)."""
    x = x ^ (x >> _S30)
    x = x * _M1
    x = x ^ (x >> _S27)
    x = x * _M2
    return x ^ (x >> _S31)


def _u64(value: Any) -> np.ndarray:
    return np.atleast_1d(np.asarray(value)).astype(np.uint64)


def hash_ints(key: np.ndarray, *parts: Any) -> np.ndarray:
    """Hash ``key`` with integer coordinates ``parts`` (broadcast together) into uint64."""
    h = key
    for p in parts:
        h = _mix(h ^ (_u64(p) * _M2 + _GOLD))
    return h


def uniform(h: np.ndarray, k: int = 0) -> np.ndarray:
    """The ``k``-th independent uniform in [0, 1) (float64) derived from hashes ``h``."""
    if k:
        h = _mix(h + _u64(k) * _GOLD)
    return (h >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


def stream_keys(seed: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    """One independent key per stream name (by position in ``names``), all derived from ``seed``."""
    base = _mix(_u64(seed) ^ _GOLD)
    return {name: hash_ints(base, i + 1) for i, name in enumerate(names)}


def pixel_hash(key: np.ndarray, z: int, ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray:
    """One uint64 per pixel of section ``z``, a function of ``(key, z, y, x)`` only."""
    rows = hash_ints(key, z, np.arange(*ys))
    cols = _u64(np.arange(*xs)) * _M2 + _GOLD
    return _mix(rows[:, None] ^ cols[None, :])


def gaussian(h: np.ndarray) -> np.ndarray:
    """Approximately standard normal float32 from the four 16-bit parts of ``h`` (Irwin-Hall)."""
    m = np.uint64(0xFFFF)
    total = (h & m).astype(np.float32)
    for shift in (16, 32, 48):
        total += ((h >> np.uint64(shift)) & m).astype(np.float32)
    return (total - np.float32(4 * 32767.5)) * np.float32(1.0 / math.sqrt(4 * (65536.0**2 - 1) / 12.0))


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """0 below ``e0``, 1 above ``e1``, the cubic ``3t^2 - 2t^3`` between (float32)."""
    t = np.clip((x - np.float32(e0)) * np.float32(1.0 / (e1 - e0)), 0.0, 1.0)
    return t * t * (np.float32(3.0) - np.float32(2.0) * t)


# ------------------------------------------------------------------------ value noise
def bspline_taps(start: int, stop: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
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
        return 2.0 * uniform(hash_ints(key, ly[:, None], lx[None, :])) - 1.0
    kz, wz = bspline_taps(z, z + 1, z_spacing)
    out = np.zeros((ly.size, lx.size))
    for a in range(4):
        out += wz[a, 0] * (2.0 * uniform(hash_ints(key, kz[0] - 1 + a, ly[:, None], lx[None, :])) - 1.0)
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
    ky, wy = bspline_taps(ys[0], ys[1], spacing)
    kx, wx = bspline_taps(xs[0], xs[1], spacing)
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
