"""Random training patches drawn lazily from an image and a label volume.

Reproducibility
---------------
Sample ``n`` (the ``i``-th patch of training step ``s`` is ``n = s * batch_size + i``) is
drawn from its own generator ``numpy.random.default_rng([seed, n])``: the section, the
position, the rejection sampler's retries and the augmentation all come from it. A patch
therefore depends on ``(seed, n)`` alone, not on which DataLoader worker builds it or on
what was drawn before, and a resumed run that feeds indices from its resumed step on
draws exactly the patches an uninterrupted run would have drawn.

Reading
-------
Patches are sliced from the Zarr arrays, so only the chunks they touch are read; a volume
smaller than the cache limit is read into memory once per process (each DataLoader worker
holds its own copy) the first time a patch is drawn from it. The U-Net border-weight maps
are computed once per training section and kept in a cache bounded by the same limit.

Intensities
-----------
The augmentations assume intensities in about ``[0, 1]`` (see :mod:`volseg.core.augment`), so a
patch is scaled by ``(raw - lo) / (hi - lo)``, augmented, scaled back to raw units and only
then normalised with the model's ``(raw - mean) / std`` (:func:`volseg.nn.intensity.normalize`), so
that training and inference see the same normalisation of the same raw values.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from volseg.core.affinities import affinities
from volseg.core.augment import AugmentConfig, Augmenter
from volseg.core.sections import parse_sections
from volseg.core.tiling import pad_indices
from volseg.core.weights import border_weights, instances_from_mask
from volseg.errors import InputError, OptionError
from volseg.nn.inference import PAD_MODE
from volseg.nn.intensity import normalize

__all__ = [
    "BatchIndices",
    "IntensityStats",
    "LabelSummary",
    "PatchConfig",
    "PatchDataset",
    "VolumeReader",
    "context_sections",
    "intensity_stats",
    "positive_mask",
    "scan_labels",
    "split_sections",
]

DEFAULT_CACHE_BYTES = 2 << 30  # 2 GiB
#: The cell id of pixels beyond the stack (a section an offset reaches that does not exist): unknown.
_UNKNOWN = np.uint32(2**32 - 1)


# ============================================================================ sections
def split_sections(
    n: int, val_slices: str | None = None, val_fraction: float | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Split sections ``0..n-1`` into ``(train, validation)``, both sorted.

    ``val_slices`` is in the grammar of ``--sections`` (:func:`volseg.core.sections.parse_sections`:
    ``"25:30"``, ``"0:30:5"``, ``"0,10:12"``, ``"-5:"``) and wins over ``val_fraction``; a
    fraction holds out the *last* ``ceil(fraction * n)`` sections as one block, since
    neighbouring sections share structure and a block gives a fairer score than scattered
    sections. A fraction of 0 gives no validation.
    """
    if val_slices:
        chosen = parse_sections(val_slices, n, "--val-slices")
        if chosen is None:  # only blanks
            raise OptionError(
                f"--val-slices {val_slices!r}: selects no section of the volume's {n} (0..{n - 1})"
            )
        val = tuple(sorted(chosen))
    else:
        fraction = 0.1 if val_fraction is None else float(val_fraction)
        if not 0.0 <= fraction < 1.0:
            raise OptionError(
                f"--val-fraction {val_fraction!r}: use a number from 0 (no validation) to below 1"
            )
        k = math.ceil(fraction * n)
        val = tuple(range(n - k, n))
    held = set(val)
    train = tuple(i for i in range(n) if i not in held)
    if not train:
        what = f"--val-slices {val_slices}" if val_slices else f"--val-fraction {val_fraction}"
        raise OptionError(
            f"{what} holds out all {n} sections and leaves none for training; hold out fewer sections"
        )
    return train, val


# ============================================================================== labels
def positive_mask(labels: np.ndarray, foreground: Sequence[int]) -> NDArray[np.bool_]:
    """``True`` where ``labels`` holds one of the ``foreground`` values (the positive class)."""
    return np.isin(labels, list(foreground))


