"""Agglomeration of a whole volume block by block, with global ids: the pure pieces (arrays in, arrays out).

The segment stage (:mod:`volseg.stages.segment.graph`) runs these over the blocks of an affinity volume
``(C, Z, Y, X)`` (channel ``c`` for offset ``offsets[c]``, :mod:`volseg.core.affinities`):

1. :func:`block_pieces`, for each block, read with a one-voxel halo of affinities:

   - a voxel none of whose nearest-neighbour affinities (in the axes used) reaches the merge threshold can
     never join anything: it is boundary, label 0, and no node of the graph;
   - **fragments**: the connected components of the in-plane voxel pairs whose affinity is at least
     ``fragment_threshold`` (2-D fragments, one section each), numbered in the block by first voxel;
   - their sizes and the global C-order index of their first voxel;
   - the block's region graph: for each pair of touching fragments, the sum and count of the affinities
     of the voxel pairs between them (in-plane, and across sections in 3-D);
   - the fragment ids on the block's low and high faces, and the affinity of each pair across the high face.
2. :func:`solve`, over every block's pieces, one block at a time: fragments cut by a block face are
   joined where the pair across the face reaches ``fragment_threshold`` (so a fragment is the same set of
   voxels whatever the blocks), the face pairs add their edges, fragments are numbered by their first
   voxel, the graph is agglomerated by mean affinity (:func:`volseg.core.agglomeration.agglomerate_graph`,
   the MeanAffinity merge of waterz / MALA) down to ``merge_threshold``, segments smaller than ``min_size``
   become 0, and the others are numbered 1..n by their first voxel.
3. :func:`relabel`: a block's fragments through the lookup of (2).

**Exactly the same labels for any block size.** Affinities are quantised to 1/65535 (uint8 values exactly,
x 257) and summed as integers, fragments and segments are numbered by their first voxel, so the graph, the
merges and the numbers do not depend on how the volume was cut, and a run of one block (the whole volume)
gives the same labels, bit for bit. Memory: a block's arrays in (1) and (3); in (2) the fragments and edges
(its size is the number of fragments, not of voxels) plus one block's faces at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from volseg.core.affinities import Offset, check_offsets
from volseg.core.agglomeration import RegionGraph, agglomerate_graph
from volseg.errors import OptionError

__all__ = [
    "Q_MAX",
    "BlockPieces",
    "Solution",
    "block_pieces",
    "pair_channels",
    "quantise",
    "relabel",
    "solve",
]

#: Affinities are quantised to integers 0..Q_MAX (uint8 values exactly: value x 257).
Q_MAX = 65535
_AXES = "zyx"


def quantise(affs: Any) -> np.ndarray:
    """Affinities (uint8 0..255, or floats in [0, 1]) as int32 levels 0..:data:`Q_MAX`."""
    arr = np.asarray(affs)
    if arr.dtype == np.uint8:
        return arr.astype(np.int32) * 257
    if arr.dtype.kind != "f":
        raise OptionError(f"affinities: dtype {arr.dtype} is not uint8 or float; pass probabilities")
    if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
        raise OptionError("affinities: values are not all finite and in [0, 1]; pass probabilities")
    return np.rint(arr.astype(np.float64) * Q_MAX).astype(np.int32)


def level(threshold: float, name: str) -> int:
    """A threshold in [0, 1] as the smallest quantised level that reaches it."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise OptionError(f"{name} {threshold!r}: must lie in [0, 1], an affinity level", argument=name)
    return int(np.ceil(float(threshold) * Q_MAX - 1e-9))


def pair_channels(offsets: Any, axes: Iterable[int]) -> dict[int, tuple[int, int]]:
    """For each axis (0 z, 1 y, 2 x): the channel of its nearest-neighbour offset and the offset's sign.

    The pair ``(v, v + e_axis)`` is read from channel ``c`` at ``v`` when ``offsets[c]`` is ``+e_axis``,
    at ``v + e_axis`` when it is ``-e_axis`` (the first such channel). An axis without one is refused.
    """
    offs = check_offsets(offsets)
    out: dict[int, tuple[int, int]] = {}
    for axis in axes:
        for c, off in enumerate(offs):
            if sum(abs(k) for k in off) == 1 and off[axis] != 0:
                out[axis] = (c, int(off[axis]))
                break
        else:
            raise OptionError(
                f"offsets {format_list(offs)}: no nearest-neighbour offset along {_AXES[axis]}; "
                "agglomeration reads the face affinities (0,-1,0), (0,0,-1) and, in 3-D, (-1,0,0)",
                argument="offsets",
            )
    return out


