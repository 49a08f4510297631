"""What the network's input values are: the model's normalisation, and an image checked against it.

- :func:`check_normalization` / :func:`normalize`: the ``{"mode": "meanstd", "mean", "std"}`` record a
  model file stores, and ``(float32(x) - mean) / std`` (numpy and dask arrays alike);
- :func:`image_for_model`: an image's dtype and value range against what the model was trained on
  (refused when far off, a warning for a moderate brightness shift), from a few sampled chunks
  (:func:`sample_stats`).

No torch here: predict's entry checks run before any model is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from volseg.errors import InputError, OptionError

if TYPE_CHECKING:
    from volseg.storage.volumes import Volume

__all__ = [
    "FAR_SHIFT",
    "FAR_SPREAD",
    "WARN_SHIFT",
    "WARN_SPREAD",
    "ImageCheck",
    "check_normalization",
    "image_for_model",
    "normalize",
    "sample_stats",
]


# ===================================================================== normalisation
def check_normalization(normalization: Any) -> dict[str, Any]:
    """Validate and return ``{"mode": "meanstd", "mean": float, "std": float}`` (std > 0)."""
    ok = (
        isinstance(normalization, dict)
        and normalization.get("mode") == "meanstd"
        and all(isinstance(normalization.get(k), (int, float)) for k in ("mean", "std"))
        and math.isfinite(normalization["mean"])
        and math.isfinite(normalization["std"])
        and normalization["std"] > 0
    )
    if not ok:
        raise OptionError(
            f"normalization {normalization!r}: write {{'mode': 'meanstd', 'mean': M, 'std': S}} with S > 0"
        )
    return {"mode": "meanstd", "mean": float(normalization["mean"]), "std": float(normalization["std"])}


def normalize(array: Any, normalization: dict[str, Any]) -> Any:
    """Apply the model's input normalisation: ``(float32(x) - mean) / std``, as float32.

    Works on numpy and dask arrays alike (elementwise); the shape is unchanged.
    """
    norm = check_normalization(normalization)
    return (array.astype(np.float32) - np.float32(norm["mean"])) / np.float32(norm["std"])


# ================================================================ image vs the model
#: Refuse when the image's mean lies this many training standard deviations off, or its
#: spread differs by this factor: the network would see values it never saw.
FAR_SHIFT = 4.0
FAR_SPREAD = 4.0
#: Warn (brightness and contrast do vary between stacks) beyond these.
WARN_SHIFT = 1.0
WARN_SPREAD = 1.5


@dataclass(frozen=True)
class ImageCheck:
    """What :func:`image_for_model` found: the normalisation to use and what to tell the user."""

    normalization: dict[str, Any] | None
    warnings: tuple[str, ...] = ()
    image_stats: dict[str, float] = field(default_factory=dict)


def sample_stats(array: Any, roi: Sequence[tuple[int, int]] | None = None, max_chunks: int = 8) -> dict:
    """Mean and standard deviation of up to ``max_chunks`` whole chunks spread over ``roi``.

    Reads at most ``max_chunks`` chunks (evenly spaced in C order over the ROI's chunk grid),
    so the cost is bounded on any volume.
    """
    shape = tuple(int(s) for s in array.shape)
    chunks = tuple(int(c) for c in array.chunks)
    roi = tuple(roi) if roi is not None else tuple((0, s) for s in shape)
    first = [a // c for (a, _), c in zip(roi, chunks, strict=True)]
    last = [-(-b // c) for (_, b), c in zip(roi, chunks, strict=True)]
    counts = [max(1, hi - lo) for lo, hi in zip(first, last, strict=True)]
    total = math.prod(counts)
    picks = sorted({int(round(k)) for k in np.linspace(0, total - 1, min(max_chunks, total))})
    values = []
    for flat in picks:
        index = np.unravel_index(flat, counts)
        region = []
        for ax, i in enumerate(index):
            lo = max(roi[ax][0], (first[ax] + int(i)) * chunks[ax])
            hi = min(roi[ax][1], (first[ax] + int(i) + 1) * chunks[ax])
            region.append(slice(lo, max(lo + 1, hi)))
        values.append(np.asarray(array[tuple(region)], dtype=np.float64).ravel())
    sample = np.concatenate(values)
    return {"mean": float(sample.mean()), "std": float(sample.std())}


def image_for_model(
    vol: Volume,
    model_extra: Mapping[str, Any],
    normalization: Mapping[str, Any] | None,
    *,
    roi: Sequence[tuple[int, int]] | None = None,
    rescale: bool = False,
    model_name: str = "the model",
) -> ImageCheck:
    """Check an image against what the model was trained on; the normalisation to apply.

    Refused (one line): a dtype other than the training images' (when the model records it),
    or a value range far outside the training one (when the model records the training
    intensities, as ``volseg train`` does) (mean more than :data:`FAR_SHIFT` training
    standard deviations off, or a spread :data:`FAR_SPREAD` times larger or smaller). A
    moderate shift gives a warning. With ``rescale`` the image's own sampled mean and standard
    deviation are used for normalisation instead (its values are mapped onto the training
    range), and neither dtype nor range is refused.
    """
    if vol.dtype.kind not in "uif" or vol.dtype.kind == "b":
        raise InputError(
            f"{vol.path}: dtype {vol.dtype} is not an image; predict needs integer or float grey values"
        )
    stats = sample_stats(vol.array, roi)
    if rescale:
        if not stats["std"] > 0:
            raise InputError(
                f"{vol.path}: the sampled chunks are constant ({stats['mean']:g}); --rescale needs contrast"
            )
        norm = {"mode": "meanstd", "mean": stats["mean"], "std": stats["std"]}
        return ImageCheck(norm, (), stats)
    trained_dtype = model_extra.get("image_dtype")
    # What 'volseg train' measured on its training sections; a model saved otherwise records no range.
    intensity = model_extra.get("intensity") or {}
    mean, std = intensity.get("mean"), intensity.get("std")
    fix = "convert it like the training images, or pass --rescale to map its values onto the training range"
    if trained_dtype and np.dtype(trained_dtype) != vol.dtype:
        raise InputError(
            f"{vol.path}: is {vol.dtype}, but {model_name} was trained on {trained_dtype} images"
            f"{_trained(mean, std)}; {fix}"
        )
    warnings: list[str] = []
    if isinstance(mean, (int, float)) and isinstance(std, (int, float)) and std > 0:
        shift = abs(stats["mean"] - mean) / std
        spread = (stats["std"] / std) if stats["std"] > 0 else 0.0
        seen = f"mean {stats['mean']:.4g}, std {stats['std']:.4g}"
        if shift > FAR_SHIFT or spread > FAR_SPREAD or spread < 1 / FAR_SPREAD:
            raise InputError(
                f"{vol.path}: its values ({seen}) lie far outside the range {model_name} was trained on"
                f"{_trained(mean, std)}; {fix}"
            )
        if shift > WARN_SHIFT or spread > WARN_SPREAD or spread < 1 / WARN_SPREAD:
            warnings.append(
                f"{vol.path}: brightness or contrast differs from the training images ({seen} against "
                f"mean {mean:.4g}, std {std:.4g}); results may suffer, --rescale maps it onto the "
                "training range"
            )
    return ImageCheck(dict(normalization) if normalization else None, tuple(warnings), stats)


def _trained(mean: Any, std: Any) -> str:
    if isinstance(mean, (int, float)) and isinstance(std, (int, float)):
        return f" (mean {mean:.4g}, std {std:.4g})"
    return ""
