"""Segmentation metrics: pixel error, Dice/IoU, adapted Rand, VOI, V_rand/V_info of label images.

Pure functions of arrays, no I/O. Definitions, sources and how the numbers relate to the
Fiji script and to scikit-image are in ``docs/metrics.md``.

Two groups here, and the ISBI 2012 protocol built on them in :mod:`volseg.core.isbi`:

- **Pixel metrics** of a thresholded probability map against a binary truth
  (:class:`ConfusionCounts`, :func:`pixel_scores`): pixel error, Dice, IoU, precision,
  recall. Counts add, so they stream over batches or blocks.
- **Instance metrics** from a sparse contingency table of (true label, predicted label)
  pixel counts (:class:`Contingency`): adapted Rand error and variation of information
  as in ``skimage.metrics``, the CREMI score (:func:`cremi_score`, :meth:`Contingency.cremi`),
  the foreground-restricted V_rand and V_info of Arganda-Carreras et al. (2015), and
  per-object split and merge errors (:meth:`Contingency.objects`). The table accumulates
  block by block and merges, so a huge volume is scored with memory bounded by the number
  of distinct label pairs. :class:`BoundingBoxes` accumulates where each label lies the
  same way, so that the worst objects can be found.

Argument order follows the callers: the functional API takes the prediction first
(``rand_info_scores(pred, true)``, ``pixel_scores(pred, truth)``); :meth:`Contingency.add` takes
the truth first, like ``skimage.metrics.contingency_table``. The truth decides which pixels are
counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple

import numpy as np
import scipy.ndimage as ndi
from scipy import sparse

from volseg.errors import InputError, OptionError

__all__ = [
    "AdaptedRand",
    "BoundingBoxes",
    "ConfusionCounts",
    "Contingency",
    "CremiScore",
    "ObjectErrors",
    "TableSums",
    "VariationOfInformation",
    "as_bool",
    "cremi_score",
    "label_boxes",
    "pair_counts",
    "pixel_scores",
    "rand_info_scores",
]

PredBackground = Literal["singletons", "label"]
_LN2 = math.log(2.0)


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
        t = as_bool(truth, "truth")
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


class CremiScore(NamedTuple):
    """The CREMI challenge's neuron score and its parts, as its toolkit computes them.

    ``score = sqrt(adapted_rand_error * (voi_split + voi_merge))`` (:func:`cremi_score`), with
    the VOI in bits and the toolkit's adapted Rand error (pairs counted with ``n_ij^2``;
    see :meth:`Contingency.cremi`). Lower is better; 0 is perfect.
    """

    score: float
    adapted_rand_error: float
    voi_split: float
    voi_merge: float


class ObjectErrors(NamedTuple):
    """Per-object errors of one side of a contingency table, worst first.

    For the truth side (splits): each true object, how many predicted segments cover it, and
    its share of VOI split. For the prediction side (merges): each predicted segment, how many
    true objects it covers, and its share of VOI merge. All arrays have one entry per object.

    Attributes
    ----------
    labels
        The objects' labels (uint64).
    sizes
        Counted voxels of each object (int64).
    pieces
        Number of labels of the other side that overlap it (1: no error).
    largest
        Voxels in its largest overlap (int64).
    largest_label
        The label of the other side with that overlap (uint64; the smaller label on ties).
    voi
        Its contribution in bits to VOI split (truth side) or merge (prediction side):
        ``sum_i n_ij log2(size_j / n_ij) / N``; the contributions sum to the VOI part.
    """

    labels: np.ndarray
    sizes: np.ndarray
    pieces: np.ndarray
    largest: np.ndarray
    largest_label: np.ndarray
    voi: np.ndarray

    def take(self, index: Any) -> ObjectErrors:
        """The objects at ``index`` (a slice, mask or integer array), as another :class:`ObjectErrors`."""
        return ObjectErrors(*(a[index] for a in self))


def cremi_score(arand: float, voi_split: float, voi_merge: float) -> float:
    """The CREMI score ``sqrt(arand * (voi_split + voi_merge))``: the geometric mean of ARAND and VOI.

    Parameters
    ----------
    arand
        Adapted Rand error in ``[0, 1]``.
    voi_split, voi_merge
        The two parts of the variation of information, in bits (the CREMI toolkit's log base).

    Returns
    -------
    float
        0 for a perfect segmentation, larger is worse; NaN when any part is NaN.

    Examples
    --------
    >>> cremi_score(0.5, 0.0, 1.0)
    0.7071067811865476
    """
    values = {"arand": arand, "voi_split": voi_split, "voi_merge": voi_merge}
    for name, value in values.items():
        if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool):
            raise OptionError(f"cremi_score: {name}={value!r} is not a number; pass the score as a float")
        if value < 0:
            raise OptionError(f"cremi_score: {name}={value} is negative; pass an error (>= 0), not a score")
    if any(math.isnan(v) for v in values.values()):
        return math.nan
    return math.sqrt(float(arand) * (float(voi_split) + float(voi_merge)))


@dataclass(frozen=True)
class TableSums:
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

    def __add__(self, other: TableSums) -> TableSums:
        return TableSums(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @classmethod
    def from_table(
        cls, true_ids: np.ndarray, pred_ids: np.ndarray, counts: np.ndarray, pred_background: PredBackground
    ) -> TableSums:
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
        self._append(pair_counts(t, p))
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
    def _sums(self, pred_background: PredBackground) -> TableSums:
        if pred_background not in ("singletons", "label"):
            raise OptionError(f"pred_background={pred_background!r}: use 'singletons' (Fiji) or 'label'")
        return TableSums.from_table(*self.table, pred_background)

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

    def cremi(self) -> CremiScore:
        """The CREMI score with the CREMI toolkit's adapted Rand error and VOI in bits.

        The toolkit (cremi/cremi_python, ``cremi/evaluation/rand.py``) counts pairs as
        ``sum n_ij^2`` (a pixel with itself included, not ``n_ij (n_ij - 1)`` as
        :meth:`adapted_rand` and scikit-image do), leaves predicted label 0 out of the sums and
        adds ``c / N`` to both the prediction's and the joint sum, ``c`` being the counted pixels
        that the prediction labels 0. Its VOI (``voi.py``, log2) is :meth:`voi`. NaN when empty.
        """
        voi = self.voi()
        t, p, c = self.table
        n = float(c.sum())
        if n == 0:
            return CremiScore(math.nan, math.nan, math.nan, math.nan)
        c = c.astype(np.float64)
        true_sizes = _group_sums(t, c)
        fg = p != 0
        zero_term = float(c[~fg].sum()) / n
        pred_sizes = _group_sums(p[fg], c[fg])
        sum_true = float(true_sizes @ true_sizes)
        sum_pred = float(pred_sizes @ pred_sizes) + zero_term
        sum_joint = float(c[fg] @ c[fg]) + zero_term
        precision, recall = sum_joint / sum_pred, sum_joint / sum_true
        error = 1.0 - 2.0 * precision * recall / (precision + recall) if precision + recall else 1.0
        error = min(1.0, max(0.0, error))
        return CremiScore(cremi_score(error, *voi), error, voi.split, voi.merge)

    def objects(self, side: Literal["true", "pred"] = "true") -> ObjectErrors:
        """Per-object errors, worst first: split true objects (``"true"``) or merging segments (``"pred"``).

        Sorted by VOI contribution (largest first), then by size (largest first), then by label.
        Predicted label 0 is a segment like any other, as in :meth:`voi`.

        Examples
        --------
        >>> t = Contingency().add(np.array([[1, 1, 2, 2]]), np.array([[5, 6, 7, 7]]))
        >>> t.objects("true").labels.tolist(), t.objects("true").pieces.tolist()
        ([1, 2], [2, 1])
        """
        if side not in ("true", "pred"):
            raise OptionError(f"Contingency.objects: side={side!r}; use 'true' (splits) or 'pred' (merges)")
        t, p, c = self.table
        own, other = (t, p) if side == "true" else (p, t)
        if side == "pred":  # group by the predicted label: sort the pairs by it
            order = np.lexsort((other, own))
            own, other, c = own[order], other[order], c[order]
        if own.size == 0:
            empty_u, empty_i = np.zeros(0, np.uint64), np.zeros(0, np.int64)
            return ObjectErrors(empty_u, empty_i, empty_i, empty_i, empty_u, np.zeros(0))
        starts = np.flatnonzero(np.r_[True, own[1:] != own[:-1]])
        sizes = np.add.reduceat(c, starts)
        pieces = np.diff(np.r_[starts, own.size])
        group = np.repeat(np.arange(starts.size), pieces)
        # largest overlap per object and its label (first maximum: the smaller label on ties)
        rank = np.lexsort((other, -c, group))
        first = rank[starts]
        cf = c.astype(np.float64)
        contribution = cf * np.log2(sizes[group] / cf)
        voi = np.add.reduceat(contribution, starts) / float(c.sum())
        result = ObjectErrors(own[starts], sizes, pieces, c[first], other[first], np.maximum(voi, 0.0))
        worst = np.lexsort((result.labels, -result.sizes, -result.voi))
        return result.take(worst)


def rand_info_scores(
    pred_labels: Any, true_labels: Any, *, pred_background: PredBackground = "singletons"
) -> tuple[float, float]:
    """Foreground-restricted ``(V_rand, V_info)`` of two label images of the same shape.

    Pixels whose true label is 0 are not counted. Predicted label 0 (boundary) is handled
    as in the Fiji script: each such pixel is its own cluster (``pred_background``).
    For the ISBI protocol on probability maps use :func:`volseg.core.isbi.isbi_scores`.

    Examples
    --------
    >>> true = np.array([[1, 1, 0, 2, 2]])
    >>> rand_info_scores(true, true)
    (1.0, 1.0)
    """
    table = Contingency(ignore_labels=(0,)).add(true_labels, pred_labels)
    return table.v_rand(pred_background), table.v_info(pred_background)


# ============================================================================ where labels lie
def label_boxes(
    labels: Any, origin: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bounding boxes of the nonzero labels of one block.

    Parameters
    ----------
    labels
        Integer label block, any number of dimensions; 0 is background.
    origin
        Where the block starts (added to the boxes); default: the origin.

    Returns
    -------
    tuple of numpy.ndarray
        ``(ids, lo, hi)``: the sorted labels present (uint64, shape ``(K,)``) and their boxes,
        ``[lo, hi)`` per axis (int64, shape ``(K, ndim)``).

    Examples
    --------
    >>> ids, lo, hi = label_boxes(np.array([[0, 3, 3], [5, 0, 3]]), origin=(10, 0))
    >>> ids.tolist(), lo.tolist(), hi.tolist()
    ([3, 5], [[10, 1], [11, 0]], [[12, 3], [12, 1]])
    """
    a = _as_labels(labels, "labels")
    start = np.zeros(a.ndim, np.int64) if origin is None else np.asarray(origin, np.int64)
    if start.shape != (a.ndim,):
        raise OptionError(f"label_boxes: origin {tuple(start)} has not one entry per axis of {a.shape}")
    if a.size == 0 or not a.any():
        return np.zeros(0, np.uint64), np.zeros((0, a.ndim), np.int64), np.zeros((0, a.ndim), np.int64)
    top = int(a.max())
    if top <= max(4 * a.size, 1 << 16):  # small ids: one O(N) pass of find_objects over the ids
        ids, dense = None, a.astype(np.intp, copy=False)
    else:  # sparse huge ids: compact them first
        ids, inverse = np.unique(a, return_inverse=True)
        dense = inverse.reshape(a.shape).astype(np.intp) + (ids[0] != 0)
        ids = ids[ids != 0]
    found = ndi.find_objects(dense)
    present = [i for i, box in enumerate(found) if box is not None]
    lo = np.array([[sl.start for sl in found[i]] for i in present], np.int64).reshape(-1, a.ndim)
    hi = np.array([[sl.stop for sl in found[i]] for i in present], np.int64).reshape(-1, a.ndim)
    labels_out = np.asarray(present, np.uint64) + np.uint64(1) if ids is None else ids.astype(np.uint64)
    return labels_out, lo + start, hi + start


class BoundingBoxes:
    """Bounding boxes of labels, accumulated block by block (:meth:`add`) and across workers (:meth:`merge`).

    A label seen in several blocks gets the union of its boxes, so a 3-D object's box spans
    every section it is in. Memory is bounded by the number of distinct labels.

    Examples
    --------
    >>> boxes = BoundingBoxes(2)
    >>> _ = boxes.add(np.array([[7, 0]]), origin=(0, 0)).add(np.array([[0, 7]]), origin=(4, 0))
    >>> lo, hi = boxes.lookup(np.array([7], np.uint64))
    >>> lo.tolist(), hi.tolist()
    ([[0, 0]], [[5, 2]])
    """

    def __init__(self, ndim: int = 3) -> None:
        self.ndim = int(ndim)
        self._ids = np.zeros(0, np.uint64)
        self._lo = np.zeros((0, self.ndim), np.int64)
        self._hi = np.zeros((0, self.ndim), np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_len = 0

    def __len__(self) -> int:
        self._compact()
        return int(self._ids.size)

    def add(self, labels: Any, origin: Sequence[int] | None = None) -> BoundingBoxes:
        """Add the nonzero labels of one block lying at ``origin``; returns ``self``."""
        return self._append(label_boxes(labels, origin))

    def extend(self, ids: Any, lo: Any, hi: Any) -> BoundingBoxes:
        """Add boxes ``[lo, hi)`` (``(K, ndim)``) of labels ``ids`` (``(K,)``); returns ``self``."""
        ids = np.asarray(ids, np.uint64).ravel()
        lo, hi = (
            np.asarray(lo, np.int64).reshape(-1, self.ndim),
            np.asarray(hi, np.int64).reshape(-1, self.ndim),
        )
        if not ids.size == lo.shape[0] == hi.shape[0]:
            raise OptionError(f"BoundingBoxes.extend: {ids.size} ids but {lo.shape[0]} / {hi.shape[0]} boxes")
        return self._append((ids, lo, hi))

    def merge(self, other: BoundingBoxes) -> BoundingBoxes:
        """Add another accumulator's boxes into this one; returns ``self``."""
        if other.ndim != self.ndim:
            raise OptionError(f"BoundingBoxes.merge: ndim differs ({self.ndim} vs {other.ndim})")
        other._compact()
        return self._append((other._ids, other._lo, other._hi))

    def _append(self, boxes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> BoundingBoxes:
        if boxes[1].shape[1:] != (self.ndim,):
            raise OptionError(
                f"BoundingBoxes: boxes of {boxes[1].shape[1:]} axes added to a {self.ndim}-D one"
            )
        self._pending.append(boxes)
        self._pending_len += boxes[0].size
        if self._pending_len > max(self._ids.size, 1 << 18):
            self._compact()
        return self

    def _compact(self) -> None:
        if not self._pending:
            return
        parts = [(self._ids, self._lo, self._hi), *self._pending]
        ids = np.concatenate([q[0] for q in parts])
        lo = np.concatenate([q[1] for q in parts])
        hi = np.concatenate([q[2] for q in parts])
        order = np.argsort(ids, kind="stable")
        ids, lo, hi = ids[order], lo[order], hi[order]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if ids.size else np.zeros(0, np.intp)
        if ids.size:
            self._ids = ids[starts]
            self._lo = np.minimum.reduceat(lo, starts, axis=0)
            self._hi = np.maximum.reduceat(hi, starts, axis=0)
        self._pending, self._pending_len = [], 0

    def lookup(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """The boxes ``(lo, hi)`` of ``ids`` (shape ``(K, ndim)`` each); -1 where a label was never seen."""
        self._compact()
        want = np.asarray(ids, np.uint64).ravel()
        at = np.searchsorted(self._ids, want)
        found = at < self._ids.size
        found[found] = self._ids[at[found]] == want[found]
        lo = np.full((want.size, self.ndim), -1, np.int64)
        hi = np.full((want.size, self.ndim), -1, np.int64)
        lo[found], hi[found] = self._lo[at[found]], self._hi[at[found]]
        return lo, hi


# ---------------------------------------------------------------------------- table helpers
def _empty_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64)


def pair_counts(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


# ============================================================================ input checks
def _as_labels(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        return a.view(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name} has dtype {a.dtype}: label images must hold integers (cast with .astype)")
    if np.issubdtype(a.dtype, np.signedinteger) and a.size and a.min() < 0:
        raise InputError(f"{name} holds negative labels (min {a.min()}): labels must be >= 0")
    return a


def as_bool(a: Any, name: str) -> np.ndarray:
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
