"""Paired data augmentation for EM training patches.

Every transform here is a pure function of arrays (and, for the random ones, a
:class:`numpy.random.Generator`): inputs are never modified, no global random state
is used, and the same generator state gives the same output.

Arrays
------
image
    float32 ``(Y, X)``, or ``(C, Y, X)`` for 2.5-D input with ``C`` neighbouring
    sections. Geometric transforms move every channel identically. Intensity
    transforms assume intensities normalised to about ``[0, 1]`` (uint8 / 255);
    only :func:`gamma` clips to that range, so noise or brightness may leave it
    slightly.
label-like arrays
    ``(Y, X)`` arrays carried through the geometric transforms only. Integer (and
    bool) arrays -- labels -- are moved by exact index permutation or
    nearest-neighbour lookup, so they keep their dtype and never gain a value.
    Floating arrays -- for example the border weight map of
    :func:`volseg.core.weights.border_weights` -- are resampled linearly.

:class:`Augmenter` takes ``label`` as one array or as a tuple of label-like
arrays, ``Augmenter(config)(image, (label, weight), rng)``, and gives back the
same structure.

Order of application
--------------------
geometric (dihedral, then one resampling that combines elastic deformation,
rotation and scale), intensity (brightness, contrast, gamma, blur), section
defects (low contrast, missing section, missing region, smear, fold; each channel
independently), and Gaussian noise last.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from scipy.interpolate import CubicSpline

from volseg.errors import OptionError

__all__ = [
    "PRESETS",
    "TRANSFORMS",
    "AugmentConfig",
    "Augmenter",
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
    "parse_probabilities",
    "sample_warp",
    "smear",
    "warp",
    "warp_coordinates",
]

FloatArray = NDArray[np.floating[Any]]
Labels = tuple[np.ndarray, ...]

# Names accepted by --augment-prob, in the order the Augmenter applies them.
GEOMETRIC = ("dihedral", "elastic", "rotate", "scale")
INTENSITY = ("brightness", "contrast", "gamma", "blur")
DEFECTS = ("low_contrast", "missing_section", "missing_region", "smear", "fold")
TRANSFORMS = (*GEOMETRIC, *INTENSITY, *DEFECTS, "noise")
PRESETS = ("none", "light", "default", "heavy")


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


def sample_warp(
    shape: tuple[int, int], rng: np.random.Generator, config: AugmentConfig
) -> NDArray[np.float32] | None:
    """Draw the elastic / rotation / scale parts of a warp; ``None`` when none of them fires."""
    displacement = angle = None
    scale = 1.0
    if _fires(rng, config.p_elastic):
        grid = config.elastic_grid
        displacement = rng.normal(0.0, config.elastic_sigma, size=(2, grid, grid))
    if _fires(rng, config.p_rotate):
        angle = rng.uniform(-config.rotate_degrees, config.rotate_degrees)
    if _fires(rng, config.p_scale):
        scale = rng.uniform(*config.scale_range)
    if displacement is None and angle is None and scale == 1.0:
        return None
    return warp_coordinates(shape, displacement, angle or 0.0, scale)


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


# =========================================================================== configuration
@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (``p_<transform>``) and parameter ranges of the augmentations.

    ``AugmentConfig()`` is the ``"default"`` preset; see :meth:`preset` for the others
    and :meth:`with_probabilities` for per-transform overrides. Ranges are
    ``(low, high)`` and sampled uniformly (``gamma_range`` log-uniformly). Intensity
    parameters assume intensities normalised to ``[0, 1]``.
    """

    p_dihedral: float = 1.0
    p_elastic: float = 0.5
    p_rotate: float = 0.5
    p_scale: float = 0.5
    p_brightness: float = 0.5
    p_contrast: float = 0.5
    p_gamma: float = 0.3
    p_blur: float = 0.1
    p_low_contrast: float = 0.03
    p_missing_section: float = 0.0
    p_missing_region: float = 0.03
    p_smear: float = 0.03
    p_fold: float = 0.03
    p_noise: float = 0.3

    elastic_grid: int = 3  # control points per axis (the U-Net paper: 3 x 3)
    elastic_sigma: float = 10.0  # px, standard deviation of the control displacements
    rotate_degrees: float = 15.0  # angle drawn from [-rotate_degrees, rotate_degrees]
    scale_range: tuple[float, float] = (0.9, 1.1)
    image_order: int = 1  # spline order for the image: 1 linear (fast), 3 cubic
    brightness_range: tuple[float, float] = (-0.1, 0.1)
    contrast_range: tuple[float, float] = (0.75, 1.25)
    gamma_range: tuple[float, float] = (0.7, 1.5)
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    noise_sigma: tuple[float, float] = (0.01, 0.05)
    low_contrast_range: tuple[float, float] = (0.1, 0.4)
    defect_fill: float | None = None  # value of missing pixels; None = the section mean
    region_fraction: tuple[float, float] = (0.1, 0.4)  # missing region side / patch side
    smear_width: tuple[float, float] = (4.0, 24.0)  # px
    smear_length: tuple[float, float] = (8.0, 32.0)  # px
    fold_width: tuple[float, float] = (2.0, 6.0)  # px
    fold_darkness: tuple[float, float] = (0.5, 0.9)

    _PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "none": {f"p_{name}": 0.0 for name in TRANSFORMS},
        "light": {
            **{f"p_{name}": 0.0 for name in TRANSFORMS},
            "p_dihedral": 1.0,
            "p_brightness": 0.3,
            "p_contrast": 0.3,
            "p_noise": 0.2,
        },
        "default": {},
        "heavy": {
            "p_elastic": 0.9,
            "p_rotate": 0.9,
            "p_scale": 0.9,
            "p_brightness": 0.8,
            "p_contrast": 0.8,
            "p_gamma": 0.5,
            "p_blur": 0.3,
            "p_low_contrast": 0.1,
            "p_missing_section": 0.05,
            "p_missing_region": 0.1,
            "p_smear": 0.1,
            "p_fold": 0.1,
            "p_noise": 0.5,
            "elastic_grid": 5,
            "elastic_sigma": 12.0,
            "noise_sigma": (0.02, 0.08),
        },
    }

    def __post_init__(self) -> None:
        for name in TRANSFORMS:
            value = getattr(self, f"p_{name}")
            if not 0.0 <= value <= 1.0:
                raise OptionError(f"augmentation probability {name}={value!r}: use a number from 0 to 1")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple) and not (len(value) == 2 and value[0] <= value[1]):
                raise OptionError(f"augmentation {field.name}={value!r}: give (low, high) with low <= high")
        if self.elastic_grid < 2:
            raise OptionError(
                f"augmentation elastic_grid={self.elastic_grid!r}: use 2 or more control points"
            )
        if self.image_order not in range(6):
            raise OptionError(
                f"augmentation image_order={self.image_order!r}: use a spline order from 0 to 5"
            )

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        """One of ``"none"`` (identity), ``"light"``, ``"default"``, ``"heavy"``."""
        if name not in cls._PRESETS:
            raise OptionError(f"--augment {name!r}: unknown preset; use one of {', '.join(PRESETS)}")
        return cls(**cls._PRESETS[name])

    def with_probabilities(self, probabilities: Mapping[str, float] | str) -> AugmentConfig:
        """A copy with some probabilities replaced, given as a mapping or as ``"elastic=0.5,noise=0"``."""
        if isinstance(probabilities, str):
            probabilities = parse_probabilities(probabilities)
        unknown = sorted(set(probabilities) - set(TRANSFORMS))
        if unknown:
            raise OptionError(
                f"augmentation {unknown[0]!r}: unknown transform; use one of {', '.join(TRANSFORMS)}"
            )
        return dataclasses.replace(self, **{f"p_{k}": float(v) for k, v in probabilities.items()})

    def probabilities(self) -> dict[str, float]:
        """``{transform: probability}`` in the order of application."""
        return {name: getattr(self, f"p_{name}") for name in TRANSFORMS}


