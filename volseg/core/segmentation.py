"""2-D segmentation kernels: a membrane (boundary) probability map -> cell labels, in memory.

Pure functions of arrays, no paths and no storage; :mod:`volseg.stages.segment` maps them over the
blocks of a volume. A section is segmented on its own (:func:`segment_section`): the boundary map is
smoothed in (y, x), the interior is where it lies below a threshold, seeds are placed (h-minima of the
boundary map, or the tops of the distance transform of the interior), a seeded watershed floods the
section and segments smaller than ``min_size`` pixels are given to their neighbours. ``method="cc"``
takes the plain connected components of the interior instead. :func:`segment_array` is the whole-volume
reference that the block-wise stage reproduces.

A new 2-D method goes here: a name in :data:`METHODS` and a branch in :func:`segment_section`; the
stage's options validate against :data:`METHODS`, so nothing else changes.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.ndimage as ndi

__all__ = [
    "METHODS",
    "MODES",
    "SEEDS",
    "SegmentationParams",
    "distance_seeds",
    "drop_small",
    "halo",
    "hminima_seeds",
    "label_dtype",
    "refill",
    "segment_array",
    "segment_section",
    "smooth",
    "watershed_markers",
]

MODES = ("2d", "3d")
METHODS = ("watershed", "cc")
SEEDS = ("distance", "hminima")
_EIGHT = np.ones((3, 3), bool)


class SegmentationParams(Protocol):
    """What the kernels read from the options (:class:`volseg.stages.segment.SegmentOptions` has it all).

    The meaning of each is documented on ``SegmentOptions``; the kernels do not validate them.
    """

    @property
    def mode(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def seeds(self) -> str: ...
    @property
    def threshold(self) -> float: ...
    @property
    def sigma(self) -> float: ...
    @property
    def min_distance(self) -> int: ...
    @property
    def distance_h(self) -> float: ...
    @property
    def h(self) -> float: ...
    @property
    def min_size(self) -> int: ...
    @property
    def keep_boundaries(self) -> bool: ...
    @property
    def relabel(self) -> bool: ...


def smooth(boundary: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing in (y, x) only, of a ``(Z, Y, X)`` or ``(Y, X)`` map."""
    if sigma <= 0:
        return boundary
    sig = (0.0,) * (boundary.ndim - 2) + (sigma, sigma)
    return ndi.gaussian_filter(boundary, sig, mode="reflect")


def halo(sigma: float) -> int:
    """How far :func:`smooth` reaches, in pixels: the margin a block must be read with."""
    # scipy's gaussian_filter reaches int(4 * sigma + 0.5) pixels (truncate=4)
    return int(4.0 * sigma + 0.5) if sigma > 0 else 0


def watershed_markers(smoothed: np.ndarray, interior: np.ndarray, opts: SegmentationParams) -> np.ndarray:
    """Watershed markers ``(Y, X)``: one id per seed, and at least one seed per interior component."""
    components = ndi.label(interior)[0]
    found = (
        hminima_seeds(smoothed, interior, opts.h)
        if opts.seeds == "hminima"
        else distance_seeds(interior, components, opts.min_distance, opts.distance_h)
    )
    markers = ndi.label(found, _EIGHT)[0]
    # A component without a seed (e.g. a flat section, which has no h-minimum) becomes one.
    seeded = np.zeros(components.max() + 1, bool)
    seeded[components[found]] = True
    seedless = ~seeded[components] & interior
    if seedless.any():
        extra = ndi.label(seedless)[0]
        markers = np.where(seedless, extra + markers.max() * (extra > 0), markers)
    return markers


def hminima_seeds(smoothed: np.ndarray, interior: np.ndarray, h: float) -> np.ndarray:
    """The h-minima of depth ``h`` of the smoothed boundary map, inside the interior (bool)."""
    from skimage.morphology import h_minima

    return h_minima(smoothed, h).astype(bool) & interior