@dataclass(frozen=True)
class LabelSummary:
    """What :func:`scan_labels` found: the label values present and the positive fraction."""

    values: tuple[int, ...]
    positive_fraction: float
    positive_per_section: tuple[int, ...]


def scan_labels(
    array: Any,
    foreground: Sequence[int],
    sections: Sequence[int] | None = None,
    label_values: Sequence[int] | None = None,
    name: str = "labels",
    require_positive: bool = True,
) -> LabelSummary:
    """Read the label sections in z-chunk bands and check them.

    Raises :class:`InputError` when a value lies outside ``label_values`` (when given),
    when the volume holds a single value, or when no pixel is positive.
    """
    shape = tuple(array.shape)
    sections = tuple(range(shape[0])) if sections is None else tuple(sections)
    band = max(1, int(array.chunks[0]))
    values: set[int] = set()
    positive: dict[int, int] = {}
    wanted = set(sections)
    for start in range(0, shape[0], band):
        chosen = [z for z in range(start, min(start + band, shape[0])) if z in wanted]
        if not chosen:
            continue
        block = np.asarray(array[start : min(start + band, shape[0])])
        for z in chosen:
            section = block[z - start]
            if section.dtype.kind not in "iub":
                raise InputError(
                    f"{name}: dtype {section.dtype} is not integer; labels must be integer values"
                )
            values.update(int(v) for v in np.unique(section))
            positive[z] = int(np.count_nonzero(positive_mask(section, foreground)))
    if label_values is not None:
        extra = sorted(values - {int(v) for v in label_values})
        if extra:
            raise InputError(
                f"{name}: holds value(s) {extra[:8]} outside the declared --label-values "
                f"{sorted(int(v) for v in label_values)}; fix the labels or declare those values"
            )
    if len(values) < 2:
        raise InputError(
            f"{name}: every pixel of the labelled sections is {sorted(values)[0] if values else '?'}; "
            "an empty label volume cannot train a model, check the file or --foreground"
        )
    total = sum(positive.values())
    if total == 0 and require_positive:
        raise InputError(
            f"{name}: no pixel holds a --foreground value {list(foreground)} (values present: "
            f"{sorted(values)[:8]}); choose the value(s) that mark the structure to segment"
        )
    n_pixels = len(sections) * shape[1] * shape[2]
    return LabelSummary(
        values=tuple(sorted(values)),
        positive_fraction=total / n_pixels,
        positive_per_section=tuple(positive[z] for z in sections),
    )


# ========================================================================== intensities
@dataclass(frozen=True)
class IntensityStats:
    """Raw-unit statistics of the training sections.

    ``mean``/``std`` are the model's input normalisation; ``lo``/``hi`` map raw values to
    about ``[0, 1]`` for the intensity augmentations.
    """

    mean: float
    std: float
    lo: float
    hi: float

    @property
    def normalization(self) -> dict[str, Any]:
        return {"mode": "meanstd", "mean": self.mean, "std": self.std}


