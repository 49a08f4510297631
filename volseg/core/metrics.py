"""Segmentation metrics: pixel error, Dice/IoU, adapted Rand, VOI, V_rand/V_info of label images.

Pure functions of arrays, no I/O. Definitions, sources and how the numbers relate to the
Fiji script and to scikit-image are in ``docs/metrics.md``.

Two groups here, and the ISBI 2012 protocol built on them in :mod:`volseg.core.isbi`:

- **Pixel metrics** of a thresholded probability map against a binary truth
  (:class:`ConfusionCounts`, :func:`pixel_scores`): pixel error, Dice, IoU, precision,
  recall. Counts add, so they stream over batches or blocks.
- **Instance metrics** from a sparse contingency table of (true label, predicted label)
  pixel counts (:class:`Contingency`): adapted Rand error and variation of information
  as in ``skimage.metrics``, and the foreground-restricted V_rand and V_info of
  Arganda-Carreras et al. (2015). The table accumulates block by block and merges, so a
  huge volume is scored with memory bounded by the number of distinct label pairs.

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
from scipy import sparse

from volseg.errors import InputError, OptionError

__all__ = [
    "AdaptedRand",
    "ConfusionCounts",
    "Contingency",
    "TableSums",
    "VariationOfInformation",
    "as_bool",
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
