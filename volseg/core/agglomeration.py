"""Segmentation over affinities: the mutex watershed, and watershed fragments + mean-affinity agglomeration.

Pure block functions of arrays, no paths. The affinities are ``(C, Z, Y, X)`` in ``[0, 1]`` (uint8 is read
as ``value / 255``), channel ``c`` for the offset ``offsets[c] = (dz, dy, dx)``: the probability that voxel
``v`` and ``v + offsets[c]`` belong to the same object, stored at ``v`` (:mod:`volseg.core.affinities`).

- :func:`mutex_watershed` (Wolf et al. 2018) through ``mwatershed`` (the ``mws`` extra): every pair is an
  edge of weight ``affinity - bias``; edges are taken in descending ``|weight|``; a positive edge merges its
  two clusters unless a mutex (an earlier negative edge) lies between them, a negative one adds a mutex.
  The default bias is the paper's: nearest-neighbour edges attract with weight ``a``, longer ones repel with
  weight ``1 - a``.
- :func:`fragments` floods ``1 - mean nearest-neighbour affinity`` from the tops of the distance transform
  of the confident interior (per section, or in 3-D); :func:`region_graph` gives each pair of touching
  fragments the mean affinity across their face (sums and counts, so graphs of blocks add up);
  :func:`agglomerate_graph` merges the pair of highest mean affinity, updates the means of the merged
  region's edges, and stops below a threshold (the MeanAffinity agglomeration of waterz / MALA);
  :func:`agglomerate` is the three in a row on one block.

Labels are uint64, numbered 1..n in order of first appearance in C order (so equal partitions give equal
arrays), 0 where masked. Measurements, choices and pictures are in ``docs/affinities.md``.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.ndimage as ndi

from volseg.core.affinities import Offset, check_offsets
from volseg.errors import OptionError

__all__ = [
    "RegionGraph",
    "agglomerate",
    "agglomerate_graph",
    "canonical_labels",
    "default_bias",
    "fragments",
    "mutex_watershed",
    "nearest_neighbour",
    "region_graph",
]

_MWS_EXTRA = 'mutex watershed needs mwatershed: pip install "volseg[mws]"'


# ============================================================================ shared helpers
def nearest_neighbour(offset: Sequence[int]) -> bool:
    """Whether ``offset`` joins face neighbours (one axis, one voxel): the attractive edges of the paper."""
    return sum(abs(int(k)) for k in offset) == 1


def _check_affs(affs: Any, offsets: Any) -> tuple[np.ndarray, tuple[Offset, ...]]:
    """Affinities as float ``(C, Z, Y, X)`` in [0, 1] (uint8 scaled), and their checked offsets."""
    offs = check_offsets(offsets)
    arr = np.asarray(affs)
    if arr.ndim != 4 or arr.shape[0] != len(offs):
        raise OptionError(
            f"affs: shape {arr.shape} is not (C, Z, Y, X) with C = {len(offs)} offsets; "
            "pass one channel per offset",
            argument="affs",
        )
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255), offs
    if arr.dtype.kind != "f":
        raise OptionError(
            f"affs: dtype {arr.dtype} is not float or uint8; pass probabilities", argument="affs"
        )
    if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
        raise OptionError(
            "affs: values are not all finite and in [0, 1]; pass probabilities", argument="affs"
        )
    return arr, offs


def _check_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    arr = np.asarray(mask, bool)
    if arr.shape != shape:
        raise OptionError(
            f"mask: shape {arr.shape} is not the volume's {shape}; pass (Z, Y, X)", argument="mask"
        )
    return arr


def _check_threshold(threshold: float, name: str = "threshold") -> float:
    if not 0.0 <= float(threshold) <= 1.0:
        raise OptionError(f"{name}: {threshold!r} is not in [0, 1]; pass an affinity level", argument=name)
    return float(threshold)


def _pair_slices(offset: Sequence[int], shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of ``v`` and of ``v + offset`` over the voxels whose partner lies in the array (maybe none)."""
    here, there = [], []
    for k, n in zip(offset, shape, strict=True):
        k = max(-n, min(n, int(k)))
        here.append(slice(-k, n) if k < 0 else slice(0, n - k))
        there.append(slice(0, n + k) if k < 0 else slice(k, n))
    return tuple(here), tuple(there)


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` renumbered 1..n in order of first appearance (C order), 0 kept: uint64, same partition."""
    flat = np.asarray(labels).ravel()
    ids, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    rank = np.empty(len(ids), np.uint64)
    order = np.argsort(first, kind="stable")
    fg = ids[order] != 0
    rank[order[fg]] = np.arange(1, int(fg.sum()) + 1, dtype=np.uint64)
    rank[order[~fg]] = 0
    return rank[inverse].reshape(np.shape(labels))


# ============================================================================ mutex watershed
def default_bias(offsets: Any) -> np.ndarray:
    """The paper's bias: 0 for nearest neighbours (weight ``a``), 1 for longer offsets (weight ``a - 1``)."""
    return np.array([0.0 if nearest_neighbour(o) else 1.0 for o in check_offsets(offsets)])


def _mws_bias(bias: float | Sequence[float] | None, offs: tuple[Offset, ...]) -> np.ndarray:
    if bias is None:
        return default_bias(offs)
    values = np.broadcast_to(np.asarray(bias, np.float64), (len(offs),)) if np.ndim(bias) == 0 else None
    if values is None:
        values = np.asarray(bias, np.float64)
        if values.shape != (len(offs),):
            raise OptionError(
                f"bias: {len(values)} values for {len(offs)} offsets; give one number or one per offset",
                argument="bias",
            )
    if not np.isfinite(values).all():
        raise OptionError(f"bias: {list(values)} is not all finite numbers", argument="bias")
    return values


def _check_strides(strides: Sequence[int] | None) -> tuple[int, int, int] | None:
    if strides is None:
        return None
    values = tuple(strides)
    if len(values) != 3 or not all(isinstance(s, int | np.integer) and s >= 1 for s in values):
        raise OptionError(f"strides: {strides!r} is not three integers >= 1 (z, y, x)", argument="strides")
    return tuple(int(s) for s in values)  # type: ignore[return-value]


def _mws_weights(
    affs: np.ndarray,
    offs: tuple[Offset, ...],
    bias: np.ndarray,
    mask: np.ndarray | None,
    strides: tuple[int, int, int] | None,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Signed edge weights ``a - bias``, 0 (no effect: taken last) for pairs that leave the array or the
    mask, and for long-range pairs off the stride grid (or not drawn, with ``rng``)."""
    shape = affs.shape[1:]
    weights = np.zeros(affs.shape, np.float64)
    for c, off in enumerate(offs):
        here, there = _pair_slices(off, shape)
        w = affs[c][here] - bias[c]
        if mask is not None:
            w = np.where(mask[here] & mask[there], w, 0.0)
        weights[c][here] = w
        if strides is not None and not nearest_neighbour(off):
            keep = np.zeros(shape, bool)
            if rng is None:  # mwatershed's grid: from the first voxel with a partner, every s-th
                keep[tuple(slice(max(0, -k), None, s) for k, s in zip(off, strides, strict=True))] = True
            else:
                keep[...] = rng.random(shape) < 1.0 / float(np.prod(strides))
            weights[c][~keep] = 0.0
    return weights


def _attracted(weights: np.ndarray, offs: tuple[Offset, ...]) -> np.ndarray:
    """Voxels with at least one positive edge (mwatershed sends the others to 0: they are singletons)."""
    out = np.zeros(weights.shape[1:], bool)
    for c, off in enumerate(offs):
        here, there = _pair_slices(off, out.shape)
        pos = weights[c][here] > 0
        out[here] |= pos
        out[there] |= pos
    return out


def mutex_watershed(
    affs: Any,
    offsets: Any = None,
    *,
    bias: float | Sequence[float] | None = None,
    strides: Sequence[int] | None = None,
    randomize_strides: bool = False,
    seed: int | np.random.Generator = 0,
    mask: Any = None,
) -> np.ndarray:
    """The mutex watershed (Wolf et al. 2018) of an affinity block, through ``mwatershed``.

    Parameters
    ----------
    affs
        ``(C, Z, Y, X)`` affinities in [0, 1] (float, or uint8 read as ``/ 255``).
    offsets
        One ``(dz, dy, dx)`` per channel (:func:`volseg.core.affinities.check_offsets`); None: the default.
    bias
        Edge weight = ``affinity - bias``; positive weights attract, negative repel, larger ``|weight|``
        first. One number or one per offset. None: :func:`default_bias` (the paper: nearest neighbours
        attract with ``a``, long-range offsets repel with ``1 - a``). A larger bias splits more.
    strides
        ``(sz, sy, sx)``: keep the long-range edges of the voxels on this grid only (``v % stride == 0``),
        which cuts memory and the over-splitting of dense repulsion; nearest neighbours are all kept.
    randomize_strides
        Keep each long-range edge with probability ``1 / prod(strides)`` instead, drawn from ``seed``.
    seed
        Seed or Generator for ``randomize_strides``.
    mask
        ``(Z, Y, X)`` bool; voxels outside are 0 and their edges are dropped.

    Returns
    -------
    numpy.ndarray
        uint64 ``(Z, Y, X)``, 1..n in order of first appearance, 0 outside ``mask``. A voxel without any
        attractive edge is a segment of its own.
    """
    arr, offs = _check_affs(affs, offsets)
    weights_bias = _mws_bias(bias, offs)
    stride = _check_strides(strides)
    if randomize_strides and stride is None:
        raise OptionError(
            "randomize_strides: needs strides (the keep rate is 1 / prod(strides))",
            argument="randomize_strides",
        )
    fg = _check_mask(mask, arr.shape[1:])
    try:
        import mwatershed
    except ImportError:
        raise OptionError(_MWS_EXTRA, argument="method") from None
    rng = np.random.default_rng(seed) if randomize_strides else None
    weights = _mws_weights(arr, offs, weights_bias, fg, stride, rng)
    # An offset as long as the block has no pair in it (and mwatershed refuses it): leave it out.
    fits = [c for c, o in enumerate(offs) if all(abs(k) < n for k, n in zip(o, arr.shape[1:], strict=True))]
    grid = None
    if stride is not None and rng is None:  # the same grid, so that mwatershed never sorts the dropped edges
        grid = [[1, 1, 1] if nearest_neighbour(offs[c]) else list(stride) for c in fits]
    raw = mwatershed.agglom(weights[fits], [list(offs[c]) for c in fits], strides=grid)
    raw = np.asarray(raw, np.uint64)
    # mwatershed writes 0 both for voxels without a positive edge and for the cluster rooted at voxel 0.
    attracted = _attracted(weights, offs)
    del weights
    zero = raw == 0
    raw[zero & attracted] = raw.max() + 1
    alone = zero & ~attracted
    raw[alone] = raw.max() + 1 + np.arange(int(alone.sum()), dtype=np.uint64)
    if fg is not None:
        raw[~fg] = 0
    return canonical_labels(raw)


# ============================================================================ fragments
def _nn_maps(affs: np.ndarray, offs: tuple[Offset, ...], in_plane: bool) -> tuple[np.ndarray, np.ndarray]:
    """``1 - mean`` and ``1 - min`` over the nearest-neighbour pairs of each voxel (both sides of a pair)."""
    shape = affs.shape[1:]
    total = np.zeros(shape, np.float32)
    count = np.zeros(shape, np.float32)
    low = np.ones(shape, np.float32)
    used = [c for c, o in enumerate(offs) if nearest_neighbour(o) and (o.dz == 0 or not in_plane)]
    if not used:
        kind = "in-plane nearest-neighbour offsets (0,-1,0 and 0,0,-1)" if in_plane else "nearest neighbours"
        raise OptionError(f"offsets {[tuple(o) for o in offs]}: fragments need {kind}", argument="offsets")
    for c in used:
        here, there = _pair_slices(offs[c], shape)
        pairs = affs[c][here]
        for side in (here, there):
            total[side] += pairs
            count[side] += 1
            np.minimum(low[side], pairs, out=low[side])
    mean = np.where(count > 0, 1.0 - total / np.maximum(count, 1), 0.0).astype(np.float32)
    return mean, 1.0 - low


def _markers(weakest: np.ndarray, threshold: float, min_distance: int, mask: np.ndarray | None) -> np.ndarray:
    """Seeds (int labels): tops of the distance transform of the interior (every pair of the voxel above
    ``threshold``), at least one per interior component (a component whose top lies within reach of a
    higher one gets one all the same)."""
    interior = weakest < 1.0 - threshold
    if mask is not None:  # a seed outside the mask would not flood, and its cell would go to a neighbour
        interior &= mask
    dist = ndi.distance_transform_edt(interior)
    tops = (ndi.maximum_filter(dist, size=2 * min_distance + 1) == dist) & interior
    markers, n = ndi.label(tops)
    components, m = ndi.label(interior)
    seeded = np.zeros(m + 1, bool)
    seeded[components[tops]] = True
    seeded[0] = True
    lonely = ~seeded[components]
    if lonely.any():
        extra = np.unique(components[lonely], return_inverse=True)[1].reshape(-1)
        markers[lonely] = n + 1 + extra
    return markers


def fragments(
    affs: Any,
    offsets: Any = None,
    *,
    threshold: float = 0.5,
    min_distance: int = 3,
    mode: Literal["2d", "3d"] = "2d",
    mask: Any = None,
) -> np.ndarray:
    """Watershed fragments (supervoxels) of an affinity block, over-segmenting by design.

    The boundary map ``1 - mean`` of the nearest-neighbour affinities (in-plane ones in ``"2d"``) is
    flooded (scikit-image's seeded watershed) from the tops of the distance transform of the interior
    (voxels all of whose nearest-neighbour pairs exceed ``threshold``), each top the maximum within
    ``min_distance`` px; an interior component without such a top is a seed as a whole.

    Parameters
    ----------
    affs, offsets
        As for :func:`mutex_watershed`; the nearest-neighbour channels are read.
    threshold
        Affinity that every pair of a voxel exceeds where the voxel is confident interior (seeds).
    min_distance
        Half the window in which a seed is the distance transform's maximum, px.
    mode
        ``"2d"``: each section on its own (anisotropic ssTEM; :func:`agglomerate` links sections by the
        z-affinities); ``"3d"``: one 3-D watershed over all nearest neighbours.
    mask
        ``(Z, Y, X)`` bool; voxels outside are 0.

    Returns
    -------
    numpy.ndarray
        uint64 ``(Z, Y, X)`` fragment ids 1..n (first appearance order), 0 outside ``mask``.
    """
    from skimage.segmentation import watershed

    arr, offs = _check_affs(affs, offsets)
    level = _check_threshold(threshold)
    if not isinstance(min_distance, int | np.integer) or min_distance < 0:
        raise OptionError(
            f"min_distance: {min_distance!r} is not an integer >= 0 (px)", argument="min_distance"
        )
    if mode not in ("2d", "3d"):
        raise OptionError(f"mode: {mode!r} is not '2d' or '3d'", argument="mode")
    fg = _check_mask(mask, arr.shape[1:])
    boundary, weakest = _nn_maps(arr, offs, in_plane=mode == "2d")
    if mode == "3d":
        out = watershed(boundary, _markers(weakest, level, int(min_distance), fg), mask=fg).astype(np.uint64)
        return canonical_labels(out)
    out = np.zeros(boundary.shape, np.uint64)
    start = 0
    for z in range(boundary.shape[0]):
        section = watershed(
            boundary[z],
            _markers(weakest[z], level, int(min_distance), None if fg is None else fg[z]),
            mask=None if fg is None else fg[z],
        ).astype(np.uint64)
        out[z] = np.where(section > 0, section + np.uint64(start), 0)
        start += int(section.max())
    return canonical_labels(out)


# ============================================================================ region graph and agglomeration
@dataclass(frozen=True)
class RegionGraph:
    """Touching fragments and the affinities across their faces.

    ``edges`` ``(E, 2)`` uint64, each row ``u < v``, rows sorted; ``total`` ``(E,)`` float64, the sum of the
    nearest-neighbour affinities of the voxel pairs that join ``u`` and ``v``; ``count`` ``(E,)`` int64,
    how many pairs. Sums and counts of graphs of different blocks add (:meth:`combine`), so a global graph
    is the union of its blocks' graphs.
    """

    edges: np.ndarray
    total: np.ndarray
    count: np.ndarray

    @property
    def affinity(self) -> np.ndarray:
        """The mean affinity across each face, ``(E,)`` float64."""
        return self.total / np.maximum(self.count, 1)

    @classmethod
    def combine(cls, graphs: Sequence[RegionGraph]) -> RegionGraph:
        """One graph from several (blocks of one volume, with global fragment ids): sums and counts added."""
        if not graphs:
            return _aggregate(
                np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0), np.zeros(0, np.int64)
            )
        edges = np.concatenate([g.edges for g in graphs])
        return _aggregate(
            edges[:, 0],
            edges[:, 1],
            np.concatenate([g.total for g in graphs]),
            np.concatenate([g.count for g in graphs]),
        )


def _aggregate(lo: np.ndarray, hi: np.ndarray, total: np.ndarray, count: np.ndarray) -> RegionGraph:
    """Rows with equal ``(lo, hi)`` summed: a sort and ``reduceat``, no loop over voxels."""
    if len(lo) == 0:
        return RegionGraph(np.zeros((0, 2), np.uint64), np.zeros(0, np.float64), np.zeros(0, np.int64))
    order = np.lexsort((hi, lo))
    lo, hi = lo[order], hi[order]
    starts = np.flatnonzero(np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])])
    return RegionGraph(
        np.stack([lo[starts], hi[starts]], axis=1).astype(np.uint64),
        np.add.reduceat(np.asarray(total, np.float64)[order], starts),
        np.add.reduceat(np.asarray(count, np.int64)[order], starts),
    )


def region_graph(fragments: Any, affs: Any, offsets: Any = None) -> RegionGraph:
    """The region adjacency graph of ``fragments`` with the affinities across each face.

    Every nearest-neighbour channel (``|dz| + |dy| + |dx| == 1``) contributes its voxel pairs whose two
    fragments differ and are both nonzero; longer offsets are not read. Pass a subset of the channels
    (``affs[[0, 1]]``, ``offsets[:2]``) for an in-plane graph.

    Parameters
    ----------
    fragments
        ``(Z, Y, X)`` integer ids, 0 = none (masked).
    affs, offsets
        As for :func:`mutex_watershed`.

    Returns
    -------
    RegionGraph
        Edges ``(u, v)`` with ``u < v``, and per edge the sum and count of the affinities across it
        (:attr:`RegionGraph.affinity` is their mean).
    """
    arr, offs = _check_affs(affs, offsets)
    frag = np.asarray(fragments)
    if frag.shape != arr.shape[1:] or frag.dtype.kind not in "iu":
        raise OptionError(
            f"fragments: {frag.dtype} {frag.shape} is not integer ids of the affinities' {arr.shape[1:]}",
            argument="fragments",
        )
    frag = frag.astype(np.uint64, copy=False)
    los, his, vals = [], [], []
    for c, off in enumerate(offs):
        if not nearest_neighbour(off):
            continue
        here, there = _pair_slices(off, frag.shape)
        u, v = frag[here], frag[there]
        cut = (u != v) & (u != 0) & (v != 0)
        u, v = u[cut], v[cut]
        los.append(np.minimum(u, v))
        his.append(np.maximum(u, v))
        vals.append(arr[c][here][cut])
    if not los:
        raise OptionError(
            f"offsets {[tuple(o) for o in offs]}: no nearest-neighbour offset to read faces from",
            argument="offsets",
        )
    lo, hi = np.concatenate(los), np.concatenate(his)
    return _aggregate(lo, hi, np.concatenate(vals), np.ones(len(lo), np.int64))


def agglomerate_graph(graph: RegionGraph, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean-affinity agglomeration of a region graph (the MeanAffinity merge function of waterz / MALA).

    Repeatedly merges the two regions whose common face has the highest mean affinity, while that mean
    is at least ``threshold``; after a merge, the faces of the new region to each neighbour are pooled
    (sums and counts added), so its means are those of the voxel pairs. Ties go to the smaller ids.
    The merges do not depend on ``threshold``, only where they stop: a higher threshold stops earlier,
    so its segments subdivide those of a lower one (never fewer segments).

    Returns
    -------
    nodes : numpy.ndarray
        ``(N,)`` uint64, the sorted fragment ids of the graph.
    segments : numpy.ndarray
        ``(N,)`` uint64, for each node the id of one fragment of its segment (the segment's
        representative).
    """
    level = _check_threshold(threshold)
    nodes, index = np.unique(graph.edges, return_inverse=True)
    index = index.reshape(-1, 2)
    n = len(nodes)
    # Both directions of an edge share one [total, count] list, so an update is seen from either end.
    adj: list[dict[int, list[float]] | None] = [{} for _ in range(n)]
    heap: list[tuple[float, int, int]] = []
    for (a, b), t, k in zip(index.tolist(), graph.total.tolist(), graph.count.tolist(), strict=True):
        face = [t, float(k)]
        adj[a][b] = adj[b][a] = face  # type: ignore[index]
        heap.append((-t / k, a, b))
    heapq.heapify(heap)
    parent = np.arange(n)
    while heap:
        neg, a, b = heapq.heappop(heap)
        if -neg < level:
            break
        face = adj[a].get(b) if adj[a] is not None and adj[b] is not None else None  # type: ignore[union-attr]
        if face is None or face[0] / face[1] != -neg:
            continue  # a stale entry: one end was merged away or the face grew since
        keep, gone = (a, b) if len(adj[a]) >= len(adj[b]) else (b, a)  # type: ignore[arg-type]
        _merge(adj, heap, keep, gone)
        parent[gone] = keep
    return nodes, nodes[_roots(parent)]


def _merge(adj: list[dict[int, list[float]] | None], heap: list, keep: int, gone: int) -> None:
    """Region ``gone`` into ``keep``: faces pooled, new means pushed."""
    into, away = adj[keep], adj[gone]
    del into[gone]
    for other, face in away.items():
        if other == keep:
            continue
        theirs = adj[other]
        del theirs[gone]  # type: ignore[union-attr]
        mine = into.get(other)
        if mine is None:
            into[other] = theirs[keep] = face  # type: ignore[index]
            mine = face
        else:
            mine[0] += face[0]
            mine[1] += face[1]
        heapq.heappush(heap, (-mine[0] / mine[1], min(keep, other), max(keep, other)))
    adj[gone] = None


def _roots(parent: np.ndarray) -> np.ndarray:
    """Each node's root in a forest given by ``parent`` (vectorised pointer jumping)."""
    roots = parent.copy()
    while True:
        nxt = roots[roots]
        if np.array_equal(nxt, roots):
            return roots
        roots = nxt


def agglomerate(affs: Any, offsets: Any, fragments: Any, threshold: float = 0.5) -> np.ndarray:
    """Fragments merged by mean affinity down to ``threshold``: labels of one block.

    :func:`region_graph` of ``fragments`` (all nearest-neighbour channels, so 2-D fragments are linked
    across sections by the z-affinities), then :func:`agglomerate_graph`.

    Parameters
    ----------
    affs, offsets
        As for :func:`mutex_watershed`.
    fragments
        ``(Z, Y, X)`` integer ids (:func:`fragments`), 0 = masked (stays 0).
    threshold
        Merging stops when the highest mean affinity between two regions is below it: higher, more
        segments.

    Returns
    -------
    numpy.ndarray
        uint64 ``(Z, Y, X)``, 1..n in order of first appearance, 0 where ``fragments`` is 0.
    """
    level = _check_threshold(threshold)
    graph = region_graph(fragments, affs, offsets)
    nodes, segments = agglomerate_graph(graph, level)
    frag = np.asarray(fragments).astype(np.uint64, copy=False)
    pos = np.searchsorted(nodes, frag)
    inside = pos < len(nodes)
    hit = np.zeros(frag.shape, bool)
    hit[inside] = nodes[pos[inside]] == frag[inside]
    out = frag.copy()
    out[hit] = segments[pos[hit]]
    return canonical_labels(out)