def intensity_stats(
    array: Any, sections: Sequence[int], seed: int = 0, max_pixels: int = 1 << 22, patch: int = 256
) -> IntensityStats:
    """Mean, standard deviation and range of the image over the training sections.

    Reads every training section whole when together they hold at most ``max_pixels``
    pixels, otherwise ``max_pixels / patch**2`` random ``patch``-sized windows of them, so
    the cost is bounded on any volume. ``lo, hi`` are ``0, 255`` for 8-bit images and the
    0.1 / 99.9 percentiles otherwise.
    """
    _, ny, nx = array.shape
    sections = list(sections)
    if len(sections) * ny * nx <= max_pixels:
        sample = np.concatenate([np.asarray(array[z]).ravel() for z in sections])
    else:
        rng = np.random.default_rng([seed, 2**31])
        py, px = min(patch, ny), min(patch, nx)
        pieces = []
        for _ in range(max(1, max_pixels // (py * px))):
            z = sections[int(rng.integers(len(sections)))]
            y, x = int(rng.integers(ny - py + 1)), int(rng.integers(nx - px + 1))
            pieces.append(np.asarray(array[z, y : y + py, x : x + px]).ravel())
        sample = np.concatenate(pieces)
    sample = sample.astype(np.float64)
    mean, std = float(sample.mean()), float(sample.std())
    if not std > 0:
        raise InputError(f"image: the training sections are constant (all {mean:g}); nothing to learn from")
    if np.dtype(array.dtype).itemsize == 1 and np.dtype(array.dtype).kind == "u":
        lo, hi = 0.0, 255.0
    else:
        lo, hi = (float(v) for v in np.percentile(sample, [0.1, 99.9]))
        if not hi > lo:
            lo, hi = mean - 3 * std, mean + 3 * std
    return IntensityStats(mean=mean, std=std, lo=lo, hi=hi)


def context_sections(z: int, context: int, n: int) -> NDArray[np.intp]:
    """Sections ``z - context .. z + context`` of ``n``, mirrored beyond the ends as inference pads them."""
    return pad_indices(z - context, z + context + 1, n, PAD_MODE)


# ============================================================================== reading
class VolumeReader:
    """Slices of a ``(Z, Y, X)`` Zarr array, from an in-memory copy when it fits ``cache_bytes``.

    The copy is made on first use in the process that reads (a DataLoader worker), and is
    never pickled: a reader sent to a worker arrives empty.
    """

    def __init__(self, array: Any, cache_bytes: int) -> None:
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.cacheable = int(np.prod(self.shape)) * np.dtype(array.dtype).itemsize <= cache_bytes
        self._data: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}

    def read(self, z: Any, y: slice, x: slice) -> np.ndarray:
        """``array[z, y, x]`` as numpy (``z`` an int, slice or index list)."""
        if self.cacheable:
            if self._data is None:
                self._data = np.asarray(self.array[...])
            return self._data[z, y, x]
        if isinstance(z, (list, np.ndarray)):  # zarr wants a contiguous band: read it once, pick the sections
            z = np.asarray(z)
            lo, hi = int(z.min()), int(z.max()) + 1
            return np.asarray(self.array[lo:hi, y, x])[z - lo]
        return np.asarray(self.array[z, y, x])


# =============================================================================== dataset
@dataclass(frozen=True)
class PatchConfig:
    """How patches are drawn (see :class:`PatchDataset`).

    Parameters
    ----------
    sections
        Training section indices.
    patch_size
        Side of the square patch (px).
    foreground
        Label values of the positive class.
    stats
        Normalisation and augmentation range (:func:`intensity_stats`).
    seed
        Base seed; patch ``n`` comes from ``default_rng([seed, n])``.
    context
        Neighbouring sections on each side fed as channels (2.5-D); beyond the stack ends
        sections are mirrored as :func:`volseg.nn.inference.infer_image` mirrors them.
    augment
        Augmentation probabilities and ranges.
    min_foreground, max_attempts
        Rejection sampler: redraw a patch whose positive fraction is below
        ``min_foreground``, at most ``max_attempts`` draws in all (the last one is kept).
    border_weights
        Also return the U-Net border-weight map (``w0``, ``sigma``) for weighted BCE.
    foreground_is_boundary
        The positive class marks boundaries (membranes); the cells for the weight map are
        then the connected regions of the negative class, else those of the positive class.
    cache_bytes
        Volumes (and weight maps) up to this size are held in memory.
    offsets
        Affinity targets for these ``(dz, dy, dx)`` offsets instead of the positive mask: ``target`` is
        ``(C, P, P)``, with a ``mask`` of the pairs that count (:func:`volseg.core.affinities.affinities`
        on the augmented cells of the patch's section and of the sections its offsets reach).
    instance_ids
        With ``offsets``: the label volume holds cell ids (0: background), the same cell with the same
        id in every section, so pairs across sections are known; else the cells are the connected
        regions of each section (as for the weight map) and pairs across sections are masked.
    """

    sections: tuple[int, ...]
    patch_size: int
    foreground: tuple[int, ...]
    stats: IntensityStats
    seed: int = 0
    context: int = 0
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig.preset("none"))
    min_foreground: float = 0.0
    max_attempts: int = 10
    border_weights: bool = False
    w0: float = 10.0
    sigma: float = 5.0
    foreground_is_boundary: bool = True
    cache_bytes: int = DEFAULT_CACHE_BYTES
    offsets: tuple[tuple[int, int, int], ...] | None = None
    instance_ids: bool = False

    def __post_init__(self) -> None:
        if not self.sections:
            raise OptionError("patches: no training sections")
        if self.patch_size < 1:
            raise OptionError(f"--patch-size {self.patch_size}: must be positive")
        if not 0.0 <= self.min_foreground <= 1.0:
            raise OptionError(f"--min-foreground {self.min_foreground}: use a fraction from 0 to 1")
        if self.max_attempts < 1:
            raise OptionError(f"--max-attempts {self.max_attempts}: use 1 or more")


