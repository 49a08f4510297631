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
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from volseg.core.transforms import (
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    dihedral,
    dihedral_inverse,
    fold,
    gaussian_blur,
    gaussian_noise,
    low_contrast,
    missing_region,
    missing_section,
    smear,
    warp,
    warp_coordinates,
)
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
            raise OptionError(
                f"augment {name!r}: unknown preset; use one of {', '.join(PRESETS)}", argument="augment"
            )
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


def parse_probabilities(text: str, option: str = "augment_prob") -> dict[str, float]:
    """Parse ``"elastic=0.5,noise=0"`` into ``{"elastic": 0.5, "noise": 0.0}``.

    Raises :class:`~volseg.errors.OptionError` naming ``option`` for an unknown
    transform, a missing ``=``, or a value that is not a number from 0 to 1.
    """
    result: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value_text = (s.strip() for s in item.partition("="))
        if not sep:
            raise OptionError(
                f"{option} {item!r}: write NAME=PROBABILITY, for example elastic=0.5", argument=option
            )
        if name not in TRANSFORMS:
            raise OptionError(
                f"{option} {item!r}: unknown transform {name!r}; use one of {', '.join(TRANSFORMS)}",
                argument=option,
            )
        try:
            value = float(value_text)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:
            raise OptionError(
                f"{option} {item!r}: {value_text!r} is not a probability; use a number from 0 to 1",
                argument=option,
            )
        result[name] = value
    return result


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
