"""Known answers for the segmentation methods over affinities (volseg.core.agglomeration).

The mutex watershed is checked on a toy graph worked out by hand and against a brute-force version of the
algorithm written here; the agglomeration against a brute-force greedy merge that recomputes every mean
from the voxels. Tests of the mutex watershed skip where ``mwatershed`` (the ``mws`` extra) is missing.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys

import numpy as np
import pytest
from support import same_partition

from volseg.core import agglomeration as agg
from volseg.core.affinities import DEFAULT_OFFSETS, affinities
from volseg.errors import OptionError

needs_mws = pytest.mark.skipif(
    importlib.util.find_spec("mwatershed") is None, reason='needs mwatershed (pip install "volseg[mws]")'
)
NN = [(0, -1, 0), (0, 0, -1), (-1, 0, 0)]


def two_cells(shape=(1, 12, 16), noise=0.05, seed=0):
    """Two cells side by side (left / right halves) and their affinities (default offsets) with noise."""
    lab = np.ones(shape, np.uint32)
    lab[..., shape[-1] // 2 :] = 2
    targets, _ = affinities(lab, dtype="float32")
    rng = np.random.default_rng(seed)
    affs = np.clip(0.05 + 0.9 * targets + rng.normal(0, noise, targets.shape), 0, 1)
    return lab, affs


def brute_mws(weights, offsets):
    """The mutex watershed as written in Wolf et al. (2018), Algorithm 1, over all pairs (v, v + o)."""
    shape = weights.shape[1:]
    edges = []
    for c, off in enumerate(offsets):
        for v in itertools.product(*map(range, shape)):
            u = tuple(a + b for a, b in zip(v, off, strict=True))
            if all(0 <= k < n for k, n in zip(u, shape, strict=True)) and weights[c][v] != 0:
                edges.append((abs(weights[c][v]), weights[c][v] > 0, v, u))
    edges.sort(key=lambda e: -e[0])
    cluster = {v: {v} for v in itertools.product(*map(range, shape))}
    mutex: set[tuple[int, int]] = set()
    for _, attract, v, u in edges:
        a, b = cluster[v], cluster[u]
        if a is b or (id(a), id(b)) in mutex:
            continue
        if attract:
            merged = a | b
            for w in merged:
                cluster[w] = merged
            mutex = {
                tuple(id(merged) if k in (id(a), id(b)) else k for k in pair)  # type: ignore[misc]
                for pair in mutex
            }
        else:
            mutex |= {(id(a), id(b)), (id(b), id(a))}
    out = np.zeros(shape, np.int64)
    for v, members in cluster.items():
        out[v] = min(np.ravel_multi_index(w, shape) for w in members) + 1
    return out


def brute_agglo(frag, affs, offsets, threshold):
    """Greedy mean-affinity merging, every mean recomputed from the voxel pairs after every merge."""
    pairs = []  # (fragment a, fragment b, affinity) for each nearest-neighbour voxel pair
    for c, off in enumerate(offsets):
        if sum(map(abs, off)) != 1:
            continue
        for v in itertools.product(*map(range, frag.shape)):
            u = tuple(a + b for a, b in zip(v, off, strict=True))
            if all(0 <= k < n for k, n in zip(u, frag.shape, strict=True)):
                pairs.append((int(frag[v]), int(frag[u]), float(affs[c][v])))
    segment = {int(f): int(f) for f in np.unique(frag)}
    while True:
        sums: dict[tuple[int, int], list[float]] = {}
        for a, b, value in pairs:
            sa, sb = segment[a], segment[b]
            if sa != sb:
                entry = sums.setdefault((min(sa, sb), max(sa, sb)), [0.0, 0])
                entry[0] += value
                entry[1] += 1
        if not sums:
            break
        (sa, sb), (total, count) = max(sums.items(), key=lambda item: item[1][0] / item[1][1])
        if total / count < threshold:
            break
        segment = {f: (sa if s == sb else s) for f, s in segment.items()}
    return np.vectorize(segment.get)(frag)


# ============================================================================ mutex watershed
@needs_mws
def test_mws_toy_graph_worked_by_hand():
    # Pixels of a 2 x 3 image:   a b c    Offsets: x-neighbour (0,0,-1), y-neighbour (0,-1,0),
    #                            d e f    and long range (0,0,-2), (0,-1,-2); default bias.
    # Weights (attractive = a, repulsive = a - 1):
    #   b-a +0.95, c-b +0.30, e-d +0.85, f-e +0.75, d-a +0.65, e-b +0.20, f-c +0.88,
    #   c-a -0.90, f-d -0.40, f-a -0.70.
    # Greedy order by |w|:
    #   b-a +.95 merge {a,b};  c-a -.90 mutex {a,b}|{c};  f-c +.88 merge {c,f} (mutex now {a,b}|{c,f});
    #   e-d +.85 merge {d,e};  f-e +.75 merge {c,d,e,f} (no mutex between them);  f-a -.70 already mutex;
    #   d-a +.65 skipped (mutex);  f-d -.40 same cluster;  c-b +.30 and e-b +.20 skipped (mutex).
    # So {a,b} | {c,d,e,f}, although every short path a-d-e-f-c is attractive.
    offsets = [(0, 0, -1), (0, -1, 0), (0, 0, -2), (0, -1, -2)]
    affs = np.zeros((4, 1, 2, 3))
    affs[0, 0] = [[0, 0.95, 0.30], [0, 0.85, 0.75]]  # pair with the left neighbour
    affs[1, 0] = [[0, 0, 0], [0.65, 0.20, 0.88]]  # pair with the pixel above
    affs[2, 0] = [[0, 0, 0.10], [0, 0, 0.60]]  # c-a, f-d
    affs[3, 0] = [[0, 0, 0], [0, 0, 0.30]]  # f-a
    labels = agg.mutex_watershed(affs, offsets)
    assert labels.dtype == np.uint64
    np.testing.assert_array_equal(labels[0], [[1, 1, 2], [2, 2, 2]])
    # Without the repulsive edges, the attractive ones join all six pixels.
    np.testing.assert_array_equal(agg.mutex_watershed(affs[:2], offsets[:2])[0], np.ones((2, 3)))


@needs_mws
@pytest.mark.parametrize("seed", range(6))
def test_mws_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    offsets = [(0, -1, 0), (0, 0, -1), (-1, 0, 0), (0, -2, 0), (0, 0, -3), (0, -2, -2)]
    affs = rng.random((len(offsets), 2, 4, 5))
    bias = rng.uniform(0.2, 0.8, len(offsets))
    weights = affs - bias[:, None, None, None]
    assert same_partition(agg.mutex_watershed(affs, offsets, bias=bias), brute_mws(weights, offsets))
    default = agg.default_bias(offsets)
    assert same_partition(
        agg.mutex_watershed(affs, offsets), brute_mws(affs - default[:, None, None, None], offsets)
    )


@needs_mws
def test_mws_splits_two_touching_cells():
    lab, affs = two_cells()
    assert same_partition(agg.mutex_watershed(affs, DEFAULT_OFFSETS), lab)
    # uint8 predictions are read as value / 255
    as_uint8 = np.round(affs * 255).astype(np.uint8)
    assert same_partition(agg.mutex_watershed(as_uint8, DEFAULT_OFFSETS), lab)


@needs_mws
def test_mws_long_range_repulsion_separates_a_leaky_border():
    # Two cells whose border is leaky: every nearest-neighbour pair across it says 0.7 (attract),
    # but the long-range pairs across it say 0 (repel with weight 1), inside 0.95.
    lab = np.ones((1, 10, 20), np.uint32)
    lab[..., 10:] = 2
    offsets = [(0, -1, 0), (0, 0, -1), (0, 0, -3), (0, -3, -3)]
    targets, _ = affinities(lab, offsets, dtype="float32")
    affs = np.where(targets > 0, 0.95, 0.0)
    affs[1][targets[1] == 0] = 0.7  # the leaky border in x
    assert same_partition(agg.mutex_watershed(affs, offsets), lab)
    assert agg.mutex_watershed(affs[:2], offsets[:2]).max() == 1  # short edges alone merge the two


@needs_mws
def test_mws_mask_strides_and_numbering():
    lab, affs = two_cells(shape=(2, 12, 16))
    mask = np.ones(lab.shape, bool)
    mask[:, :2] = False
    out = agg.mutex_watershed(affs, DEFAULT_OFFSETS, mask=mask)
    assert (out[~mask] == 0).all() and (out[mask] > 0).all()
    assert same_partition(out, np.where(mask, lab, 0))
    for kwargs in ({"strides": (1, 2, 2)}, {"strides": (1, 3, 3), "randomize_strides": True, "seed": 4}):
        assert same_partition(agg.mutex_watershed(affs, DEFAULT_OFFSETS, **kwargs), lab)
    first = out.ravel()[np.sort(np.unique(out.ravel(), return_index=True)[1])]
    np.testing.assert_array_equal(first, [0, 1, 2])  # ids in order of first appearance
    # A voxel without an attractive edge is its own segment (mwatershed alone would write 0 there).
    lone = np.full((1, 1, 1, 3), 0.9)
    lone[0, 0, 0, 1] = 0.0  # pair (x=1, x=0) cut; x=2 attracts x=1
    np.testing.assert_array_equal(agg.mutex_watershed(lone, [(0, 0, -1)])[0, 0], [1, 2, 2])


def test_mws_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mwatershed", None)
    _, affs = two_cells()
    with pytest.raises(OptionError, match=r'pip install "volseg\[mws\]"'):
        agg.mutex_watershed(affs, DEFAULT_OFFSETS)


def test_bad_arguments_are_one_line_option_errors():
    _, affs = two_cells()
    cases = [
        (lambda: agg.mutex_watershed(affs[:3], DEFAULT_OFFSETS), "affs"),
        (lambda: agg.mutex_watershed(affs * 2, DEFAULT_OFFSETS), "affs"),
        (lambda: agg.mutex_watershed(affs, DEFAULT_OFFSETS, bias=[0.5, 0.5]), "bias"),
        (lambda: agg.mutex_watershed(affs, DEFAULT_OFFSETS, strides=(1, 0, 2)), "strides"),
        (lambda: agg.mutex_watershed(affs, DEFAULT_OFFSETS, randomize_strides=True), "randomize_strides"),
        (lambda: agg.fragments(affs, DEFAULT_OFFSETS, mode="4d"), "mode"),
        (lambda: agg.fragments(affs[3:], DEFAULT_OFFSETS[3:]), "offsets"),
        (lambda: agg.agglomerate(affs, DEFAULT_OFFSETS, np.zeros((1, 12, 16), np.int32), 1.5), "threshold"),
        (lambda: agg.region_graph(np.zeros((1, 3, 3), np.int32), affs, DEFAULT_OFFSETS), "fragments"),
    ]
    for call, name in cases:
        with pytest.raises(OptionError) as info:
            call()
        assert info.value.argument == name and "\n" not in str(info.value)


# ============================================================================ fragments + agglomeration
def test_agglo_splits_two_touching_cells():
    lab, affs = two_cells()
    frag = agg.fragments(affs, DEFAULT_OFFSETS, min_distance=1)
    assert frag.dtype == np.uint64 and frag.min() == 1
    # every fragment inside one cell (an over-segmentation), and agglomeration gives the two cells
    pairs = np.unique(np.stack([frag.ravel(), lab.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1]
    assert same_partition(agg.agglomerate(affs, DEFAULT_OFFSETS, frag, 0.5), lab)


def test_agglo_links_2d_fragments_through_sections():
    # Two columnar cells through 4 sections: 2-D fragments per section, joined by the z-affinities.
    lab, affs = two_cells(shape=(4, 12, 16))
    frag = agg.fragments(affs, DEFAULT_OFFSETS, mode="2d")
    assert frag.max() >= 8  # at least one fragment per cell and section
    assert same_partition(agg.agglomerate(affs, DEFAULT_OFFSETS, frag, 0.5), lab)
    frag3 = agg.fragments(affs, DEFAULT_OFFSETS, mode="3d", min_distance=2)
    assert same_partition(agg.agglomerate(affs, DEFAULT_OFFSETS, frag3, 0.5), lab)


def _grid_fragments(shape, size):
    """Fragments as squares of ``size`` px in each section (ids unique through the stack)."""
    z, y, x = np.indices(shape)
    ny = -(-shape[1] // size)
    nx = -(-shape[2] // size)
    return (z * ny * nx + (y // size) * nx + x // size + 1).astype(np.uint64)


@pytest.mark.parametrize("seed", range(4))
def test_agglo_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (2, 6, 8)
    frag = _grid_fragments(shape, 2)
    affs = rng.random((3, *shape))
    for threshold in (0.3, 0.5, 0.6):
        expected = brute_agglo(frag, affs, NN, threshold)
        assert same_partition(agg.agglomerate(affs, NN, frag, threshold), expected), threshold


def test_agglo_higher_threshold_never_fewer_segments():
    # Merges run in the same order whatever the threshold, and a higher one stops earlier: each of its
    # segments lies inside one segment of any lower threshold.
    rng = np.random.default_rng(7)
    shape = (3, 16, 16)
    frag = _grid_fragments(shape, 2)
    affs = rng.random((3, *shape))
    previous = None
    for threshold in np.linspace(0.0, 1.0, 11):
        labels = agg.agglomerate(affs, NN, frag, threshold)
        if previous is not None:
            assert labels.max() >= previous.max()
            pairs = np.unique(np.stack([labels.ravel(), previous.ravel()]), axis=1)
            assert len(np.unique(pairs[0])) == pairs.shape[1]  # each new segment in one old one
        previous = labels
    assert agg.agglomerate(affs, NN, frag, 0.0).max() == 1
    assert same_partition(agg.agglomerate(affs, NN, frag, 1.0), frag)


def test_region_graph_against_voxel_loop_and_combine():
    rng = np.random.default_rng(3)
    shape = (2, 5, 7)
    frag = rng.integers(0, 4, shape).astype(np.uint32)  # 0 = masked, left out
    offsets = [*NN, (0, -3, 0)]  # the long-range channel is not read
    affs = rng.random((4, *shape))
    graph = agg.region_graph(frag, affs, offsets)
    expected: dict[tuple[int, int], list[float]] = {}
    for c, off in enumerate(NN):
        for v in itertools.product(*map(range, shape)):
            u = tuple(a + b for a, b in zip(v, off, strict=True))
            if not all(0 <= k < n for k, n in zip(u, shape, strict=True)):
                continue
            a, b = int(frag[v]), int(frag[u])
            if a and b and a != b:
                entry = expected.setdefault((min(a, b), max(a, b)), [0.0, 0])
                entry[0] += affs[c][v]
                entry[1] += 1
    keys = sorted(expected)
    np.testing.assert_array_equal(graph.edges, np.array(keys, np.uint64))
    np.testing.assert_allclose(graph.total, [expected[k][0] for k in keys])
    np.testing.assert_array_equal(graph.count, [expected[k][1] for k in keys])
    np.testing.assert_allclose(graph.affinity, graph.total / graph.count)
    # graphs of parts (here: of channel subsets) add up to the whole
    parts = [agg.region_graph(frag, affs[:1], offsets[:1]), agg.region_graph(frag, affs[1:], offsets[1:])]
    combined = agg.RegionGraph.combine(parts)
    np.testing.assert_array_equal(combined.edges, graph.edges)
    np.testing.assert_allclose(combined.total, graph.total)
    np.testing.assert_array_equal(combined.count, graph.count)


def test_canonical_labels_and_masked_fragments():
    labels = np.array([[0, 7, 7, 3], [3, 0, 9, 9]])
    np.testing.assert_array_equal(agg.canonical_labels(labels), [[0, 1, 1, 2], [2, 0, 3, 3]])
    lab, affs = two_cells()
    mask = np.ones(lab.shape, bool)
    mask[0, :, :3] = False
    frag = agg.fragments(affs, DEFAULT_OFFSETS, mask=mask, min_distance=1)
    assert (frag[~mask] == 0).all() and (frag[mask] > 0).all()
    assert same_partition(agg.agglomerate(affs, DEFAULT_OFFSETS, frag, 0.5), np.where(mask, lab, 0))