def format_list(offs: Sequence[Offset]) -> str:
    return "; ".join(str(o) for o in offs)


def _cut(ndim: int, axis: int, part: slice) -> tuple[slice, ...]:
    return tuple(part if a == axis else slice(None) for a in range(ndim))


def _pair_levels(q: np.ndarray, channel: int, sign: int, axis: int) -> np.ndarray:
    """Levels of the pairs ``(u, u + e_axis)`` of an array: shape shortened by 1 along ``axis``."""
    return q[channel][_cut(3, axis, slice(None, -1) if sign > 0 else slice(1, None))]


def _aggregate(
    lo: np.ndarray, hi: np.ndarray, total: np.ndarray, count: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Rows of equal ``(lo, hi)`` summed (integer sums): ``(lo, hi, total, count)``, sorted."""
    if len(lo) == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    order = np.lexsort((hi, lo))
    lo, hi = lo[order], hi[order]
    starts = np.flatnonzero(np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])])
    return (
        lo[starts].astype(np.int64),
        hi[starts].astype(np.int64),
        np.add.reduceat(np.asarray(total, np.int64)[order], starts),
        np.add.reduceat(np.asarray(count, np.int64)[order], starts),
    )


# ============================================================================ step 1: one block
@dataclass
class BlockPieces:
    """What one block contributes to the global graph.

    ``fragments`` is the block's ``(z, y, x)`` uint32 ids 1..k (0: boundary); ``first`` the global C-order
    index of each fragment's first voxel, ``sizes`` its voxels; ``edges`` ``(lo, hi, total, count)`` of the
    block's own region graph (local ids, integer sums of levels); ``low[a]`` / ``high[a]`` the ids on the
    first / last plane along axis ``a``, ``across[a]`` the levels of the pairs from the last plane into the
    next block (absent at the volume's far end).
    """

    fragments: np.ndarray
    first: np.ndarray
    sizes: np.ndarray
    edges: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    low: dict[int, np.ndarray] = field(default_factory=dict)
    high: dict[int, np.ndarray] = field(default_factory=dict)
    across: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.first.size)

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything but ``fragments`` as named arrays (a side file's content)."""
        out = {"first": self.first, "sizes": self.sizes}
        out.update(zip(("e_lo", "e_hi", "e_total", "e_count"), self.edges, strict=True))
        for name, faces in (("low", self.low), ("high", self.high), ("across", self.across)):
            out.update({f"{name}_{a}": v for a, v in faces.items()})
        return out

    @classmethod
    def from_arrays(cls, fragments: np.ndarray, arrays: Any) -> BlockPieces:
        faces: dict[str, dict[int, np.ndarray]] = {"low": {}, "high": {}, "across": {}}
        for key in arrays:
            name, _, axis = key.rpartition("_")
            if name in faces:
                faces[name][int(axis)] = np.asarray(arrays[key])
        edges = tuple(np.asarray(arrays[k]) for k in ("e_lo", "e_hi", "e_total", "e_count"))
        return cls(
            fragments, np.asarray(arrays["first"]), np.asarray(arrays["sizes"]), edges,  # type: ignore[arg-type]
            faces["low"], faces["high"], faces["across"],
        )  # fmt: skip


def block_pieces(
    affs: Any,
    offsets: Any,
    inner: Sequence[slice],
    origin: Sequence[int],
    volume_shape: Sequence[int],
    *,
    fragment_threshold: float = 0.7,
    merge_threshold: float = 0.5,
    link_z: bool = False,
    method: str = "cc",
) -> BlockPieces:
    """Step 1 on one block: its fragments, their sizes, first voxels, graph and faces.

    Parameters
    ----------
    affs
        ``(C, z, y, x)`` affinities of the block grown by one voxel on every side where the volume goes on
        (clipped at its edges); uint8 or floats in [0, 1].
    offsets
        One ``(dz, dy, dx)`` per channel; the nearest-neighbour ones in y, x (and z with ``link_z``) are read.
    inner
        Where the block lies in ``affs``' spatial axes (slices of the halo array).
    origin, volume_shape
        The block's first voxel in the volume, and the volume's ``(Z, Y, X)``.
    fragment_threshold, merge_threshold
        Fragments join in-plane pairs of at least ``fragment_threshold``; a voxel with no pair reaching
        ``merge_threshold`` is boundary (0). ``fragment_threshold >= merge_threshold``.
    link_z
        3-D: the pairs across sections enter the graph (2-D fragments are linked across sections by
        agglomeration) and count for the boundary rule; else each section is on its own.
    method
        ``"cc"``: the fragments above. ``"mws"``: the block's segments are those of the mutex watershed
        (:func:`volseg.core.agglomeration.mutex_watershed`) of the whole halo array (read it with a halo
        as long as the offsets reach), cut to the block; the block's own graph is left empty, so that
        its cuts stand, and only the pairs across block faces are agglomerated by :func:`solve`
        (``join_faces=False``). With ``link_z=False`` only the in-plane offsets are used.
    """
    if method not in ("cc", "mws"):
        raise OptionError(f"method {method!r}: use cc or mws", argument="method")
    qf, qm = level(fragment_threshold, "fragment_threshold"), level(merge_threshold, "merge_threshold")
    if qf < qm:
        raise OptionError(
            f"fragment_threshold {fragment_threshold} is below merge_threshold {merge_threshold}: fragments "
            "would join what agglomeration keeps apart; give a fragment threshold at least the merge one",
            argument="fragment_threshold",
        )
    q = quantise(affs)
    if q.ndim != 4:
        raise OptionError(f"affinities: shape {q.shape} is not (C, z, y, x)", argument="affs")
    axes = (0, 1, 2) if link_z else (1, 2)
    chans = pair_channels(offsets, axes)
    inner = tuple(inner)
    shape = tuple(s.stop - s.start for s in inner)
    pairs = {a: _pair_levels(q, *chans[a], a) for a in axes}
    # the best pair of each voxel of the halo array: boundary where none reaches the merge level
    best = np.full(q.shape[1:], -1, np.int32)
    for a, p in pairs.items():
        lo, hi = _cut(3, a, slice(None, -1)), _cut(3, a, slice(1, None))
        np.maximum(best[lo], p, out=best[lo])
        np.maximum(best[hi], p, out=best[hi])
    active = best[inner] >= qm
    if method == "mws":
        fragments = _mws_segments(affs, offsets, inner, active, link_z)
    else:
        fragments = _fragments(active, {a: _inner_pairs(pairs[a], inner, a) for a in (1, 2)}, qf)
    flat = fragments.ravel()
    k = int(flat.max(initial=0))
    ids, first_local = np.unique(flat, return_index=True)
    first_local = first_local[ids > 0]
    local = np.unravel_index(first_local, shape)
    glob = tuple(np.asarray(o, np.int64) + c for o, c in zip(origin, local, strict=True))
    first = np.ravel_multi_index(glob, tuple(volume_shape)).astype(np.uint64)
    sizes = np.bincount(flat, minlength=k + 1)[1:].astype(np.int64)
    los, his, tots = [], [], []
    for a in axes if method == "cc" else ():  # mws: the block's cuts stand, only its faces are joined
        p = _inner_pairs(pairs[a], inner, a)
        u = fragments[_cut(3, a, slice(None, -1))]
        v = fragments[_cut(3, a, slice(1, None))]
        cut = (u != v) & (u > 0) & (v > 0)
        los.append(np.minimum(u[cut], v[cut]))
        his.append(np.maximum(u[cut], v[cut]))
        tots.append(p[cut])
    lo = np.concatenate(los).astype(np.int64) if los else np.zeros(0, np.int64)
    if not los:
        his, tots = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    edges = _aggregate(
        lo, np.concatenate(his).astype(np.int64), np.concatenate(tots), np.ones(lo.size, np.int64)
    )
    pieces = BlockPieces(fragments, first, sizes, edges)  # type: ignore[arg-type]
    for a in axes:
        pieces.low[a] = fragments[_cut(3, a, slice(0, 1))].copy()
        pieces.high[a] = fragments[_cut(3, a, slice(shape[a] - 1, shape[a]))].copy()
        end = inner[a].stop
        if end < q.shape[1 + a]:  # the volume goes on: the pairs from the last plane into the next block
            at = tuple(
                slice(end - 1, end) if b == a else inner[b] for b in range(3)
            )  # pair index = index of its first voxel
            pieces.across[a] = pairs[a][at].astype(np.int32)
    return pieces


def _mws_segments(
    affs: Any, offsets: Any, inner: tuple[slice, ...], active: np.ndarray, link_z: bool
) -> np.ndarray:
    """The mutex watershed of the halo array, cut to the block: uint32 ids 1..k by first voxel, 0 where
    inactive (a voxel that can join nothing)."""
    from volseg.core.agglomeration import canonical_labels, mutex_watershed

    offs = check_offsets(offsets)
    keep = [c for c, o in enumerate(offs) if link_z or o[0] == 0]
    arr = np.asarray(affs)
    labels = mutex_watershed(arr[keep], [offs[c] for c in keep])[inner]  # in-plane only: per section
    return canonical_labels(np.where(active, labels, 0)).astype(np.uint32)


def _inner_pairs(p: np.ndarray, inner: tuple[slice, ...], axis: int) -> np.ndarray:
    """The pairs whose two voxels both lie in the block."""
    at = tuple(slice(s.start, s.stop - 1) if b == axis else s for b, s in enumerate(inner))
    return p[at]


def _fragments(active: np.ndarray, pairs: dict[int, np.ndarray], qf: int) -> np.ndarray:
    """Connected components of the active voxels over the pairs of at least ``qf``: uint32 ids 1..k in
    order of first voxel (C order), 0 where inactive."""
    shape = active.shape
    index = np.arange(active.size, dtype=np.int64).reshape(shape)
    rows, cols = [], []
    for a, p in pairs.items():
        join = p >= qf  # both ends are active: each has a pair at least qf >= qm
        rows.append(index[_cut(3, a, slice(None, -1))][join])
        cols.append(index[_cut(3, a, slice(1, None))][join])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = sp.coo_matrix((np.ones(r.size, np.int8), (r, c)), shape=(active.size, active.size))
    _, comp = connected_components(graph.tocsr(), directed=False)
    comp = comp.reshape(shape)
    flat = np.where(active, comp + 1, 0).ravel()
    ids, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    rank = np.zeros(ids.size, np.uint32)
    fg = ids > 0
    order = np.argsort(first[fg], kind="stable")
    numbers = np.empty(int(fg.sum()), np.uint32)
    numbers[order] = np.arange(1, numbers.size + 1, dtype=np.uint32)
    rank[fg] = numbers
    return rank[inverse].reshape(shape)


# ============================================================================ step 2: the global graph
@dataclass
class Solution:
    """The global answer: ``lookup[bases[b] + id - 1]`` is the final label of fragment ``id`` of block
    ``b``; and the sizes: segments (cells), fragment pieces, nodes (fragments joined across faces), edges."""

    lookup: np.ndarray
    bases: dict[tuple[int, ...], int]
    segments: int
    fragments: int
    nodes: int
    edges: int


def solve(
    counts: dict[tuple[int, ...], int],
    pieces: Any,
    grid: Sequence[int],
    *,
    fragment_threshold: float = 0.7,
    merge_threshold: float = 0.5,
    min_size: int = 0,
    link_z: bool = False,
    join_faces: bool = True,
) -> Solution:
    """Step 2: one graph over every block, agglomerated; the lookup of each block's fragments.

    Parameters
    ----------
    counts
        Each block's number of fragments, by block index (C order of the block grid).
    pieces
        ``pieces(index)``: that block's :class:`BlockPieces` (its ``fragments`` are not read; load lazily,
        one block's faces are held at a time).
    grid
        The block grid ``(nz, ny, nx)``.
    join_faces
        Join a fragment cut by an in-plane block face where the pair across reaches ``fragment_threshold``
        (``cc`` fragments); ``False`` (``mws`` segments): the faces only add edges to the graph.
    """
    qf = level(fragment_threshold, "fragment_threshold")
    merge = float(merge_threshold)
    blocks = sorted(counts)
    bases, total = {}, 0
    for b in blocks:
        bases[b] = total
        total += counts[b]
    first = np.zeros(total, np.uint64)
    sizes = np.zeros(total, np.int64)
    unions: list[np.ndarray] = []
    edge_parts: list[tuple[np.ndarray, ...]] = []
    axes = (0, 1, 2) if link_z else (1, 2)
    for b in blocks:
        p = pieces(b)
        base = bases[b]
        first[base : base + p.count] = p.first
        sizes[base : base + p.count] = p.sizes
        lo, hi, tot, cnt = p.edges
        edge_parts.append((lo + base - 1, hi + base - 1, tot, cnt))
        for a in axes:
            nb = tuple(i + (1 if d == a else 0) for d, i in enumerate(b))
            if nb[a] >= grid[a] or a not in p.across:
                continue
            theirs = pieces(nb).low[a]
            u, v, lv = p.high[a].ravel(), theirs.ravel(), p.across[a].ravel()
            ok = (u > 0) & (v > 0)
            gu = u[ok].astype(np.int64) + base - 1
            gv = v[ok].astype(np.int64) + bases[nb] - 1
            lv = lv[ok].astype(np.int64)
            if a != 0 and join_faces:  # in-plane: the fragment goes on into the next block
                join = lv >= qf
                unions.append(np.unique(np.stack([gu[join], gv[join]], axis=1), axis=0))
            edge_parts.append(_aggregate(gu, gv, lv, np.ones(gu.size, np.int64)))
    # fragments: the pieces joined across faces, numbered by their first voxel
    pairs = np.concatenate(unions) if unions else np.zeros((0, 2), np.int64)
    graph = sp.coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(total, total))
    _, comp = connected_components(graph.tocsr(), directed=False) if total else (0, np.zeros(0, np.int64))
    key = np.full(int(comp.max(initial=-1)) + 1, np.iinfo(np.uint64).max, np.uint64)
    np.minimum.at(key, comp, first)
    order = np.argsort(key, kind="stable")
    rank = np.empty(key.size, np.int64)
    rank[order] = np.arange(key.size)
    node = rank[comp]  # fragment piece -> node, nodes numbered by first voxel
    n_nodes = key.size
    node_sizes = np.bincount(node, weights=sizes, minlength=n_nodes).astype(np.int64)
    # the graph of nodes: every edge mapped, those inside a node dropped
    lo = np.concatenate([node[e[0]] for e in edge_parts]) if edge_parts else np.zeros(0, np.int64)
    hi = np.concatenate([node[e[1]] for e in edge_parts]) if edge_parts else np.zeros(0, np.int64)
    tot = np.concatenate([e[2] for e in edge_parts]) if edge_parts else np.zeros(0, np.int64)
    cnt = np.concatenate([e[3] for e in edge_parts]) if edge_parts else np.zeros(0, np.int64)
    keep = lo != hi
    a, b_, tot, cnt = _aggregate(np.minimum(lo, hi)[keep], np.maximum(lo, hi)[keep], tot[keep], cnt[keep])
    region = RegionGraph(
        np.stack([a, b_], axis=1).astype(np.uint64), tot.astype(np.float64) / Q_MAX, cnt.astype(np.int64)
    )
    segment_of = np.arange(n_nodes, dtype=np.int64)
    if len(a):
        nodes, reps = agglomerate_graph(region, merge)
        segment_of[nodes.astype(np.int64)] = reps.astype(np.int64)
    # segments: named by their smallest node (= first voxel), small ones dropped, numbered 1..n
    smallest = np.full(n_nodes, n_nodes, np.int64)
    np.minimum.at(smallest, segment_of, np.arange(n_nodes))
    name = smallest[segment_of]
    seg_sizes = np.bincount(name, weights=node_sizes, minlength=n_nodes).astype(np.int64)
    kept = np.flatnonzero((seg_sizes > 0) & (seg_sizes >= max(min_size, 1)))
    number = np.zeros(n_nodes, np.int64)
    number[kept] = np.arange(1, kept.size + 1)  # kept is sorted: numbered by first voxel
    final = number[name][node]
    dtype = np.uint32 if kept.size < 2**32 else np.uint64
    return Solution(final.astype(dtype), bases, int(kept.size), total, n_nodes, int(len(a)))


# ============================================================================ step 3: relabel a block
def relabel(fragments: np.ndarray, solution_lookup: np.ndarray, base: int, dtype: Any) -> np.ndarray:
    """A block's fragments (1..k, 0) as final labels: ``lookup[base + id - 1]``, 0 stays 0."""
    frag = np.asarray(fragments)
    out = np.zeros(frag.shape, dtype)
    fg = frag > 0
    out[fg] = solution_lookup[base + frag[fg].astype(np.int64) - 1]
    return out