class PatchDataset(torch.utils.data.Dataset):
    """Map-style dataset: item ``n`` is the ``n``-th random patch, a dict of float32 arrays.

    ``image`` ``(C, P, P)`` normalised, ``target`` ``(1, P, P)`` in {0, 1}, and, with
    ``border_weights``, ``weight`` ``(1, P, P)``. Its length is unbounded in effect
    (``2**62``); a :class:`BatchIndices` sampler chooses the indices.
    """

    def __init__(self, image: Any, labels: Any, config: PatchConfig) -> None:
        if tuple(image.shape) != tuple(labels.shape):
            raise InputError(
                f"labels shape {tuple(labels.shape)} differs from image shape {tuple(image.shape)}"
            )
        _, ny, nx = image.shape
        if config.patch_size > min(ny, nx):
            raise OptionError(
                f"--patch-size {config.patch_size} is larger than the sections ({ny} x {nx}); "
                f"use at most {min(ny, nx)}"
            )
        self.config = config
        self.image = VolumeReader(image, config.cache_bytes)
        self.labels = VolumeReader(labels, config.cache_bytes - (image.nbytes if self.image.cacheable else 0))
        self.augmenter = Augmenter(config.augment)
        self._weights: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cells: OrderedDict[int, np.ndarray] = OrderedDict()
        self.attempts = 0  # draws made by this process's rejection sampler (statistics)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_weights": OrderedDict(), "_cells": OrderedDict()}

    def __len__(self) -> int:
        return 2**62

    # ------------------------------------------------------------------ drawing
    def window(self, rng: np.random.Generator) -> tuple[int, slice, slice]:
        """A random ``(section, rows, columns)`` window of the training sections."""
        c = self.config
        _, ny, nx = self.image.shape
        z = c.sections[int(rng.integers(len(c.sections)))]
        y = int(rng.integers(ny - c.patch_size + 1))
        x = int(rng.integers(nx - c.patch_size + 1))
        return z, slice(y, y + c.patch_size), slice(x, x + c.patch_size)

    def draw(self, rng: np.random.Generator) -> tuple[tuple[int, slice, slice], np.ndarray]:
        """A window and its positive mask, redrawn (bounded) while below ``min_foreground``."""
        c = self.config
        for _ in range(c.max_attempts):
            self.attempts += 1
            z, ys, xs = self.window(rng)
            mask = positive_mask(self.labels.read(z, ys, xs), c.foreground)
            if c.min_foreground <= 0 or mask.mean() >= c.min_foreground:
                break
        return (z, ys, xs), mask

    def weight_map(self, z: int) -> np.ndarray:
        """The border-weight map of section ``z`` (computed once, kept in a bounded cache)."""
        if z in self._weights:
            self._weights.move_to_end(z)
            return self._weights[z]
        c = self.config
        _, ny, nx = self.labels.shape
        mask = positive_mask(self.labels.read(z, slice(0, ny), slice(0, nx)), c.foreground)
        cells = instances_from_mask(~mask if c.foreground_is_boundary else mask)
        weights = border_weights(cells, c.w0, c.sigma)
        self._weights[z] = weights
        while len(self._weights) > 1 and sum(w.nbytes for w in self._weights.values()) > c.cache_bytes:
            self._weights.popitem(last=False)
        return weights

    def cell_map(self, z: int) -> np.ndarray:
        """Section ``z``'s cells as ids for affinity targets (kept in the weight maps' bounded cache).

        A label volume of ids (``instance_ids``): its values; else the connected regions of the
        non-boundary class (4-connected), numbered within the section. 0 is background (boundary).
        """
        if z in self._cells:
            self._cells.move_to_end(z)
            return self._cells[z]
        c = self.config
        _, ny, nx = self.labels.shape
        labels = self.labels.read(z, slice(0, ny), slice(0, nx))
        if c.instance_ids:  # the positive class (membrane) is background
            cells = np.where(positive_mask(labels, c.foreground), 0, labels).astype(np.uint32)
        else:
            mask = positive_mask(labels, c.foreground)
            cells = instances_from_mask(~mask if c.foreground_is_boundary else mask).astype(np.uint32)
        self._cells[z] = cells
        while len(self._cells) > 1 and sum(a.nbytes for a in self._cells.values()) > c.cache_bytes:
            self._cells.popitem(last=False)
        return cells

    def _cell_windows(self, z: int, ys: slice, xs: slice) -> tuple[list[np.ndarray], int]:
        """The cells of the sections the offsets reach from ``z`` (beyond the stack: unknown), and where
        ``z`` is among them."""
        # cells of a binary truth are numbered per section: pairs across sections are unknown, not read
        dz = [o[0] for o in self.config.offsets or ()] if self.config.instance_ids else [0]
        lo, hi = min(0, *dz), max(0, *dz)
        nz = self.labels.shape[0]
        shape = (ys.stop - ys.start, xs.stop - xs.start)
        windows = [
            self.cell_map(s)[ys, xs] if 0 <= s < nz else np.full(shape, _UNKNOWN, np.uint32)
            for s in range(z + lo, z + hi + 1)
        ]
        return windows, -lo

    def __getitem__(self, n: int) -> dict[str, np.ndarray]:
        c = self.config
        rng = np.random.default_rng([c.seed, int(n)])
        (z, ys, xs), mask = self.draw(rng)
        raw = self.image.read(context_sections(z, c.context, self.image.shape[0]) if c.context else z, ys, xs)
        raw = raw.astype(np.float32)
        span = np.float32(c.stats.hi - c.stats.lo)
        unit = (raw - np.float32(c.stats.lo)) / span
        carried: list[np.ndarray] = [mask.astype(np.uint8)]
        if c.border_weights:
            carried.append(self.weight_map(z)[ys, xs])
        cells_at = 0
        if c.offsets:
            windows, cells_at = self._cell_windows(z, ys, xs)
            cells_at += len(carried)
            carried.extend(windows)
        unit, carried = self.augmenter(unit, tuple(carried), rng)
        image = normalize(unit * span + np.float32(c.stats.lo), c.stats.normalization)
        item = {
            "image": np.ascontiguousarray(image.reshape(-1, c.patch_size, c.patch_size), dtype=np.float32),
            "target": carried[0][None].astype(np.float32),
        }
        if c.border_weights:
            item["weight"] = np.ascontiguousarray(carried[1][None], dtype=np.float32)
        if c.offsets:
            first = 2 if c.border_weights else 1
            stack = np.stack(carried[first:])
            targets, known = affinities(
                stack, c.offsets, background=0, ignore=_UNKNOWN, per_section=not c.instance_ids,
                dtype=np.float32,
            )  # fmt: skip
            k = cells_at - first
            item["target"] = np.ascontiguousarray(targets[:, k])
            item["mask"] = np.ascontiguousarray(known[:, k], dtype=np.float32)
        return item


class BatchIndices(torch.utils.data.Sampler[list[int]]):
    """Batch sampler: ``[s * batch_size + i for i in range(batch_size)]`` for steps ``s = start, ...``.

    ``stop`` (exclusive) ends it; ``None`` runs on until the consumer stops (time limits).
    """

    def __init__(self, batch_size: int, start: int = 0, stop: int | None = None) -> None:
        self.batch_size, self.start, self.stop = int(batch_size), int(start), stop

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while self.stop is None or step < self.stop:
            yield list(range(step * self.batch_size, (step + 1) * self.batch_size))
            step += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("BatchIndices without a stop has no length")
        return max(0, self.stop - self.start)
