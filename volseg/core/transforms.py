"""The pure transforms of the augmentation, each a function of arrays (and of a Generator where random).

Geometric (dihedral, a coarse-grid elastic warp combined with rotation and scale), intensity
(brightness, contrast, gamma, blur, noise) and the section defects of serial-section EM (low contrast,
missing sections and regions, smears, folds). The array conventions are those of
:mod:`volseg.core.augment`, which draws their parameters and applies them in order.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from scipy.interpolate import CubicSpline

__all__ = [
    "adjust_brightness",
    "adjust_contrast",
    "adjust_gamma",
    "dihedral",
    "dihedral_inverse",
    "fold",
    "gaussian_blur",
    "gaussian_noise",
    "low_contrast",
    "missing_region",
    "missing_section",
    "smear",
    "warp",
    "warp_coordinates",
]

FloatArray = NDArray[np.floating[Any]]


# =========================================================================== geometric
def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """Apply dihedral transform ``k`` (0..7) to the last two axes, exactly.

    ``k % 4`` quarter turns (counter-clockwise, :func:`numpy.rot90`), then a flip of the
    last axis when ``k >= 4``. Turns by 90 or 270 degrees swap ``Y`` and ``X``; ``k`` in
    ``(0, 2, 4, 6)`` keeps the shape. Returns a C-contiguous copy.
    """
    if not 0 <= k < 8:
        raise ValueError(f"dihedral k={k!r}: must be an integer from 0 to 7")
    out = np.rot90(array, k % 4, axes=(-2, -1))
    if k >= 4:
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


def dihedral_inverse(k: int) -> int:
    """Index of the transform that undoes :func:`dihedral` ``k``.

    Reflections (``k >= 4``) are their own inverse; a turn by ``k`` quarters is undone
    by ``-k`` quarters.
    """
    return k if k >= 4 else (-k) % 4


@functools.lru_cache(maxsize=32)
def _spline_matrix(n: int, grid: int) -> NDArray[np.float32]:
    """``(n, grid)`` matrix that interpolates ``grid`` evenly spaced control values to ``n`` pixels.

    Cubic spline interpolation is linear in the control values, so interpolating the
    identity gives the matrix once; a dense field is then two small matrix products.
    """
    if n == 1:  # one pixel: the mean of the control values
        return np.full((1, grid), 1.0 / grid, dtype=np.float32)
    knots = np.linspace(0.0, n - 1.0, grid)
    matrix = CubicSpline(knots, np.eye(grid), bc_type="natural")(np.arange(n, dtype=np.float64))
    matrix = matrix.astype(np.float32)
    matrix.setflags(write=False)
    return matrix


def warp_coordinates(
    shape: tuple[int, int],
    displacement: FloatArray | None = None,
    angle: float = 0.0,
    scale: float = 1.0,
) -> NDArray[np.float32]:
    """Source coordinates ``(2, Y, X)`` for a rotation, a scale and a smooth deformation.

    Output pixel ``p`` samples the input at ``c + R(angle) (p - c) / scale + d(p)``, where
    ``c`` is the patch centre and ``d`` the displacement interpolated (natural cubic
    spline, separably) from the coarse control grid ``displacement`` of shape
    ``(2, GY, GX)`` in pixels (``GY, GX >= 2``), whose control points span the patch
    corner to corner. The affine part and the deformation share one field, so the
    whole warp costs one resampling per array.

    Parameters
    ----------
    shape
        ``(Y, X)`` of the patch.
    displacement
        ``(2, GY, GX)`` control displacements (dy, dx) in pixels, or ``None``.
    angle
        Rotation of the content in degrees, clockwise as displayed (row 0 at the top):
        ``angle=90`` on a square patch matches ``numpy.rot90(a, -1)``, that is
        ``dihedral(a, 3)``.
    scale
        Zoom factor: ``> 1`` magnifies the content.
    """
    ny, nx = shape
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    theta = math.radians(angle)
    cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
    y = (np.arange(ny, dtype=np.float32) - cy)[:, None]
    x = (np.arange(nx, dtype=np.float32) - cx)[None, :]
    coords = np.empty((2, ny, nx), dtype=np.float32)
    coords[0] = cy + cos * y - sin * x
    coords[1] = cx + sin * y + cos * x
    if displacement is not None:
        displacement = np.asarray(displacement, dtype=np.float32)
        wy = _spline_matrix(ny, displacement.shape[1])
        wx = _spline_matrix(nx, displacement.shape[2])
        for axis in (0, 1):
            coords[axis] += wy @ displacement[axis] @ wx.T
    return coords


def _nearest_index(coord: NDArray[np.float32], n: int) -> NDArray[np.int32]:
    # Round, then fold into 0..n-1 like scipy.ndimage mode="reflect" (d c b a | a b c d | d c b a).
    # int32 keeps the modulo cheap (several times faster than on int64).
    index = np.mod(np.floor(coord + np.float32(0.5)).astype(np.int32), 2 * n)
    return np.where(index >= n, 2 * n - 1 - index, index)


def warp(array: np.ndarray, coords: NDArray[np.float32], order: int = 1) -> np.ndarray:
    """Sample ``array`` (``(Y, X)`` or ``(C, Y, X)``) at ``coords`` (``(2, Y', X')``).

    Integer and bool arrays are sampled by nearest neighbour through exact indexing
    (``order`` is ignored): the result holds only values of the input, in its dtype.
    Floating arrays are interpolated with spline ``order`` (1 = linear, 3 = cubic,
    slower); float64 stays float64, smaller floats become float32. The boundary is
    reflected (scipy ``"reflect"``).
    """
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        ny, nx = array.shape[-2:]
        return array[..., _nearest_index(coords[0], ny), _nearest_index(coords[1], nx)]
    if array.ndim == 3:
        return np.stack([warp(channel, coords, order) for channel in array])
    output = np.result_type(array.dtype, np.float32)
    return ndi.map_coordinates(array, coords, order=order, mode="reflect", output=output)


# =========================================================================== intensity
def _spatial_mean(image: FloatArray) -> FloatArray:
    return image.mean(axis=(-2, -1), keepdims=True, dtype=np.float64).astype(np.float32)


def adjust_brightness(image: FloatArray, delta: float) -> FloatArray:
    """Add ``delta`` to every intensity."""
    return image + np.float32(delta)


def adjust_contrast(image: FloatArray, factor: float) -> FloatArray:
    """Scale deviations from each section's mean by ``factor``."""
    mean = _spatial_mean(image)
    return (image - mean) * np.float32(factor) + mean


