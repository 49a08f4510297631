"""volseg.core.metrics and volseg.core.isbi: against scikit-image, hand-worked cases, block accumulation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.metrics import adapted_rand_error, variation_of_information

from volseg.core.isbi import SCRIPT_THRESHOLDS, isbi_scores, thin_boundaries
from volseg.core.metrics import ConfusionCounts, Contingency, pixel_scores, rand_info_scores
from volseg.errors import InputError, OptionError

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012"
LN2 = math.log(2.0)


def scores(true, pred, ignore_labels=(0,), pred_background="singletons"):
    """``(v_rand, v_info, AdaptedRand, VariationOfInformation)``."""
    table = Contingency(ignore_labels).add(true, pred)
    return table.v_rand(pred_background), table.v_info(pred_background), table.adapted_rand(), table.voi()


def flat(result) -> tuple[float, ...]:
    v_rand, v_info, are, voi = result
    return (v_rand, v_info, *are, *voi)


# ============================================================================ pixel metrics
def test_pixel_scores_tiny():
    # pred > 0.5 -> [1, 0, 1, 0]; truth [1, 0, 0, 0]: tp=1, fp=1, fn=0, tn=2
    s = pixel_scores(np.array([0.9, 0.2, 0.7, 0.1]), np.array([1, 0, 0, 0]))
    assert s == pytest.approx(
        {"pixel_error": 1 / 4, "dice": 2 / 3, "iou": 1 / 2, "precision": 1 / 2, "recall": 1.0}
    )


def test_pixel_scores_threshold_is_strict_and_bool_prediction_is_used_as_is():
    truth = np.array([[True, False], [True, False]])
    assert pixel_scores(np.array([[0.5, 0.5], [0.6, 0.0]]), truth)["recall"] == 0.5  # 0.5 is not > 0.5
    # bool: tp=1, fp=1, fn=1 -> dice 2/4, iou 1/3, error 2/4
    s = pixel_scores(np.array([[True, True], [False, False]]), truth)
    assert s == pytest.approx(
        {"pixel_error": 0.5, "dice": 0.5, "iou": 1 / 3, "precision": 0.5, "recall": 0.5}
    )


def test_pixel_scores_empty_masks_and_streaming():
    assert pixel_scores(np.zeros(4), np.zeros(4)) == {
        "pixel_error": 0.0,
        "dice": 1.0,
        "iou": 1.0,
        "precision": 1.0,
        "recall": 1.0,
    }
    rng = np.random.default_rng(0)
    prob, truth = rng.random((3, 16, 16)), rng.random((3, 16, 16)) > 0.6
    parts = sum((ConfusionCounts.from_arrays(prob[z], truth[z]) for z in range(3)), ConfusionCounts())
    assert parts == ConfusionCounts.from_arrays(prob, truth)


def test_pixel_scores_rejects_bad_input():
    with pytest.raises(InputError, match="pred has dtype uint8"):
        pixel_scores(np.array([255, 0], np.uint8), np.array([1, 0]))
    with pytest.raises(InputError, match="shape"):
        pixel_scores(np.zeros(3), np.zeros(4))


# ============================================================================ against scikit-image
@pytest.mark.parametrize("ignore_labels", [(), (0,), (0, 3)])
def test_adapted_rand_and_voi_match_skimage(ignore_labels):
    rng = np.random.default_rng(42)
    for _ in range(10):
        true = rng.integers(0, 6, (24, 20))
        pred = rng.integers(0, 5, (24, 20))
        table = Contingency(ignore_labels).add(true, pred)
        are, precision, recall = adapted_rand_error(true, pred, ignore_labels=ignore_labels)
        ours = table.adapted_rand()
        assert ours.error == pytest.approx(are, abs=1e-12)
        # scikit-image returns precision and recall swapped (scikit-image issue 6485)
        assert (ours.precision, ours.recall) == pytest.approx((recall, precision), abs=1e-12)
        expected_voi = variation_of_information(true, pred, ignore_labels=ignore_labels)
        assert table.voi() == pytest.approx(tuple(expected_voi), abs=1e-12)


def test_to_sparse_is_a_table_skimage_accepts():
    rng = np.random.default_rng(1)
    true, pred = rng.integers(0, 7, (30, 30)), rng.integers(0, 4, (30, 30))
    table = Contingency(ignore_labels=()).add(true, pred)
    matrix, _, _ = table.to_sparse()
    assert adapted_rand_error(table=matrix.tocsr())[0] == pytest.approx(table.adapted_rand().error)
    # (skimage 0.26's variation_of_information(table=...) fails its own shape check on None images)


# ============================================================================ accumulation
def test_blocks_accumulate_to_the_whole_array():
    rng = np.random.default_rng(7)
    true = rng.integers(0, 9, (6, 17, 23)).astype(np.uint32)
    pred = rng.integers(0, 12, (6, 17, 23)).astype(np.int64)
    whole = Contingency().add(true, pred)
    blocks = Contingency()
    for zs in (slice(0, 2), slice(2, 6)):
        for ys in (slice(0, 5), slice(5, 17)):
            for xs in (slice(0, 10), slice(10, 23)):
                blocks.add(true[zs, ys, xs], pred[zs, ys, xs])
    for got, want in zip(blocks.table, whole.table, strict=True):
        np.testing.assert_array_equal(got, want)
    # two workers, merged
    left = Contingency().add(true[:3], pred[:3])
    right = Contingency().add(true[3:], pred[3:])
    merged = left.merge(right)
    assert merged.n == whole.n == np.count_nonzero(true)
    assert merged.v_rand() == whole.v_rand() and merged.voi() == whole.voi()


def test_merge_refuses_different_ignore_labels():
    with pytest.raises(OptionError, match="ignore_labels differ"):
        Contingency((0,)).merge(Contingency(()))


def test_uint64_labels_give_the_same_scores_as_small_labels():
    rng = np.random.default_rng(3)
    true = rng.integers(0, 5, (20, 20))
    pred = rng.integers(0, 5, (20, 20))
    huge = np.array([0, 2**64 - 1, 2**63 + 7, 12345678901234567890, 2**40], np.uint64)
    medium = np.array([0, 70_000, 3, 99_999, 17], np.uint64)  # the one-uint64-key path
    reference = scores(true, pred)
    for mapping in (huge, medium):
        assert flat(scores(mapping[true], mapping[pred])) == pytest.approx(flat(reference))
    table = Contingency().add(huge[true], huge[pred]).table
    assert table[0].dtype == table[1].dtype == np.uint64 and set(table[0]) <= set(huge[1:])


def test_negative_or_float_labels_are_refused():
    with pytest.raises(InputError, match="negative"):
        Contingency().add(np.array([1, -1]), np.array([1, 1]))
    with pytest.raises(InputError, match="dtype float64"):
        Contingency().add(np.array([1.0, 2.0]), np.array([1, 1]))


# ============================================================================ hand-worked cases
QUADRANTS = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])  # four cells of n = 4 px


def test_perfect_prediction():
    v_rand, v_info, are, voi = scores(QUADRANTS, QUADRANTS * 10)  # label values do not matter
    assert (v_rand, v_info) == (1.0, 1.0)
    assert are.error == pytest.approx(0.0) and tuple(voi) == pytest.approx((0.0, 0.0))


def test_one_merge_of_two_equal_cells():
    pred = np.where(QUADRANTS == 2, 1, QUADRANTS)  # cells 1 and 2 merged; pred sizes 8, 4, 4
    v_rand, v_info, are, voi = scores(QUADRANTS, pred)
    # counts (n = 4, N = 16): sum p_ij^2 = 4 * 16 = 64, sum t^2 = 64, sum s^2 = 64 + 16 + 16 = 96
    # V_rand = 2 * 64 / (64 + 96) = 0.8
    assert v_rand == pytest.approx(0.8)
    # H(T) = 2 bits; H(S) = -(1/2 log 1/2 + 2 * 1/4 log 1/4) = 1.5 bits; S is a function of T so
    # H(S, T) = H(T) = 2 and I = 1.5 + 2 - 2 = 1.5; V_info = 2 * 1.5 / (1.5 + 2) = 6/7
    assert v_info == pytest.approx(6 / 7)
    # VOI: split = H(S|T) = 0, merge = H(T|S) = H(S,T) - H(S) = 0.5 bit
    assert tuple(voi) == pytest.approx((0.0, 0.5))
    # pairs of distinct pixels: together in both = 64 - 16 = 48, in truth 48, in pred 96 - 16 = 80
    # precision = 48/80 = 0.6, recall = 1, F = 2 * 48 / (48 + 80) = 0.75, error = 0.25
    assert tuple(are) == pytest.approx((0.25, 0.6, 1.0))


def test_one_split():
    true = np.where(QUADRANTS == 2, 1, QUADRANTS)  # truth: sizes 8, 4, 4; the prediction splits cell 1
    v_rand, v_info, are, voi = scores(true, QUADRANTS)
    # the merge case with truth and prediction exchanged: the scores are symmetric there
    assert (v_rand, v_info) == pytest.approx((0.8, 6 / 7))
    assert tuple(voi) == pytest.approx((0.5, 0.0))
    assert tuple(are) == pytest.approx((0.25, 1.0, 0.6))


def test_halves_merged_into_one():
    true = np.array([[1, 1, 2, 2]] * 4)  # two cells of 8 px, the prediction one cell of 16
    v_rand, v_info, are, voi = scores(true, np.ones_like(true))
    # sum p^2 = 2 * 64 = 128 = sum t^2, sum s^2 = 256: V_rand = 256 / 384 = 2/3
    # H(S) = 0 so I = 0 and V_info = 0; merge = H(T|S) = 1 bit
    assert (v_rand, v_info) == pytest.approx((2 / 3, 0.0))
    assert tuple(voi) == pytest.approx((0.0, 1.0))
    # distinct pairs: both 128 - 16 = 112, truth 112, pred 256 - 16 = 240 -> precision 7/15,
    # F = 224 / 352 = 7/11, error 4/11 (scikit-image gives the same error)
    assert tuple(are) == pytest.approx((4 / 11, 7 / 15, 1.0))
    assert adapted_rand_error(true, np.ones_like(true))[0] == pytest.approx(4 / 11)


def test_all_background_prediction():
    true = np.array([[1, 1, 2, 2]] * 4)  # N = 16 counted pixels, two cells of 8
    pred = np.zeros_like(true)
    # Fiji: each predicted-background pixel is its own cluster. sum p^2 = sum s^2 = 16 * 1^2,
    # sum t^2 = 128: V_rand = 2 * 16 / (16 + 128) = 2/9.
    # H(S) = log 16 = 4 bits, H(T) = 1 bit, H(S,T) = 4 bits -> I = 1, V_info = 2 / (4 + 1) = 0.4
    assert rand_info_scores(pred, true) == pytest.approx((2 / 9, 0.4))
    # background as one ordinary label: one cluster of 16, as in the merge case above
    assert rand_info_scores(pred, true, pred_background="label") == pytest.approx((2 / 3, 0.0))


def test_pixels_on_the_true_background_are_not_counted():
    true = np.array([[1, 1, 0, 2, 2]])
    pred = np.array([[5, 5, 5, 6, 6]])  # differs from the truth only where the truth is 0
    assert rand_info_scores(pred, true) == (1.0, 1.0)
    assert math.isnan(rand_info_scores(pred, np.zeros_like(true))[0])  # nothing counted


def test_bad_pred_background_option():
    with pytest.raises(OptionError, match="pred_background"):
        Contingency().add(QUADRANTS, QUADRANTS).v_rand("zero")


# ============================================================================ properties
labelings = arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(1, 6)), elements=st.integers(0, 4))


@st.composite
def label_pairs(draw):
    true = draw(labelings)
    pred = draw(arrays(np.int64, true.shape, elements=st.integers(0, 4)))
    return true, pred


@settings(max_examples=80, deadline=None)
@given(label_pairs())
def test_scores_lie_in_their_bounds(pair):
    true, pred = pair
    v_rand, v_info, are, voi = scores(true, pred)
    if not np.any(true):
        assert math.isnan(v_rand) and math.isnan(v_info)
        return
    assert 0.0 <= v_rand <= 1.0 and 0.0 <= v_info <= 1.0
    assert all(0.0 <= x <= 1.0 for x in are) and min(voi) >= 0.0


@settings(max_examples=80, deadline=None)
@given(label_pairs())
def test_scores_are_symmetric_without_restrictions(pair):
    true, pred = pair
    forward = Contingency(ignore_labels=()).add(true, pred)
    backward = Contingency(ignore_labels=()).add(pred, true)
    assert forward.v_rand("label") == pytest.approx(backward.v_rand("label"))
    assert forward.v_info("label") == pytest.approx(backward.v_info("label"))
    a, b = forward.adapted_rand(), backward.adapted_rand()
    assert (a.error, a.precision, a.recall) == pytest.approx((b.error, b.recall, b.precision))
    assert tuple(forward.voi()) == pytest.approx(tuple(reversed(backward.voi())), abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(label_pairs(), st.permutations(range(1, 5)), st.permutations(range(1, 5)))
def test_scores_do_not_depend_on_label_values(pair, perm_true, perm_pred):
    true, pred = pair
    relabel_true = np.array([0, *perm_true]) * 1000  # 0 stays 0 (background)
    relabel_pred = np.array([0, *perm_pred]) + 2**62 * np.array([0, 1, 1, 1, 1])
    got = flat(scores(relabel_true[true], relabel_pred[pred]))
    assert got == pytest.approx(flat(scores(true, pred)), nan_ok=True)


@settings(max_examples=60, deadline=None)
@given(labelings)
def test_a_labeling_scores_perfectly_against_itself(true):
    v_rand, v_info, are, voi = scores(true, true)
    if np.any(true):
        assert v_rand == pytest.approx(1.0) and v_info == pytest.approx(1.0)
        assert are.error == pytest.approx(0.0, abs=1e-12) and max(voi) == pytest.approx(0.0, abs=1e-12)


# ============================================================================ thinning
def test_thinning_leaves_one_pixel_lines_between_regions():
    labels = np.zeros((6, 12), np.int32)
    labels[:, :3], labels[:, 9:] = 1, 2  # a 6-px wide boundary between two regions
    labels[2, 1] = 0  # a hole inside region 1
    thin = thin_boundaries(labels)
    assert (thin == 0).sum(axis=1).tolist() == [1] * 6  # one line pixel per row, the hole absorbed
    assert np.all(thin[labels > 0] == labels[labels > 0])
    assert thin[2, 1] == 1


def test_thinning_never_lets_two_regions_touch():
    rng = np.random.default_rng(5)
    from scipy import ndimage as ndi

    cells = ndi.gaussian_filter(rng.random((64, 64)), 1.5) > 0.5
    labels = ndi.label(cells)[0]
    thin = thin_boundaries(labels)
    for a, b in ((thin[:, :-1], thin[:, 1:]), (thin[:-1], thin[1:])):
        assert not np.any((a > 0) & (b > 0) & (a != b))
    assert np.all(thin[labels > 0] == labels[labels > 0])


def test_thinning_of_trivial_images_is_identity():
    for labels in (np.zeros((4, 4), np.int32), np.ones((4, 4), np.int32)):
        np.testing.assert_array_equal(thin_boundaries(labels), labels)
    # regions that already touch are not carved; the boundary pixel joins its nearest region
    np.testing.assert_array_equal(thin_boundaries(np.array([[1, 2, 0]])), [[1, 2, 2]])


# ============================================================================ ISBI protocol
def two_cells(rows: int = 6) -> np.ndarray:
    """Membrane truth (True = membrane): columns 4-5 between two cells of 4 columns."""
    truth = np.zeros((rows, 10), bool)
    truth[:, 4:6] = True
    return truth


def test_script_thresholds_are_the_scripts_doubles():
    assert len(SCRIPT_THRESHOLDS) == 11
    assert SCRIPT_THRESHOLDS[0] == 0.0 and SCRIPT_THRESHOLDS[-1] == 0.9999999999999999
    assert SCRIPT_THRESHOLDS[3] == 0.30000000000000004


def test_isbi_perfect_prediction():
    truth = two_cells()
    for prob in (truth.astype(np.float32), np.where(truth, 255, 0).astype(np.uint8)):
        r = isbi_scores(prob, truth)
        assert (r["v_rand"], r["v_info"]) == (1.0, 1.0)
        assert r["v_rand_curve"] == [1.0] * 11 and r["thresholds"] == list(SCRIPT_THRESHOLDS)


def test_isbi_thinning_forgives_a_thick_predicted_membrane():
    truth = two_cells()  # 6 x 10, true cells of 24 px in columns 0-3 and 6-9
    prob = np.zeros(truth.shape)
    prob[:, 3:7] = 1.0  # predicted membrane 4 px wide: one extra column on each true cell
    assert isbi_scores(prob, truth)["v_rand"] == 1.0  # the thinned line lies on the true membrane
    r = isbi_scores(prob, truth, thin=False)
    # unthinned: pred cells of 18 px, 12 pred-membrane px on true cells, each a singleton (N = 48)
    # sum p^2 = 2 * 18^2 + 12 = 660 = sum s^2; sum t^2 = 2 * 24^2 = 1152: V_rand = 1320 / 1812
    assert r["v_rand"] == pytest.approx(1320 / 1812)
    # H(T) = ln 2, H(S) = -2 (18/48) ln(18/48) + 12 (1/48) ln 48, I = H(T) (S refines T)
    h_s = -2 * 18 / 48 * math.log(18 / 48) + 12 / 48 * math.log(48)
    assert r["v_info"] == pytest.approx(2 * math.log(2) / (math.log(2) + h_s))  # 0.5784...
    assert r["v_rand_threshold"] == 0.0  # every threshold gives the same cells; the first wins


def test_isbi_gap_in_the_membrane_merges_and_stack_accumulates():
    truth = np.stack([two_cells(), two_cells()])
    prob = truth.astype(float)
    prob[1, 4:, 4:6] = 0.0  # section 1: a gap in the membrane merges the two cells
    r = isbi_scores(prob, truth)
    # section 1: one pred cell of 48 over two true cells of 24: V_rand = 2 * 1152 / (1152 + 2304) = 2/3
    assert r["sections"]["v_rand"][0][5] == 1.0 and r["sections"]["v_rand"][1][5] == pytest.approx(2 / 3)
    assert r["sections"]["v_info"][1][5] == pytest.approx(0.0)
    # overall, tables summed: sum p^2 = 2304, sum t^2 = 2304, sum s^2 = 1152 + 2304 -> 4608 / 5760
    assert r["v_rand"] == pytest.approx(0.8)
    # H(T) = ln 4, H(S) = 1.5 ln 2 (cells of 24, 24, 48 over 96), H(S,T) = ln 4 -> I = 1.5 ln 2
    assert r["v_info"] == pytest.approx(2 * 1.5 / (1.5 + 2))
    assert r["v_info_section_mean"] == pytest.approx(0.5)


def test_isbi_threshold_applies_to_the_cell_probability():
    truth = two_cells()
    prob = np.where(truth, 0.65, 0.0)  # membrane only weakly predicted: cell probability 0.35
    r = isbi_scores(prob, truth)
    # t < 0.35: the membrane counts as cell, everything merges; t >= 0.35: perfect
    assert r["v_rand_curve"][:4] == pytest.approx([2 / 3] * 4) and r["v_rand_curve"][4:] == [1.0] * 7
    assert r["v_rand_threshold"] == 0.4


def test_isbi_pixel_error_is_one_minus_the_best_cell_f_score():
    truth = two_cells()  # 6 x 10: 48 cell pixels, membrane in columns 4-5
    prob = np.where(truth, 0.65, 0.0)  # cell probability 0.35 on the membrane, 1 on the cells
    prob[0, 0] = 0.95  # one cell pixel with cell probability 0.05
    r = isbi_scores(prob, truth)
    # t = 0: everything is cell: tp 48, fp 12 -> F = 96 / 108
    # t = 0.1 .. 0.3: the membrane still counts as cell, (0, 0) does not: tp 47, fp 12, fn 1 -> 94 / 107
    # t = 0.4 ..: tp 47, fn 1 -> 94 / 95, first reached at 0.4
    assert r["pixel_fscore_curve"][:5] == pytest.approx([96 / 108, *[94 / 107] * 3, 94 / 95])
    assert r["pixel_error_isbi"] == pytest.approx(1 / 95) and r["pixel_error_isbi_threshold"] == 0.4
    # not the share of misclassified pixels: 1 of 60 at the same threshold
    assert r["pixel_error_isbi"] != pytest.approx(1 / 60)


def test_isbi_rejects_bad_input():
    truth = two_cells()
    with pytest.raises(InputError, match="differs"):
        isbi_scores(np.zeros((6, 9)), truth)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        isbi_scores(np.full(truth.shape, 1.5), truth)
    with pytest.raises(InputError, match="uint16"):
        isbi_scores(np.zeros(truth.shape, np.uint16), truth)
    with pytest.raises(OptionError, match="thresholds"):
        isbi_scores(np.zeros(truth.shape), truth, thresholds=[0.5, 2.0])
    with pytest.raises(InputError, match="shape"):
        isbi_scores(np.zeros((1, 1, 6, 10)), np.zeros((1, 1, 6, 10)))


@pytest.mark.isbi
@pytest.mark.skipif(not (ISBI / "train-labels.tif").exists(), reason="ISBI 2012 data not present")
def test_isbi_on_a_real_section():
    import tifffile
    from scipy import ndimage as ndi

    membrane = tifffile.imread(ISBI / "train-labels.tif", key=0) == 0
    perfect = isbi_scores(membrane.astype(np.float32), membrane)
    assert (perfect["v_rand"], perfect["v_info"]) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    prob = np.clip(
        ndi.gaussian_filter(membrane.astype(np.float32), 2) + rng.normal(0, 0.1, membrane.shape), 0, 1
    )
    r = isbi_scores(prob, membrane)
    assert 0.9 < r["v_rand"] < 1.0 and 0.9 < r["v_info"] < 1.0
    assert r["v_rand"] >= isbi_scores(prob, membrane, thin=False)["v_rand"]


# ============================================================================ CREMI score
def test_cremi_score_is_the_geometric_mean_of_arand_and_voi():
    from volseg.core.metrics import cremi_score

    assert cremi_score(0.25, 0.5, 0.5) == pytest.approx(0.5)
    assert cremi_score(0.0, 3.0, 1.0) == 0.0 and math.isnan(cremi_score(math.nan, 0.0, 0.0))
    for bad in ((-0.1, 0.0, 0.0), ("0.1", 0.0, 0.0), (0.1, True, 0.0)):
        with pytest.raises(OptionError, match="cremi_score"):
            cremi_score(*bad)


def _cremi_toolkit(true, pred):
    """CREMI toolkit's formulas (cremi/cremi_python evaluation/rand.py, voi.py) on dense arrays, by hand.

    Truth label 0 ignored; ARAND with n_ij^2 pair counts, predicted 0 left out of the sums and
    c / n added to the prediction's and the joint sums; VOI in bits, nothing ignored in the prediction.
    """
    t, p = true.ravel(), pred.ravel()
    keep = t != 0
    t, p = t[keep], p[keep]
    n = t.size
    joint = np.zeros((t.max() + 1, p.max() + 1))
    np.add.at(joint, (t, p), 1)
    c = joint[:, 0].sum()
    a, b = joint.sum(1), joint[:, 1:].sum(0)
    sum_a, sum_b, sum_ab = (a**2).sum(), (b**2).sum() + c / n, (joint[:, 1:] ** 2).sum() + c / n
    precision, recall = sum_ab / sum_b, sum_ab / sum_a
    arand = 1 - 2 * precision * recall / (precision + recall)
    pxy = joint / n
    px, py = pxy.sum(1), pxy.sum(0)  # truth, prediction
    nz = pxy > 0
    h_p_given_t = -(pxy[nz] * np.log2(pxy[nz] / np.broadcast_to(px[:, None], pxy.shape)[nz])).sum()
    h_t_given_p = -(pxy[nz] * np.log2(pxy[nz] / np.broadcast_to(py[None, :], pxy.shape)[nz])).sum()
    return arand, h_p_given_t, h_t_given_p, math.sqrt(arand * (h_p_given_t + h_t_given_p))


def test_cremi_matches_the_toolkits_formulas_and_skimage_voi():
    rng = np.random.default_rng(11)
    for k in range(8):
        true = rng.integers(0, 6, (3, 12, 14))
        pred = rng.integers(0 if k % 2 else 1, 5, (3, 12, 14))  # with and without predicted 0
        got = Contingency().add(true, pred).cremi()
        arand, split, merge, score = _cremi_toolkit(true, pred)
        assert got == pytest.approx((score, arand, split, merge), abs=1e-12)
        assert (split, merge) == pytest.approx(
            tuple(variation_of_information(true, pred, ignore_labels=(0,)))
        )
    # identical partitions score 0; the hand case of the evaluate docs: sqrt(1/3 * 1 bit)
    same = Contingency().add(true, true).cremi()
    assert same.score == pytest.approx(0, abs=1e-9)
    hand = Contingency().add(np.array([[1, 1, 2, 2], [1, 1, 3, 3]]), np.array([[5, 5, 7, 7], [6, 6, 7, 7]]))
    assert hand.cremi() == pytest.approx((math.sqrt(1 / 3), 1 / 3, 0.5, 0.5))
    assert hand.adapted_rand().error == pytest.approx(0.5)  # pairs of distinct pixels: 8 of 16


# ============================================================================ per-object errors
def test_objects_name_the_split_and_the_merge_first():
    true = np.array([[1, 1, 2, 2], [1, 1, 3, 3]])
    pred = np.array([[5, 5, 7, 7], [6, 6, 7, 7]])
    table = Contingency().add(true, pred)
    splits, merges = table.objects("true"), table.objects("pred")
    assert splits.labels.tolist() == [1, 2, 3] and splits.pieces.tolist() == [2, 1, 1]
    assert splits.voi.tolist() == pytest.approx([0.5, 0, 0]) and splits.largest_label[0] == 5
    assert merges.labels.tolist() == [7, 5, 6] and merges.pieces.tolist() == [2, 1, 1]
    assert merges.sizes[0] == 4 and merges.largest[0] == 2 and merges.largest_label[0] == 2
    with pytest.raises(OptionError, match="side"):
        table.objects("both")


def test_objects_agree_with_brute_force_and_sum_to_the_voi():
    rng = np.random.default_rng(5)
    true = rng.integers(0, 9, (4, 10, 10))
    pred = rng.integers(0, 7, (4, 10, 10))
    table = Contingency().add(true, pred)
    voi = table.voi()
    n = np.count_nonzero(true)
    for side, own, other, total in (("true", true, pred, voi.split), ("pred", pred, true, voi.merge)):
        errors = table.objects(side)
        assert errors.voi.sum() == pytest.approx(total, abs=1e-12)
        assert np.all(np.diff(errors.voi) <= 1e-15)  # worst first
        for label, size, pieces, largest, partner, v in zip(*errors, strict=True):
            here = (own == label) & (true != 0)
            others, counts = np.unique(other[here], return_counts=True)
            assert (size, pieces, largest) == (here.sum(), others.size, counts.max())
            assert partner == others[np.argmax(counts)]
            assert v == pytest.approx((counts * np.log2(size / counts)).sum() / n, abs=1e-12)


def test_label_boxes_and_their_accumulation_match_brute_force():
    from volseg.core.metrics import BoundingBoxes, label_boxes

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 6, (5, 9, 11)).astype(np.uint32)
    labels[labels == 4] = 0  # a label that is absent
    huge = np.array([0, 2**64 - 1, 2**40, 3, 99, 12], np.uint64)  # the compacting path
    for ids_map in (np.arange(6, dtype=np.uint64), huge):
        volume = ids_map[labels]
        ids, lo, hi = label_boxes(volume, origin=(100, 0, 7))
        assert ids.tolist() == sorted(set(volume[volume != 0].tolist()))
        for label, a, b in zip(ids, lo, hi, strict=True):
            where = np.nonzero(volume == label)
            assert a.tolist() == [w.min() + o for w, o in zip(where, (100, 0, 7), strict=True)]
            assert b.tolist() == [w.max() + 1 + o for w, o in zip(where, (100, 0, 7), strict=True)]
        streamed = BoundingBoxes(3)
        for z in range(volume.shape[0]):  # section by section, as evaluate adds them
            streamed.add(volume[z : z + 1], origin=(100 + z, 0, 7))
        got_lo, got_hi = streamed.lookup(np.r_[ids, np.uint64(4)])
        np.testing.assert_array_equal(got_lo[:-1], lo)
        np.testing.assert_array_equal(got_hi[:-1], hi)
        assert got_lo[-1].tolist() == [-1, -1, -1] and len(streamed) == ids.size
    empty = label_boxes(np.zeros((2, 3), np.uint8))
    assert empty[0].size == 0 and empty[1].shape == (0, 2)
    with pytest.raises(OptionError, match="origin"):
        label_boxes(np.ones((2, 2), np.uint8), origin=(1, 2, 3))
