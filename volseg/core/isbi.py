"""The ISBI 2012 evaluation of a membrane probability map: V_rand, V_info and pixel error.

Per 2-D section, cells are the 4-connected components of the non-membrane pixels; the predicted
boundaries are thinned to 1 px (:func:`thin_boundaries`); V_rand and V_info are taken at each
threshold from the contingency tables of :mod:`volseg.core.metrics`, and the best threshold over the
stack is reported, as the challenge's Fiji script does. Pure functions of arrays, no I/O; see
``docs/metrics.md`` for the definitions and how they match the script.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from volseg.core.metrics import ConfusionCounts, TableSums, as_bool, pair_counts
from volseg.core.resources import available_cores
from volseg.errors import InputError, OptionError

__all__ = ["SCRIPT_THRESHOLDS", "isbi_scores", "thin_boundaries"]


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

    def one(z: int) -> tuple[list[TableSums], list[ConfusionCounts]]:
        return _section_sums(np.asarray(prob[z]), np.asarray(truth[z]), ths, thin)

    # sections in threads (labelling and the distance transform release the GIL: 1.97x on 2 cores);
    # each thread reads its own section, so at most one section per core is in memory
    workers = min(available_cores(), prob.shape[0])
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            per_section = list(pool.map(one, range(prob.shape[0])))
    else:
        per_section = [one(z) for z in range(prob.shape[0])]
    sums = [rand for rand, _ in per_section]
    pixels = [sum((counts[k] for _, counts in per_section), ConfusionCounts()) for k in range(len(ths))]
    return {**_isbi_report(sums, ths, thin), **_pixel_report(pixels, ths)}


def _section_sums(
    prob: np.ndarray, truth: np.ndarray, thresholds: Sequence[float], thin: bool
) -> tuple[list[TableSums], list[ConfusionCounts]]:
    """Rand / information sums and cell-pixel counts of one section at each threshold."""
    # float64 copy of the float32 image: a Python-float threshold would otherwise be rounded
    # to float32 (NEP 50), turning the script's 0.9999999999999999 into 1.0
    cell_prob = _cell_probability(prob).astype(np.float64)
    true_cell = ~as_bool(truth, "truth_binary")
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
        out.append(TableSums.from_table(*pair_counts(true_fg, pred_cells[counted]), "singletons"))
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


def _isbi_report(sums: list[list[TableSums]], thresholds: Sequence[float], thin: bool) -> dict[str, Any]:
    n_t = len(thresholds)
    totals = [sum((section[k] for section in sums), TableSums()) for k in range(n_t)]
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


def _as_sections(a: Any, name: str) -> Any:
    if not hasattr(a, "shape") or not hasattr(a, "__getitem__"):
        a = np.asarray(a)
    if len(a.shape) == 2:
        return np.asarray(a)[None]
    if len(a.shape) != 3:
        raise InputError(f"{name} has shape {tuple(a.shape)}: give one section (Y, X) or a stack (Z, Y, X)")
    return a