def parse_probabilities(text: str, option: str = "--augment-prob") -> dict[str, float]:
    """Parse ``"elastic=0.5,noise=0"`` into ``{"elastic": 0.5, "noise": 0.0}``.

    Raises :class:`~volseg.errors.OptionError` naming ``option`` for an unknown
    transform, a missing ``=``, or a value that is not a number from 0 to 1.
    """
    result: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value_text = (s.strip() for s in item.partition("="))
        if not sep:
            raise OptionError(f"{option} {item!r}: write NAME=PROBABILITY, for example elastic=0.5")
        if name not in TRANSFORMS:
            raise OptionError(
                f"{option} {item!r}: unknown transform {name!r}; use one of {', '.join(TRANSFORMS)}"
            )
        try:
            value = float(value_text)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:
            raise OptionError(
                f"{option} {item!r}: {value_text!r} is not a probability; use a number from 0 to 1"
            )
        result[name] = value
    return result


# =========================================================================== the augmenter
def _fires(rng: np.random.Generator, probability: float) -> bool:
    # Draw only when the outcome is uncertain, so "none" consumes no randomness.
    if probability <= 0.0:
        return False
    return probability >= 1.0 or rng.random() < probability


def _random_box(
    shape: tuple[int, int], rng: np.random.Generator, config: AugmentConfig
) -> tuple[slice, slice]:
    box = []
    for n in shape:
        size = max(1, round(n * rng.uniform(*config.region_fraction)))
        start = int(rng.integers(0, n - size + 1))
        box.append(slice(start, start + size))
    return box[0], box[1]


def _random_smear(section: FloatArray, rng: np.random.Generator, config: AugmentConfig) -> FloatArray:
    axis = int(rng.integers(2))
    across = section.shape[1 - axis]
    width = min(across, max(1, round(rng.uniform(*config.smear_width))))
    start = int(rng.integers(0, across - width + 1))
    length = max(2, round(rng.uniform(*config.smear_length)))
    return smear(section, axis, start, width, length)