def adjust_gamma(image: FloatArray, gamma: float) -> FloatArray:
    """``clip(image, 0, 1) ** gamma``: assumes intensities normalised to ``[0, 1]``."""
    return np.power(np.clip(image, 0.0, 1.0), np.float32(gamma))


def gaussian_blur(image: FloatArray, sigma: float) -> FloatArray:
    """Gaussian blur of standard deviation ``sigma`` px within each section."""
    sigmas = (0.0, sigma, sigma) if image.ndim == 3 else sigma
    return ndi.gaussian_filter(image, sigmas, mode="reflect", truncate=3.0, output=np.float32)


def gaussian_noise(image: FloatArray, sigma: float, rng: np.random.Generator) -> FloatArray:
    """Add independent Gaussian noise of standard deviation ``sigma`` to every pixel."""
    return image + np.float32(sigma) * rng.standard_normal(image.shape, dtype=np.float32)


# =========================================================================== section defects
# Each takes one section (Y, X); the Augmenter applies them channel by channel.
def low_contrast(section: FloatArray, factor: float) -> FloatArray:
    """A poorly stained section: deviations from the mean shrink to ``factor`` (e.g. 0.1-0.4)."""
    return adjust_contrast(section, factor)


def _fill_value(section: FloatArray, fill: float | None) -> np.float32:
    return np.float32(section.mean(dtype=np.float64) if fill is None else fill)


def missing_section(section: FloatArray, fill: float | None = None) -> FloatArray:
    """A lost section: every pixel set to ``fill`` (the section mean when ``None``)."""
    return np.full_like(section, _fill_value(section, fill))


def missing_region(section: FloatArray, box: tuple[slice, slice], fill: float | None = None) -> FloatArray:
    """A hole (dirt, a tear): the pixels in ``box`` set to ``fill`` (the section mean when ``None``)."""
    out = section.copy()
    out[box] = _fill_value(section, fill)
    return out


def smear(section: FloatArray, axis: int, start: int, width: int, length: int) -> FloatArray:
    """A streak: in a band ``width`` px thick, intensities are averaged over ``length`` px along ``axis``.

    ``axis=1`` smears along ``X`` in rows ``start:start + width``; ``axis=0`` along ``Y``
    in those columns.
    """
    out = section.copy()
    band = (slice(None), slice(start, start + width)) if axis == 0 else (slice(start, start + width),)
    out[band] = ndi.uniform_filter1d(section[band], size=length, axis=axis, mode="nearest")
    return out


def fold(section: FloatArray, angle: float, offset: float, width: float, darkness: float) -> FloatArray:
    """A fold: a straight dark line ``width`` px wide, at ``offset`` px from the centre.

    The line's normal points at ``angle`` degrees; the darkening falls off linearly to
    the line's edges and reaches ``darkness`` (0 = none, 1 = black) on its axis.
    """
    ny, nx = section.shape
    theta = math.radians(angle)
    y = (np.arange(ny, dtype=np.float32) - (ny - 1) / 2.0)[:, None]
    x = (np.arange(nx, dtype=np.float32) - (nx - 1) / 2.0)[None, :]
    distance = np.abs(math.cos(theta) * y + math.sin(theta) * x - offset)
    profile = np.clip(1.0 - distance / np.float32(width / 2.0), 0.0, 1.0)
    return section * (1.0 - np.float32(darkness) * profile)
