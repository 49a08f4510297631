"""volseg.core.affinities: hand-worked targets, masks, a brute-force reference, the offset parser."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.ndimage as ndi

from volseg.core.affinities import (
    DEFAULT_OFFSETS,
    Offset,
    affinities,
    boundaries_from_affinities,
    check_offsets,
    default_offsets,
    format_offsets,
    instances_from_binary,
    offset_reach,
    parse_offsets,
    synth_instances,
)
from volseg.core.synth import synth_block
from volseg.errors import OptionError

NN = ((0, -1, 0), (0, 0, -1))


# ============================================================================ reference
def brute_force(labels, offsets, background=0, ignore=None, per_section=False):
    """The definition, voxel by voxel: the pair (v, v + o) is stored at v."""
    shape = labels.shape
    targets = np.zeros((len(offsets), *shape), np.uint8)
    mask = np.zeros((len(offsets), *shape), bool)
    for c, off in enumerate(offsets):
        for v in itertools.product(*map(range, shape)):
            w = tuple(a + b for a, b in zip(v, off, strict=True))
            if not all(0 <= a < n for a, n in zip(w, shape, strict=True)):
                continue
            if per_section and off[0] != 0:
                continue
            a, b = labels[v], labels[w]
            if ignore is not None and ignore in (a, b):
                continue
            mask[c][v] = True
            targets[c][v] = a == b and (background is None or a != background)
    return targets, mask


def brute_boundaries(affs, offsets, reduce="min"):
    """Per voxel, the affinities of the in-plane nearest-neighbour pairs it belongs to."""
    shape = affs.shape[1:]
    out = np.zeros(shape, np.float32)
    chans = [offsets.index(o) for o in offsets if abs(o[1]) + abs(o[2]) == 1 and o[0] == 0]
    for v in itertools.product(*map(range, shape)):
        values = []
        for c in chans:
            o = offsets[c]
            for holder, sign in ((v, 1), (tuple(a - b for a, b in zip(v, o, strict=True)), -1)):
                partner = tuple(a + sign * b for a, b in zip(v, o, strict=True))
                if all(0 <= a < n for a, n in zip(partner, shape, strict=True)):
                    values.append(affs[c][holder])
        if values:
            out[v] = 1 - (min(values) if reduce == "min" else np.mean(values))
    return out


# ============================================================================ known answers
def test_two_touching_cells_are_split_along_their_border():
    # ids 1 | 2 side by side: x < 2 is cell 1, x >= 2 is cell 2; no membrane between them.
    labels = np.array([[1, 1, 2, 2]] * 3)
    targets, mask = affinities(labels, NN)
    assert targets.shape == mask.shape == (2, 3, 4)
    # y (0,-1,0): the first row has no voxel above it; every other pair lies inside one cell.
    np.testing.assert_array_equal(mask[0], [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(targets[0], mask[0])
    # x (0,0,-1): column 0 has no left neighbour; column 2 looks back at cell 1: the border.
    np.testing.assert_array_equal(mask[1], [[0, 1, 1, 1]] * 3)
    np.testing.assert_array_equal(targets[1], [[0, 1, 0, 1]] * 3)
    # The boundary map marks both sides of the seam.
    np.testing.assert_array_equal(boundaries_from_affinities(targets, NN), [[0, 1, 1, 0]] * 3)
    # "mean": one cut pair of the voxel's 4 (3 on the top and bottom rows, which lack a neighbour).
    edge, inner = [0, 1 / 3, 1 / 3, 0], [0, 1 / 4, 1 / 4, 0]
    np.testing.assert_allclose(boundaries_from_affinities(targets, NN, reduce="mean"), [edge, inner, edge])


def test_background_pairs_are_boundaries_and_stay_in_the_mask():
    # cell 1, a membrane column (0), cell 2: every pair touching the membrane is 0 and known.
    labels = np.array([[1, 0, 0, 2]] * 2)
    targets, mask = affinities(labels, NN)
    np.testing.assert_array_equal(targets[1], [[0, 0, 0, 0]] * 2)
    np.testing.assert_array_equal(mask[1], [[0, 1, 1, 1]] * 2)
    np.testing.assert_array_equal(targets[0], [[0, 0, 0, 0], [1, 0, 0, 1]])
    # background=None: 0 is one more object, so the membrane pairs are affine.
    targets, _ = affinities(labels, NN, background=None)
    np.testing.assert_array_equal(targets[1], [[0, 0, 1, 0]] * 2)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        # A | B (1 px, x = 3) | A: one cell wrapped around a thin one. Short offsets see A-B on both
        # sides of B; the offset 0,0,-2 at x = 4 jumps over B and sees A-A = 1 (x = 3, 5 pair with B).
        ([1, 1, 1, 2, 1, 1], {(0, 0, -1): [0, 1, 1, 0, 0, 1], (0, 0, -2): [0, 0, 1, 0, 1, 0]}),
        # A | B (1 px) | C: short offsets connect A and C only through B; 0,0,-2 at x = 4 and 0,0,-3 at
        # x = 3, 4 see A-C = 0 across it, so a long-range offset separates what a missed thin boundary
        # would merge (0,0,-3 at x = 6 lies inside C: 1).
        ([1, 1, 1, 2, 3, 3], {(0, 0, -1): [0, 1, 1, 0, 0, 1], (0, 0, -2): [0, 0, 1, 0, 0, 0]}),
        ([1, 1, 2, 3, 3, 3, 3], {(0, 0, -3): [0, 0, 0, 0, 0, 0, 1]}),
    ],
)
def test_long_range_offsets_see_across_a_thin_cell(row, expected):
    offsets = list(expected)
    targets, mask = affinities(np.array([row]), offsets, background=None)
    for c, off in enumerate(offsets):
        np.testing.assert_array_equal(targets[c, 0], expected[off], err_msg=str(off))
        np.testing.assert_array_equal(mask[c, 0], np.arange(len(row)) >= -off[2])


def test_masks_are_false_exactly_where_the_partner_leaves_the_array():
    shape = (3, 5, 6)
    labels = np.ones(shape, np.int32)
    offsets = [(0, -1, 0), (0, 0, 1), (-1, 0, 0), (2, -3, 4), (0, -27, 0), (0, 0, 5), (-3, 0, 0)]
    targets, mask = affinities(labels, offsets)
    grid = np.indices(shape)
    for c, off in enumerate(offsets):
        inside = np.ones(shape, bool)
        for axis, k in enumerate(off):
            inside &= (grid[axis] + k >= 0) & (grid[axis] + k < shape[axis])
        np.testing.assert_array_equal(mask[c], inside, err_msg=str(off))
        np.testing.assert_array_equal(targets[c], inside, err_msg=str(off))  # one cell: 1 wherever known
    assert not mask[4].any() and not mask[6].any()  # 27 > Y and 3 = Z: no pair at all


def test_ignore_masks_every_pair_with_an_unlabelled_voxel():
    labels = np.array([[[1, 1, 7, 2], [1, 1, 2, 2]]])
    targets, mask = affinities(labels, NN, ignore=7)
    np.testing.assert_array_equal(mask[0, 0], [[0, 0, 0, 0], [1, 1, 0, 1]])
    np.testing.assert_array_equal(mask[1, 0], [[0, 1, 0, 0], [0, 1, 1, 1]])
    np.testing.assert_array_equal(targets[1, 0], [[0, 1, 0, 0], [0, 1, 0, 1]])
    assert not targets[~mask].any()  # unknown targets are 0
    # ignore equal to background: the unknown label wins, those pairs are masked rather than cut.
    targets, mask = affinities(np.array([[1, 0, 1]]), [(0, 0, -1)], ignore=0)
    np.testing.assert_array_equal(mask[0], [[0, 0, 0]])


def test_per_section_masks_every_offset_across_sections():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (3, 8, 9))
    offsets = [(0, -1, 0), (-1, 0, 0), (0, 0, -3), (1, -1, 0), (-2, 0, 0)]
    targets, mask = affinities(labels, offsets, per_section=True)
    whole_t, whole_m = affinities(labels, offsets)
    for c, off in enumerate(offsets):
        if off[0] == 0:
            np.testing.assert_array_equal(mask[c], whole_m[c])
            np.testing.assert_array_equal(targets[c], whole_t[c])
        else:
            assert not mask[c].any() and not targets[c].any()


@pytest.mark.parametrize("background", [0, None])
@pytest.mark.parametrize("per_section", [False, True])
def test_vectorised_equals_brute_force(background, per_section):
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 4, (3, 6, 7)).astype(np.uint16)
    labels[:, 2:4, 2:5] = 2  # some runs, so that far pairs are affine too
    offsets = [(0, -1, 0), (0, 0, -1), (-1, 0, 0), (0, 2, 0), (0, 0, 3), (1, -2, 1), (-2, 0, 3), (0, -5, -6)]
    for ignore in (None, 3):
        got = affinities(labels, offsets, background=background, ignore=ignore, per_section=per_section)
        want = brute_force(labels, offsets, background, ignore, per_section)
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"targets, ignore={ignore}")
        np.testing.assert_array_equal(got[1], want[1], err_msg=f"mask, ignore={ignore}")


def test_two_dimensional_labels_are_one_section():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, (7, 8))
    targets, mask = affinities(labels, dtype="float32")
    assert targets.shape == (len(DEFAULT_OFFSETS), 7, 8) and targets.dtype == np.float32
    want_t, want_m = affinities(labels[None])
    np.testing.assert_array_equal(targets, want_t[:, 0])
    np.testing.assert_array_equal(mask, want_m[:, 0])
    assert not mask[DEFAULT_OFFSETS.index((-1, 0, 0))].any()  # one section: nothing across


def test_bad_labels_and_dtype_are_refused():
    with pytest.raises(OptionError, match="^labels: dtype float64"):
        affinities(np.zeros((2, 2)))
    with pytest.raises(OptionError, match=r"^labels: shape \(4,\)"):
        affinities(np.zeros(4, int))
    with pytest.raises(OptionError, match="^dtype: int16"):
        affinities(np.zeros((2, 2), int), dtype=np.int16)


# ============================================================================ boundaries
@pytest.mark.parametrize("reduce", ["min", "mean"])
@pytest.mark.parametrize("nn", [NN, ((0, 1, 0), (0, 0, 1)), ((0, 0, 1), (0, -1, 0))])
def test_boundaries_equal_brute_force(reduce, nn):
    rng = np.random.default_rng(2)
    offsets = [(-1, 0, 0), *nn, (0, -3, 0)]
    affs = rng.random((len(offsets), 2, 5, 6)).astype(np.float32)
    got = boundaries_from_affinities(affs, offsets, reduce=reduce)
    np.testing.assert_allclose(got, brute_boundaries(affs, offsets, reduce), rtol=1e-6, atol=1e-6)
    flat = boundaries_from_affinities(affs[:, 1], offsets, reduce=reduce)
    np.testing.assert_allclose(flat, got[1], rtol=1e-6)


def test_boundaries_of_isbi_style_targets_cover_the_membrane():
    binary = np.full((1, 5, 7), 255, np.uint8)
    binary[0, :, 3] = 0  # a membrane column between two cells
    targets, _ = affinities(instances_from_binary(binary), NN)
    # The membrane and the cell voxels beside it: every pair of theirs crosses the membrane.
    np.testing.assert_array_equal(boundaries_from_affinities(targets, NN)[0], [[0, 0, 1, 1, 1, 0, 0]] * 5)


def test_boundaries_need_both_nearest_neighbours():
    with pytest.raises(OptionError, match="^offsets '0,-1,0;0,0,-3': no nearest neighbour in x"):
        boundaries_from_affinities(np.zeros((2, 3, 3)), [(0, -1, 0), (0, 0, -3)])
    with pytest.raises(OptionError, match=r"^affs: shape \(3, 3, 3\)"):
        boundaries_from_affinities(np.zeros((3, 3, 3)), NN)
    with pytest.raises(OptionError, match="^reduce: 'max'"):
        boundaries_from_affinities(np.zeros((2, 3, 3)), NN, reduce="max")


# ============================================================================ instance ids
def test_instances_from_binary_labels_cells_per_section():
    binary = np.array(
        [
            [[255, 255, 0, 255], [255, 0, 255, 255], [0, 0, 0, 0]],
            [[255, 255, 255, 255], [0, 0, 0, 0], [255, 0, 0, 255]],
        ],
        np.uint8,
    )
    ids = instances_from_binary(binary)
    assert ids.dtype == np.uint32
    # Section 0: the two cells touch only diagonally, so 4-connectivity keeps them apart.
    np.testing.assert_array_equal(ids[0], [[1, 1, 0, 2], [1, 0, 2, 2], [0, 0, 0, 0]])
    # Section 1 numbers on from section 0, so no id is shared across sections.
    np.testing.assert_array_equal(ids[1], [[3, 3, 3, 3], [0, 0, 0, 0], [4, 0, 0, 5]])
    joined = instances_from_binary(binary, connectivity=2)
    np.testing.assert_array_equal(joined[0], [[1, 1, 0, 1], [1, 0, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(instances_from_binary(binary[1]), ndi.label(binary[1] == 255)[0])
    # Ids differ across sections: an offset across them is 0 even without per_section.
    targets, mask = affinities(ids, [(-1, 0, 0)])
    assert mask[0, 1].all() and not targets.any()
    with pytest.raises(OptionError, match="^connectivity: 3"):
        instances_from_binary(binary, connectivity=3)


def test_synth_instances_are_the_cells_with_membranes_as_background():
    _, cells, membranes = synth_block((2, 48, 48), seed=4)
    ids = synth_instances(cells, membranes)
    assert ids.dtype == np.uint32
    np.testing.assert_array_equal(ids == 0, membranes == 0)
    np.testing.assert_array_equal(ids[membranes == 255], cells[membranes == 255])
    np.testing.assert_array_equal(synth_instances(cells), cells)
    # 3-D ids: a cell keeps its id across sections, so many z pairs are affine.
    targets, mask = affinities(ids, [(-1, 0, 0)])
    assert mask[0, 1].all() and targets[0, 1].mean() > 0.5
    with pytest.raises(OptionError, match="^membranes: shape"):
        synth_instances(cells, membranes[:1])


# ============================================================================ offsets
def test_default_offsets_and_their_text():
    assert default_offsets() == DEFAULT_OFFSETS
    text = format_offsets(DEFAULT_OFFSETS)
    assert text == "0,-1,0;0,0,-1;-1,0,0;0,-3,0;0,0,-3;0,-9,0;0,0,-9;0,-27,0;0,0,-27"
    assert parse_offsets(text) == DEFAULT_OFFSETS
    assert parse_offsets(None) == parse_offsets("  ") == DEFAULT_OFFSETS
    assert parse_offsets(" 0, -1, 0 ; -1,0,0 ;") == (Offset(0, -1, 0), Offset(-1, 0, 0))
    assert offset_reach(DEFAULT_OFFSETS) == (1, 27, 27)
    assert check_offsets(np.array([[0, 1, 0]])) == (Offset(0, 1, 0),)
    assert Offset(-1, 0, 0).in_plane is False and Offset(0, 0, 3).in_plane


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,-1", "'0,-1' has 2 numbers, not 3"),
        ("0,-1,0;a,b,c", "'a,b,c' is not integers"),
        ("0,-1,0;0,1.5,0", "'0,1.5,0' is not integers"),
        ("0,0,0", "the zero offset"),
        ("0,-1,0;0,0,-1;0,-1,0", r"offset 0,-1,0 is given twice"),
        (";", "no offset given"),
    ],
)
def test_offset_parser_errors(text, message):
    with pytest.raises(OptionError, match=message) as info:
        parse_offsets(text, option="aff_offsets")
    assert str(info.value).startswith(f"aff_offsets {text!r}: ") and "\n" not in str(info.value)
    assert info.value.argument == "aff_offsets"


@pytest.mark.parametrize("offsets", [[(0, 1)], [(0.5, 0, 0)], [(0, True, 0)], [(0, 0, 0)], []])
def test_offset_sequences_are_checked(offsets):
    with pytest.raises(OptionError, match="^offsets "):
        affinities(np.zeros((3, 3), int), offsets)