def _random_fold(section: FloatArray, rng: np.random.Generator, config: AugmentConfig) -> FloatArray:
    half = min(section.shape) / 2.0
    return fold(
        section,
        angle=rng.uniform(0.0, 180.0),
        offset=rng.uniform(-half, half),
        width=rng.uniform(*config.fold_width),
        darkness=rng.uniform(*config.fold_darkness),
    )


# name -> (image, rng, config) -> image, for the transforms that draw their own parameters.
_Step = Callable[[FloatArray, np.random.Generator, AugmentConfig], FloatArray]
_INTENSITY_STEPS: dict[str, _Step] = {
    "brightness": lambda im, rng, c: adjust_brightness(im, rng.uniform(*c.brightness_range)),
    "contrast": lambda im, rng, c: adjust_contrast(im, rng.uniform(*c.contrast_range)),
    "gamma": lambda im, rng, c: adjust_gamma(im, math.exp(rng.uniform(*np.log(c.gamma_range)))),
    "blur": lambda im, rng, c: gaussian_blur(im, rng.uniform(*c.blur_sigma)),
}
_DEFECT_STEPS: dict[str, _Step] = {
    "low_contrast": lambda s, rng, c: low_contrast(s, rng.uniform(*c.low_contrast_range)),
    "missing_section": lambda s, rng, c: missing_section(s, c.defect_fill),
    "missing_region": lambda s, rng, c: missing_region(s, _random_box(s.shape, rng, c), c.defect_fill),
    "smear": _random_smear,
    "fold": _random_fold,
}


def _check_inputs(image: np.ndarray, labels: Labels) -> None:
    if image.ndim not in (2, 3):
        raise ValueError(f"image shape {image.shape}: expected (Y, X) or (C, Y, X)")
    for i, label in enumerate(labels):
        if label.shape != image.shape[-2:]:
            raise ValueError(
                f"label {i} shape {label.shape}: expected the image's (Y, X) = {image.shape[-2:]}"
            )
        if not (np.issubdtype(label.dtype, np.number) or label.dtype == bool):
            raise TypeError(f"label {i} dtype {label.dtype}: expected an integer, bool or float array")


class Augmenter:
    """Random paired augmentation ``(image, label, rng) -> (image, label)``.

    Parameters
    ----------
    config
        Probabilities and ranges; ``AugmentConfig.preset("none")`` gives the identity.

    Notes
    -----
    ``label`` may be one ``(Y, X)`` array or a tuple/list of them (for example
    ``(label, weight)``); the result has the same structure. The image comes back as
    float32; label-like arrays keep their dtype (see the module notes).
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config if config is not None else AugmentConfig()

    def __repr__(self) -> str:
        return f"Augmenter({self.config!r})"

    def __call__(
        self, image: np.ndarray, label: np.ndarray | Sequence[np.ndarray], rng: np.random.Generator
    ) -> tuple[FloatArray, Any]:
        single = isinstance(label, np.ndarray)
        labels: Labels = (label,) if single else tuple(np.asarray(a) for a in label)
        image = np.asarray(image, dtype=np.float32)
        _check_inputs(image, labels)
        image, labels = self._geometric(image, labels, rng)
        image = self._intensity(image, rng)
        return image, (labels[0] if single else labels)

    def _geometric(
        self, image: FloatArray, labels: Labels, rng: np.random.Generator
    ) -> tuple[FloatArray, Labels]:
        config = self.config
        if _fires(rng, config.p_dihedral):
            square = image.shape[-1] == image.shape[-2]
            # Quarter turns would swap Y and X of a non-square patch: keep to the shape-preserving four.
            k = int(rng.integers(8)) if square else 2 * int(rng.integers(4))
            image, labels = dihedral(image, k), tuple(dihedral(a, k) for a in labels)
        coords = sample_warp(image.shape[-2:], rng, config)
        if coords is not None:
            image = warp(image, coords, config.image_order)
            labels = tuple(warp(a, coords, order=1) for a in labels)
        return image, labels

    def _intensity(self, image: FloatArray, rng: np.random.Generator) -> FloatArray:
        config = self.config
        for name, step in _INTENSITY_STEPS.items():
            if _fires(rng, getattr(config, f"p_{name}")):
                image = step(image, rng, config)
        if any(getattr(config, f"p_{name}") > 0 for name in DEFECTS):
            # A defect belongs to one section: each channel of a 2.5-D patch draws its own.
            if image.ndim == 3:
                image = np.stack([self._defects(section, rng) for section in image])
            else:
                image = self._defects(image, rng)
        if _fires(rng, config.p_noise):
            image = gaussian_noise(image, rng.uniform(*config.noise_sigma), rng)
        return image

    def _defects(self, section: FloatArray, rng: np.random.Generator) -> FloatArray:
        for name, step in _DEFECT_STEPS.items():
            if _fires(rng, getattr(self.config, f"p_{name}")):
                section = step(section, rng, self.config)
        return section