def distance_seeds(
    interior: np.ndarray, components: np.ndarray, min_distance: int, distance_h: float
) -> np.ndarray:
    """The tops of the distance transform at least ``distance_h`` px high that hold a peak (bool).

    An elongated cell has one ridge and a cell with a bulge one top, not a row of maxima;
    of the tops, those holding a peak at least ``min_distance`` px from any higher peak are kept.
    """
    from skimage.feature import peak_local_max
    from skimage.morphology import h_maxima

    dist = ndi.distance_transform_edt(interior)
    tops = ndi.label(h_maxima(dist, distance_h).astype(bool) & interior, _EIGHT)[0]
    peaks = peak_local_max(dist, min_distance=min_distance, labels=components, exclude_border=False)
    keep = np.zeros(tops.max() + 1, bool)
    keep[tops[tuple(peaks.T)]] = True
    keep[0] = False
    return keep[tops]


def drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` with the segments smaller than ``min_size`` set to 0 (the same array when none is)."""
    if min_size <= 1 or labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if small.any():
        labels = np.where(small[labels], 0, labels)
    return labels


def refill(smoothed: np.ndarray, labels: np.ndarray, kept: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Give the pixels of dropped segments (in ``labels``, 0 in ``kept``) to their neighbours.

    A watershed from the kept segments, restricted to the dropped pixels and the ring of
    kept pixels around them: the same result as flooding the whole section again from
    ``kept``, at the cost of the dropped pixels only.
    """
    from skimage.segmentation import watershed

    holes = (kept == 0) & (labels != 0)
    region = ndi.binary_dilation(holes, _EIGHT)
    if mask is not None:
        region &= mask
    filled = watershed(smoothed, np.where(region, kept, 0), mask=region)
    return np.where(holes, filled, kept)


def segment_section(boundary: np.ndarray, opts: SegmentationParams) -> np.ndarray:
    """Segment one section.

    Parameters
    ----------
    boundary
        ``(Y, X)`` membrane probability in 0..1 (float).
    opts
        The options (:class:`volseg.stages.segment.SegmentOptions`).

    Returns
    -------
    numpy.ndarray
        ``(Y, X)`` uint32 labels 1..n, 0 for background (membranes in ``cc`` mode or
        with ``keep_boundaries``).
    """
    from skimage.segmentation import relabel_sequential, watershed

    smoothed = smooth(boundary.astype(np.float32, copy=False), opts.sigma)
    interior = smoothed < opts.threshold
    if opts.method == "cc":
        labels = drop_small(ndi.label(interior)[0], opts.min_size)
    else:
        mask = interior if opts.keep_boundaries else None
        labels = watershed(smoothed, watershed_markers(smoothed, interior, opts), mask=mask)
        kept = drop_small(labels, opts.min_size)
        if kept is not labels:
            labels = refill(smoothed, labels, kept, mask)
    return relabel_sequential(labels.astype(np.uint32, copy=False))[0].astype(np.uint32, copy=False)


def label_dtype(n_voxels: int) -> np.dtype:
    """``uint32`` unless ids may reach 2**32 (then ``uint64``)."""
    return np.dtype(np.uint32) if n_voxels < 2**32 - 1 else np.dtype(np.uint64)


def segment_array(boundary: np.ndarray, options: SegmentationParams) -> np.ndarray:
    """Segment a whole in-memory ``(Z, Y, X)`` boundary map: the reference for the block-wise run.

    Gives the same ids as :func:`volseg.stages.segment.segment` with any chunking (2-D mode), or
    the same partition up to a renumbering (3-D mode).
    """
    from skimage.segmentation import relabel_sequential

    opts = options
    boundary = np.asarray(boundary, np.float32)
    dtype = label_dtype(boundary.size)
    if opts.mode == "3d":
        labels, _ = ndi.label(smooth(boundary, opts.sigma) < opts.threshold)
        labels = drop_small(labels, opts.min_size)
        return relabel_sequential(labels)[0].astype(dtype)
    out = np.zeros(boundary.shape, dtype)
    plane = boundary.shape[1] * boundary.shape[2]
    start = 0
    for z in range(boundary.shape[0]):
        local = segment_section(boundary[z], opts).astype(dtype)
        offset = start if opts.relabel else z * plane
        out[z] = np.where(local > 0, local + dtype.type(offset), 0)
        start += int(local.max())
    return out
