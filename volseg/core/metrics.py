"""Segmentation metrics: pixel error, Dice/IoU, ISBI 2012 V_rand/V_info, adapted Rand, VOI.

Pure functions of arrays, no I/O. Definitions, sources and how the numbers relate to the
Fiji script and to scikit-image are in ``docs/metrics.md``.

Three groups:

- **Pixel metrics** of a thresholded probability map against a binary truth
  (:class:`ConfusionCounts`, :func:`pixel_scores`): pixel error, Dice, IoU, precision,
  recall. Counts add, so they stream over batches or blocks.
- **Instance metrics** from a sparse contingency table of (true label, predicted label)
  pixel counts (:class:`Contingency`): adapted Rand error and variation of information
  as in ``skimage.metrics``, and the foreground-restricted V_rand and V_info of
  Arganda-Carreras et al. (2015). The table accumulates block by block and merges, so a
  huge volume is scored with memory bounded by the number of distinct label pairs.
- **ISBI 2012 evaluation** (:func:`isbi_scores`): per 2-D section, cells are the
  4-connected components of the non-membrane pixels; the predicted boundaries are thinned
  to 1 px; V_rand and V_info are taken at each threshold and the best is reported.

Argument order follows the callers: the functional API takes the prediction first
(``isbi_scores(prob_membrane, truth_binary)``, ``rand_info_scores(pred, true)``,
``pixel_scores(pred, truth)``); :meth:`Contingency.add` takes the truth first, like
``skimage.metrics.contingency_table``. The truth decides which pixels are counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse

from volseg.errors import InputError, OptionError

__all__ = [
    "SCRIPT_THRESHOLDS",
    "AdaptedRand",
    "ConfusionCounts",
    "Contingency",
    "VariationOfInformation",
    "isbi_scores",
    "pixel_scores",
    "rand_info_scores",
    "thin_boundaries",
]

PredBackground = Literal["singletons", "label"]
_LN2 = math.log(2.0)


def _script_thresholds() -> tuple[float, ...]:
    # The Fiji script loops `for (th = 0.0; th <= 1.0; th += 0.1)` in doubles: the last
    # value is 0.9999999999999999, so pixels whose cell probability is exactly 1 still
    # count as cells there. Reproduce the same eleven doubles.
    out, th = [], 0.0
    while th <= 1.0:
        out.append(th)
        th += 0.1
    return tuple(out)


SCRIPT_THRESHOLDS: tuple[float, ...] = _script_thresholds()
"""The eleven thresholds of the Fiji script, ``0.0, 0.1, ..., 0.9999999999999999``."""


# ============================================================================ pixel metrics
@dataclass(frozen=True)
class ConfusionCounts:
    """Pixel counts of a binary prediction against a binary truth; they add.

    ``tp``: predicted and true positives, ``fp``: predicted positive but negative in the
    truth, ``fn``: missed positives, ``tn``: agreed negatives. The positive class is
    whatever ``True`` means in the truth (membrane, or cell).
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @classmethod
    def from_arrays(cls, pred: Any, truth: Any, threshold: float = 0.5) -> ConfusionCounts:
        """Count a prediction against a truth of the same shape.

        Parameters
        ----------
        pred
            Boolean prediction, or probabilities in ``[0, 1]`` (positive where ``> threshold``).
        truth
            Binary truth; any nonzero value is positive.
        threshold
            Applied to floating-point ``pred`` only.
        """
        p = _binarize(pred, threshold, "pred")
        t = _as_bool(truth, "truth")
        _check_same_shape(p, t, "pred", "truth")
        tp = int(np.count_nonzero(p & t))
        n_pred, n_true = int(np.count_nonzero(p)), int(np.count_nonzero(t))
        fp, fn = n_pred - tp, n_true - tp
        return cls(tp=tp, fp=fp, fn=fn, tn=int(p.size) - tp - fp - fn)

    def __add__(self, other: ConfusionCounts) -> ConfusionCounts:
        return ConfusionCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def pixel_error(self) -> float:
        """``(fp + fn) / total``: 1 - accuracy; NaN when nothing was counted."""
        return (self.fp + self.fn) / self.total if self.total else math.nan

    @property
    def dice(self) -> float:
        """``2 tp / (2 tp + fp + fn)``; 1.0 when both are empty."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def iou(self) -> float:
        """``tp / (tp + fp + fn)`` (Jaccard); 1.0 when both are empty."""
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def precision(self) -> float:
        """``tp / (tp + fp)``; 1.0 when nothing is predicted positive."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """``tp / (tp + fn)``; 1.0 when the truth has no positives."""
        return _ratio(self.tp, self.tp + self.fn)

    def scores(self) -> dict[str, float]:
        """``pixel_error``, ``dice``, ``iou``, ``precision``, ``recall`` as floats."""
        names = ("pixel_error", "dice", "iou", "precision", "recall")
        return {name: float(getattr(self, name)) for name in names}


def pixel_scores(pred: Any, truth: Any, threshold: float = 0.5) -> dict[str, float]:
    """Pixel error, Dice, IoU, precision and recall of the positive class.

    Parameters
    ----------
    pred
        Boolean prediction, or probabilities in ``[0, 1]``, any shape.
    truth
        Binary truth of the same shape; nonzero is positive.
    threshold
        A probability counts as positive when ``> threshold``.

    Examples
    --------
    >>> pixel_scores(np.array([0.9, 0.2, 0.7, 0.1]), np.array([1, 0, 0, 0]))["dice"]
    0.6666666666666666
    """
    return ConfusionCounts.from_arrays(pred, truth, threshold).scores()


def _ratio(num: float, den: float) -> float:
    return num / den if den else 1.0


# ============================================================================ contingency table
class AdaptedRand(NamedTuple):
    """Adapted Rand error (SNEMI3D / ``skimage.metrics.adapted_rand_error``).

    ``precision``: pairs of pixels together in both / pairs together in the prediction
    (low when the prediction merges); ``recall``: pairs together in both / pairs together
    in the truth (low when it splits). Note that scikit-image returns these two the other
    way round (scikit-image issue 6485); ``error`` is the same.
    """

    error: float
    precision: float
    recall: float


class VariationOfInformation(NamedTuple):
    """Conditional entropies in bits, as ``skimage.metrics.variation_of_information``.

    ``split`` = H(pred | true) (over-segmentation), ``merge`` = H(true | pred)
    (under-segmentation); VOI = split + merge.
    """

    split: float
    merge: float


@dataclass(frozen=True)
class _Sums:
    """Sufficient statistics of a contingency table, in pixel counts.

    ``sq_*`` are sums of squared cluster sizes, ``xlx_*`` sums of ``c ln c``. They add
    over tables whose label sets are disjoint (different sections of a 2-D evaluation).
    """

    n: float = 0.0
    sq_joint: float = 0.0
    sq_true: float = 0.0
    sq_pred: float = 0.0
    xlx_joint: float = 0.0
    xlx_true: float = 0.0
    xlx_pred: float = 0.0

    def __add__(self, other: _Sums) -> _Sums:
        return _Sums(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @classmethod
    def from_table(
        cls, true_ids: np.ndarray, pred_ids: np.ndarray, counts: np.ndarray, pred_background: PredBackground
    ) -> _Sums:
        c = counts.astype(np.float64)
        true_sizes = _group_sums(true_ids, c)
        singletons = 0.0
        if pred_background == "singletons":
            # Fiji: every pixel predicted as background is a cluster of its own, so it adds
            # 1^2 to the sums of squares and 1 ln 1 = 0 to the entropy sums.
            bg = pred_ids == 0
            singletons = float(c[bg].sum())
            c, pred_ids = c[~bg], pred_ids[~bg]
        pred_sizes = _group_sums(pred_ids, c)
        return cls(
            n=float(true_sizes.sum()),
            sq_joint=float(c @ c) + singletons,
            sq_true=float(true_sizes @ true_sizes),
            sq_pred=float(pred_sizes @ pred_sizes) + singletons,
            xlx_joint=_xlogx(c),
            xlx_true=_xlogx(true_sizes),
            xlx_pred=_xlogx(pred_sizes),
        )

    def v_rand(self) -> float:
        """``2 sum p_ij^2 / (sum s_i^2 + sum t_j^2)``; NaN when nothing was counted."""
        if self.n == 0:
            return math.nan
        return min(1.0, 2.0 * self.sq_joint / (self.sq_true + self.sq_pred))

    def v_info(self) -> float:
        """``2 I(S;T) / (H(S) + H(T))``; 1.0 when both are a single cluster."""
        if self.n == 0:
            return math.nan
        log_n = math.log(self.n)
        h_true = log_n - self.xlx_true / self.n
        h_pred = log_n - self.xlx_pred / self.n
        mutual = log_n - (self.xlx_true + self.xlx_pred - self.xlx_joint) / self.n
        den = h_true + h_pred
        if den <= 1e-12 * max(log_n, 1.0):
            return 1.0  # both partitions are one cluster, hence identical
        return min(1.0, max(0.0, 2.0 * mutual / den))


def _group_sums(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    if ids.size == 0:
        return np.zeros(0)
    _, inverse = np.unique(ids, return_inverse=True)
    return np.bincount(inverse.ravel(), weights=values)


def _xlogx(x: np.ndarray) -> float:
    x = x[x > 0]
    return float(x @ np.log(x))


class Contingency:
    """Sparse contingency table of (true label, predicted label) pixel counts.

    Accumulates block by block (:meth:`add`) and across workers (:meth:`merge`) with
    memory bounded by the number of distinct label pairs, so a volume of any size is
    scored by streaming its chunks through one accumulator. Labels are non-negative
    integers up to ``2**64 - 1``.

    Parameters
    ----------
    ignore_labels
        True labels whose pixels are not counted at all (default ``(0,)``: the truth's
        background, i.e. foreground restriction). ``()`` counts every pixel, as
        ``skimage.metrics.variation_of_information`` does by default.

    Examples
    --------
    >>> table = Contingency()
    >>> for z in range(2):  # e.g. one block per chunk of a volume
    ...     _ = table.add(np.array([[1, 1, 2, 2]]), np.array([[5, 5, 5, 5]]))
    >>> round(table.v_rand(), 4), [round(x, 4) for x in table.voi()]
    (0.6667, [0.0, 1.0])
    """

    def __init__(self, ignore_labels: Sequence[int] = (0,)) -> None:
        self.ignore_labels = tuple(int(v) for v in ignore_labels)
        self._table = _empty_table()
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_len = 0

    def __repr__(self) -> str:
        return f"Contingency(ignore_labels={self.ignore_labels}, pairs={self.table[0].size}, n={self.n})"

    # ---------------------------------------------------------------- building
    def add(self, true_block: Any, pred_block: Any) -> Contingency:
        """Count the pixels of one block (any shape, both the same); returns ``self``."""
        t = _as_labels(true_block, "true_block")
        p = _as_labels(pred_block, "pred_block")
        _check_same_shape(t, p, "true_block", "pred_block")
        t, p = t.ravel(), p.ravel()
        if self.ignore_labels:
            keep = np.ones(t.shape, bool)
            for label in self.ignore_labels:
                keep &= t != label
            t, p = t[keep], p[keep]
        self._append(_pair_counts(t, p))
        return self

    def merge(self, other: Contingency) -> Contingency:
        """Add another accumulator's counts into this one; returns ``self``."""
        if other.ignore_labels != self.ignore_labels:
            raise OptionError(
                f"Contingency.merge: ignore_labels differ ({self.ignore_labels} vs {other.ignore_labels}); "
                "build both accumulators with the same ignore_labels"
            )
        self._append(other.table)
        return self

    def _append(self, table: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self._pending.append(table)
        self._pending_len += table[0].size
        # compact once the pending pairs outgrow the table, so memory stays ~2x the table
        if self._pending_len > max(self._table[0].size, 1 << 20):
            self._compact()

    def _compact(self) -> None:
        if self._pending:
            parts = [self._table, *self._pending]
            self._table = _reduce_pairs(*(np.concatenate([part[i] for part in parts]) for i in range(3)))
            self._pending, self._pending_len = [], 0

    # ---------------------------------------------------------------- views
    @property
    def table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(true_labels, pred_labels, counts)``: uint64, uint64, int64, sorted, unique pairs."""
        self._compact()
        return self._table

    @property
    def n(self) -> int:
        """Number of counted pixels."""
        return int(self.table[2].sum())

    def to_sparse(self) -> tuple[sparse.coo_array, np.ndarray, np.ndarray]:
        """The table as a ``scipy.sparse.coo_array`` over compacted label indices.

        Returns ``(matrix, true_labels, pred_labels)``; ``matrix[i, j]`` counts the pixels
        labelled ``true_labels[i]`` in the truth and ``pred_labels[j]`` in the prediction.
        ``matrix.tocsr()`` can be passed as ``table=`` to ``skimage.metrics.adapted_rand_error``.
        """
        t, p, c = self.table
        true_labels, rows = np.unique(t, return_inverse=True)
        pred_labels, cols = np.unique(p, return_inverse=True)
        matrix = sparse.coo_array(
            (c, (rows.ravel(), cols.ravel())), shape=(true_labels.size, pred_labels.size)
        )
        return matrix, true_labels, pred_labels

    # ---------------------------------------------------------------- scores
    def _sums(self, pred_background: PredBackground) -> _Sums:
        if pred_background not in ("singletons", "label"):
            raise OptionError(f"pred_background={pred_background!r}: use 'singletons' (Fiji) or 'label'")
        return _Sums.from_table(*self.table, pred_background)

    def v_rand(self, pred_background: PredBackground = "singletons") -> float:
        """Foreground-restricted Rand score ``V_rand = 2 sum p_ij^2 / (sum s_i^2 + sum t_j^2)``.

        ``pred_background="singletons"`` treats every pixel with predicted label 0 as a
        cluster of its own, as the Fiji script does; ``"label"`` treats 0 as one more label.
        NaN when no pixel was counted.
        """
        return self._sums(pred_background).v_rand()

    def v_info(self, pred_background: PredBackground = "singletons") -> float:
        """Information-theoretic score ``V_info = 2 I(S;T) / (H(S) + H(T))``; see :meth:`v_rand`."""
        return self._sums(pred_background).v_info()

    def adapted_rand(self) -> AdaptedRand:
        """Adapted Rand error, precision and recall, counting pairs of distinct pixels.

        Equals ``skimage.metrics.adapted_rand_error(true, pred, ignore_labels=...)[0]``;
        precision and recall are named by their definition (see :class:`AdaptedRand`).
        Predicted label 0 is an ordinary label here, as in scikit-image.
        """
        s = self._sums("label")
        if s.n == 0:
            return AdaptedRand(math.nan, math.nan, math.nan)
        together_both = s.sq_joint - s.n
        together_true = s.sq_true - s.n
        together_pred = s.sq_pred - s.n
        f_score = _ratio(2.0 * together_both, together_true + together_pred)
        return AdaptedRand(
            error=1.0 - f_score,
            precision=_ratio(together_both, together_pred),
            recall=_ratio(together_both, together_true),
        )

    def voi(self) -> VariationOfInformation:
        """Variation of information split and merge parts, in bits (NaN when empty)."""
        s = self._sums("label")
        if s.n == 0:
            return VariationOfInformation(math.nan, math.nan)
        split = (s.xlx_true - s.xlx_joint) / s.n / _LN2
        merge = (s.xlx_pred - s.xlx_joint) / s.n / _LN2
        return VariationOfInformation(split=max(0.0, split), merge=max(0.0, merge))


def rand_info_scores(
    pred_labels: Any, true_labels: Any, *, pred_background: PredBackground = "singletons"
) -> tuple[float, float]:
    """Foreground-restricted ``(V_rand, V_info)`` of two label images of the same shape.

    Pixels whose true label is 0 are not counted. Predicted label 0 (boundary) is handled
    as in the Fiji script: each such pixel is its own cluster (``pred_background``).
    For the ISBI protocol on probability maps use :func:`isbi_scores`.

    Examples
    --------
    >>> true = np.array([[1, 1, 0, 2, 2]])
    >>> rand_info_scores(true, true)
    (1.0, 1.0)
    """
    table = Contingency(ignore_labels=(0,)).add(true_labels, pred_labels)
    return table.v_rand(pred_background), table.v_info(pred_background)


# ---------------------------------------------------------------------------- table helpers
def _empty_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64)


def _pair_counts(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (true, pred) pairs of two flat label arrays with their counts, sorted."""
    if t.size == 0:
        return _empty_table()
    width = int(p.max()) + 1
    n_cells = (int(t.max()) + 1) * width
    # small label ranges: one O(N) bincount, its table no larger than two key arrays
    if n_cells <= max(2 * t.size, 1 << 16):
        counts = np.bincount(t.astype(np.int64) * width + p.astype(np.int64), minlength=n_cells)
        keys = np.flatnonzero(counts)
        return _split_keys(keys, counts[keys], width)
    if n_cells < 1 << 64:  # the pair fits one uint64 key: one sort
        keys = t.astype(np.uint64) * np.uint64(width) + p.astype(np.uint64)
        return _split_keys(*np.unique(keys, return_counts=True), width)
    # sparse huge ids (e.g. uint64 hashes): compact each side first
    true_labels, ti = np.unique(t, return_inverse=True)
    pred_labels, pi = np.unique(p, return_inverse=True)
    keys, counts = np.unique(ti.ravel().astype(np.int64) * pred_labels.size + pi.ravel(), return_counts=True)
    rows, cols = np.divmod(keys, pred_labels.size)
    return true_labels[rows].astype(np.uint64), pred_labels[cols].astype(np.uint64), counts.astype(np.int64)


def _split_keys(keys: np.ndarray, counts: np.ndarray, width: int) -> tuple[np.ndarray, ...]:
    keys = keys.astype(np.uint64)
    w = np.uint64(width)
    return keys // w, keys % w, counts.astype(np.int64)


def _reduce_pairs(t: np.ndarray, p: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum the counts of repeated (true, pred) pairs; the result is sorted by (true, pred)."""
    if t.size == 0:
        return _empty_table()
    order = np.lexsort((p, t))
    t, p, c = t[order], p[order], c[order]
    first = np.ones(t.size, bool)
    first[1:] = (t[1:] != t[:-1]) | (p[1:] != p[:-1])
    starts = np.flatnonzero(first)
    return t[starts], p[starts], np.add.reduceat(c, starts)


# ============================================================================ ISBI 2012 protocol
_FOUR_CONNECTED = ndi.generate_binary_structure(2, 1)


def thin_boundaries(labels: np.ndarray) -> np.ndarray:
    """Thin the background (label 0) between labelled regions to 1-pixel lines.

    Every background pixel joins the region of its nearest region pixel (Euclidean): the
    regions grow into the background until they meet, as in a skeleton by influence
    zones or a watershed of the distance map. Where two grown regions touch (4-/6-connected),
    one pixel of the pair, on the side of the larger label, returns to 0, so a 1-pixel line
    keeps them apart. Background enclosed by a single region (holes, specks, dangling
    boundary pieces) is absorbed.

    Parameters
    ----------
    labels
        Integer label image ``(Y, X)`` (any number of dimensions), 0 = boundary.

    Returns
    -------
    numpy.ndarray
        Labels of the same shape and dtype. Labelled pixels keep their label; a grown
        pixel never touches (4-/6-connected) a pixel of another label. Regions that
        already touched in ``labels`` are left as they are.
    """
    boundary = labels == 0
    if not boundary.any() or boundary.all():
        return labels.copy()
    nearest = ndi.distance_transform_edt(boundary, return_distances=False, return_indices=True)
    grown = labels[tuple(nearest)]
    line = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        lo = tuple(slice(None, -1) if a == axis else slice(None) for a in range(labels.ndim))
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(labels.ndim))
        a, b = grown[lo], grown[hi]
        differ = a != b
        # carve on the larger label's side (a consistent side keeps diagonal lines 1 px
        # thin), but never into a pixel that was a region pixel before growing
        carve_lo = differ & boundary[lo] & ((a > b) | ~boundary[hi])
        line[lo] |= carve_lo
        line[hi] |= differ & ~carve_lo & boundary[hi]
    grown[line] = 0
    return grown


def isbi_scores(
    prob_membrane: Any,
    truth_binary: Any,
    thresholds: Sequence[float] | None = None,
    thin: bool = True,
) -> dict[str, Any]:
    """ISBI 2012 scores V_rand, V_info (thinned) and pixel error, best over thresholds.

    For each 2-D section and threshold ``t``: the true cells are the 4-connected
    components of the non-membrane truth; the predicted cells are the 4-connected
    components of ``1 - prob_membrane > t`` (the script thresholds a cell-probability
    image), with their boundaries thinned to 1 px by :func:`thin_boundaries`; pixels on the
    true membrane are not counted, and pixels on the predicted (thinned) boundary are
    singletons. The overall scores accumulate the contingency tables of all sections
    (cells never span sections) and the best threshold is chosen on them, one for the stack.

    The pixel error is the challenge's: ``1 -`` the best F-score of pixel similarity, with the
    cells (non-membrane truth, ``1 - prob_membrane > t``) as the positive class and the
    counts summed over the stack, as Fiji's ``PixelError.getPixelErrorMaximalFScore`` does.
    It is not the share of misclassified pixels (:class:`ConfusionCounts`' ``pixel_error``):
    on the ISBI 2012 held-out sections (80 % cell pixels) it came out at 0.62 of that share.

    Parameters
    ----------
    prob_membrane
        Membrane probability ``(Y, X)`` or ``(Z, Y, X)``: floats in ``[0, 1]``, or uint8
        ``0..255`` (read as ``value / 255``). Indexed one section at a time, so a Zarr or
        dask array is read lazily.
    truth_binary
        Truth of the same shape, nonzero (True) on the **membrane**. The ISBI label files
        store 255 on cells, so pass ``labels == 0``.
    thresholds
        Thresholds on the cell probability; default :data:`SCRIPT_THRESHOLDS`
        (0.0 to 1.0 in steps of 0.1, as the Fiji script generates them).
    thin
        Thin the predicted boundaries first (the official "after border thinning" scores).

    Returns
    -------
    dict
        JSON-ready: ``v_rand``, ``v_info`` (best overall), ``v_rand_threshold``,
        ``v_info_threshold``, ``thresholds``, ``v_rand_curve``, ``v_info_curve`` (overall,
        per threshold), ``v_info_section_mean`` and its curve and threshold (the mean of the
        per-section V_info, which is how the Fiji code aggregates V_info over a stack),
        ``sections`` (``v_rand`` and ``v_info`` lists of shape ``(Z, T)``), ``thin``,
        ``connectivity``, ``pixel_error_isbi`` (``1 -`` the best cell F-score),
        ``pixel_error_isbi_threshold`` and ``pixel_fscore_curve``.

    Examples
    --------
    >>> truth = np.zeros((8, 8), bool); truth[:, 3:5] = True  # a membrane between two cells
    >>> r = isbi_scores(truth.astype(float), truth)
    >>> r["v_rand"], r["v_info"]
    (1.0, 1.0)
    """
    prob, truth = _as_sections(prob_membrane, "prob_membrane"), _as_sections(truth_binary, "truth_binary")
    if prob.shape != truth.shape:
        raise InputError(f"prob_membrane shape {prob.shape} differs from truth_binary shape {truth.shape}")
    ths = _check_thresholds(thresholds)
    per_section = [
        _section_sums(np.asarray(prob[z]), np.asarray(truth[z]), ths, thin) for z in range(prob.shape[0])
    ]
    sums = [rand for rand, _ in per_section]
    pixels = [sum((counts[k] for _, counts in per_section), ConfusionCounts()) for k in range(len(ths))]
    return {**_isbi_report(sums, ths, thin), **_pixel_report(pixels, ths)}


def _section_sums(
    prob: np.ndarray, truth: np.ndarray, thresholds: Sequence[float], thin: bool
) -> tuple[list[_Sums], list[ConfusionCounts]]:
    """Rand / information sums and cell-pixel counts of one section at each threshold."""
    # float64 copy of the float32 image: a Python-float threshold would otherwise be rounded
    # to float32 (NEP 50), turning the script's 0.9999999999999999 into 1.0
    cell_prob = _cell_probability(prob).astype(np.float64)
    true_cell = ~_as_bool(truth, "truth_binary")
    true_cells = ndi.label(true_cell, _FOUR_CONNECTED)[0]
    counted = true_cells > 0
    true_fg = true_cells[counted]
    out, pixels = [], []
    for t in thresholds:
        pred_cell = cell_prob > t
        # the script's PixelError: cells (label > 0) are the positive class, no thinning
        pixels.append(ConfusionCounts.from_arrays(pred_cell, true_cell))
        pred_cells = ndi.label(pred_cell, _FOUR_CONNECTED)[0]
        if thin:
            pred_cells = thin_boundaries(pred_cells)
        out.append(_Sums.from_table(*_pair_counts(true_fg, pred_cells[counted]), "singletons"))
    return out, pixels


def _pixel_report(pixels: list[ConfusionCounts], thresholds: Sequence[float]) -> dict[str, Any]:
    """The challenge's pixel error: 1 - the best F-score of cell pixels over the thresholds."""
    curve = [c.dice for c in pixels]  # F1 of the cell class = its Dice
    best = _argmax(curve)
    return {
        "pixel_error_isbi": 1.0 - curve[best],
        "pixel_error_isbi_threshold": float(thresholds[best]),
        "pixel_fscore_curve": curve,
    }


def _isbi_report(sums: list[list[_Sums]], thresholds: Sequence[float], thin: bool) -> dict[str, Any]:
    n_t = len(thresholds)
    totals = [sum((section[k] for section in sums), _Sums()) for k in range(n_t)]
    rand_curve = [s.v_rand() for s in totals]
    info_curve = [s.v_info() for s in totals]
    rand_sections = [[s.v_rand() for s in section] for section in sums]
    info_sections = [[s.v_info() for s in section] for section in sums]
    info_mean_curve = [float(np.mean([row[k] for row in info_sections])) for k in range(n_t)]
    best_rand, best_info, best_mean = (_argmax(c) for c in (rand_curve, info_curve, info_mean_curve))
    return {
        "v_rand": rand_curve[best_rand],
        "v_info": info_curve[best_info],
        "v_rand_threshold": float(thresholds[best_rand]),
        "v_info_threshold": float(thresholds[best_info]),
        "v_info_section_mean": info_mean_curve[best_mean],
        "v_info_section_mean_threshold": float(thresholds[best_mean]),
        "thresholds": [float(t) for t in thresholds],
        "v_rand_curve": rand_curve,
        "v_info_curve": info_curve,
        "v_info_section_mean_curve": info_mean_curve,
        "sections": {"v_rand": rand_sections, "v_info": info_sections},
        "thin": bool(thin),
        "connectivity": 4,
    }


def _argmax(values: Sequence[float]) -> int:
    # first maximum, as the script's strict `>` keeps; NaN (nothing counted) never wins
    arr = np.asarray(values, float)
    return int(np.nanargmax(arr)) if np.isfinite(arr).any() else 0


def _cell_probability(prob: np.ndarray) -> np.ndarray:
    """``1 - p`` as the float32 image the Fiji script would threshold."""
    if prob.dtype == np.uint8:
        return ((255.0 - prob) / 255.0).astype(np.float32)
    if prob.dtype == bool:
        return (~prob).astype(np.float32)
    if not np.issubdtype(prob.dtype, np.floating):
        raise InputError(
            f"prob_membrane has dtype {prob.dtype}: give floats in [0, 1] or uint8 0..255 "
            "(divide other integer maps by their scale)"
        )
    lo, hi = (float(prob.min()), float(prob.max())) if prob.size else (0.0, 0.0)
    if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
        raise InputError(f"prob_membrane values span [{lo}, {hi}]: probabilities must lie in [0, 1]")
    return (1.0 - prob.astype(np.float64)).astype(np.float32)


def _check_thresholds(thresholds: Sequence[float] | None) -> tuple[float, ...]:
    if thresholds is None:
        return SCRIPT_THRESHOLDS
    ths = tuple(float(t) for t in np.atleast_1d(np.asarray(thresholds, dtype=float)))
    if not ths or not all(0.0 <= t <= 1.0 for t in ths):
        raise OptionError(
            f"thresholds {list(ths)}: give one or more values in [0, 1], e.g. 0.0, 0.1, ..., 0.9"
        )
    return ths


# ============================================================================ input checks
def _as_sections(a: Any, name: str) -> Any:
    if not hasattr(a, "shape") or not hasattr(a, "__getitem__"):
        a = np.asarray(a)
    if len(a.shape) == 2:
        return np.asarray(a)[None]
    if len(a.shape) != 3:
        raise InputError(f"{name} has shape {tuple(a.shape)}: give one section (Y, X) or a stack (Z, Y, X)")
    return a


def _as_labels(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        return a.view(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name} has dtype {a.dtype}: label images must hold integers (cast with .astype)")
    if np.issubdtype(a.dtype, np.signedinteger) and a.size and a.min() < 0:
        raise InputError(f"{name} holds negative labels (min {a.min()}): labels must be >= 0")
    return a


def _as_bool(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"{name} has dtype {a.dtype}: give a boolean or numeric mask")
    return a != 0


def _binarize(pred: Any, threshold: float, name: str) -> np.ndarray:
    p = np.asarray(pred)
    if p.dtype == bool:
        return p
    if not np.issubdtype(p.dtype, np.floating):
        raise InputError(
            f"{name} has dtype {p.dtype}: give a boolean mask or probabilities in [0, 1] "
            "(divide a uint8 map by 255)"
        )
    return p > threshold


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise InputError(f"{name_a} shape {a.shape} differs from {name_b} shape {b.shape}: give equal shapes")
