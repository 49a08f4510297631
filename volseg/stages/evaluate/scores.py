"""evaluate's scores: pixel and ISBI 2012 scores of a binary prediction, instance scores of labels.

Sections are scored as independent dask tasks; their counts (:class:`volseg.core.metrics.ConfusionCounts`)
and contingency tables (:class:`volseg.core.metrics.Contingency`) add up to the overall scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from volseg.core.isbi import isbi_scores
from volseg.core.metrics import ConfusionCounts, Contingency
from volseg.stages.evaluate.inputs import Placement, Sections, probability
from volseg.stages.evaluate.options import EvaluateOptions, Scores
from volseg.storage.conventions import recorded_kind
from volseg.storage.volumes import Volume

__all__ = ["Part", "binary", "instance"]

_FOUR = ndi.generate_binary_structure(2, 1)


# ----------------------------------------------------------------------- binary
Part = tuple[Scores, list[Scores], dict[str, Any]]
"""What a kind of evaluation gives: the overall scores, one row per section, and its extra fields."""

_ISBI_KEYS = (
    "thresholds",
    "v_rand_curve",
    "v_info_curve",
    "v_info_section_mean",
    "pixel_fscore_curve",
    "thin",
    "connectivity",
)
_ISBI_OVERALL = (
    "v_rand",
    "v_info",
    "v_rand_threshold",
    "v_info_threshold",
    "pixel_error_isbi",
    "pixel_error_isbi_threshold",
)


def _pixel_section(pred: Sections, truth_pos: Sections, i: int, threshold: float) -> ConfusionCounts:
    return ConfusionCounts.from_arrays(pred[i], truth_pos[i], threshold)


def binary(
    pred: Volume,
    truth: Volume,
    place: Placement,
    sections: Sequence[int],
    opts: EvaluateOptions,
    foreground: tuple[int, ...],
    kind: str,
) -> Part:
    import dask

    pz = [z - place.pred_at[0] for z in sections]
    tz = [z - place.truth_at[0] for z in sections]
    pp, tp = place.plane(place.pred_at), place.plane(place.truth_at)
    prob = Sections(pred, pz, probability(pred), pp)
    positive = Sections(truth, tz, lambda a: np.isin(a, foreground), tp)
    counts = dask.compute(
        *[dask.delayed(_pixel_section)(prob, positive, i, opts.threshold) for i in range(len(sections))]
    )
    total = sum(counts, ConfusionCounts())
    overall: Scores = dict(total.scores())
    rows: list[Scores] = [{"section": z, **c.scores()} for z, c in zip(sections, counts, strict=True)]
    extra: dict[str, Any] = {}
    if opts.isbi:
        if kind == "boundary":
            membrane_prob, membrane = prob, positive
        else:  # the model scored objects: a membrane is where it says "not object"
            membrane_prob = Sections(pred, pz, lambda a, f=probability(pred): _not(f(a)), pp)
            membrane = Sections(truth, tz, lambda a: ~np.isin(a, foreground), tp)
        extra["isbi"] = _add_isbi(overall, rows, membrane_prob, membrane)
    overall.update(tp=total.tp, fp=total.fp, fn=total.fn, tn=total.tn)
    return overall, rows, extra


def _add_isbi(overall: Scores, rows: list[Scores], membrane_prob: Sections, membrane: Sections) -> dict:
    """Add the ISBI 2012 scores to ``overall`` and to each row (at the stack's best thresholds).

    Returns the thresholds and the curves over them, for the report's ``isbi`` field.
    """
    isbi = isbi_scores(membrane_prob, membrane)
    overall.update({k: isbi[k] for k in _ISBI_OVERALL})
    k_rand = isbi["thresholds"].index(isbi["v_rand_threshold"])
    k_info = isbi["thresholds"].index(isbi["v_info_threshold"])
    for row, r, i in zip(rows, isbi["sections"]["v_rand"], isbi["sections"]["v_info"], strict=True):
        row.update(v_rand=r[k_rand], v_info=i[k_info])
    return {k: isbi[k] for k in _ISBI_KEYS}


def _not(p: np.ndarray) -> np.ndarray:
    return ~p if p.dtype == np.bool_ else np.float32(1.0) - p


# --------------------------------------------------------------------- instance
def _cells_from_binary(section: np.ndarray, foreground: tuple[int, ...], kind: str) -> np.ndarray:
    """Truth cells of one section: 4-connected components of the non-membrane pixels."""
    positive = np.isin(section, foreground)
    cells = ~positive if kind == "boundary" else positive
    return ndi.label(cells, _FOUR)[0]


def _section_ids(labels: np.ndarray, z: int, plane: int) -> np.ndarray:
    """Make ids unique to section ``z``: compact them, then offset by ``z * plane`` (0 stays 0)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    local = inverse.reshape(labels.shape).astype(np.uint64) + np.uint64(ids[0] != 0)
    return np.where(labels != 0, local + np.uint64(z) * np.uint64(plane), np.uint64(0))


def _instance_section(
    pred: Volume,
    truth: Volume,
    place: Placement,
    z: int,
    truth_cells: Callable[[np.ndarray], np.ndarray] | None,
    two_d: bool,
) -> Contingency:
    """One section's contingency table; 2-D ids (and cells of a binary truth) are made section-specific.

    ``z`` is the section in the common frame; both volumes are read over the overlap only.
    """
    p = np.asarray(pred.array[(z - place.pred_at[0], *place.plane(place.pred_at))])
    t = np.asarray(truth.array[(z - place.truth_at[0], *place.plane(place.truth_at))])
    plane = p.size + 1
    if truth_cells is not None:
        t = _section_ids(truth_cells(t), z, plane)
    elif two_d:
        t = _section_ids(t, z, plane)
    if two_d:
        p = _section_ids(p, z, plane)
    return Contingency().add(t, p)


def _instance_scores(table: Contingency) -> Scores:
    rand = table.adapted_rand()
    voi = table.voi()
    return {
        "adapted_rand_error": rand.error,
        "adapted_rand_precision": rand.precision,
        "adapted_rand_recall": rand.recall,
        "voi_split": voi.split,
        "voi_merge": voi.merge,
        "voi": voi.split + voi.merge,
        "v_rand": table.v_rand(),
        "v_info": table.v_info(),
    }


def instance(
    pred: Volume,
    truth: Volume,
    place: Placement,
    sections: Sequence[int],
    opts: EvaluateOptions,
    foreground: tuple[int, ...],
    kind: str,
) -> Part:
    import dask

    mode = opts.instance_mode
    if mode == "auto":
        record = pred.meta.get("segment")
        options = record.get("options") if isinstance(record, dict) else None
        mode = options.get("mode", "2d") if isinstance(options, dict) else "2d"
        mode = mode if mode in ("2d", "3d") else "2d"  # metadata from elsewhere: the 2-D default
    truth_is_labels = recorded_kind(truth) == "label"
    cells = None if truth_is_labels else (lambda a: _cells_from_binary(a, foreground, kind))
    tables = dask.compute(
        *[dask.delayed(_instance_section)(pred, truth, place, z, cells, mode == "2d") for z in sections]
    )
    total = Contingency()
    for table in tables:
        total.merge(table)
    rows: list[Scores] = [
        {"section": z, **_instance_scores(t)} for z, t in zip(sections, tables, strict=True)
    ]
    extra = {
        "instance_mode": mode,
        "truth_cells": "instance labels"
        if truth_is_labels
        else "cells of a binary truth (4-connected components of non-membrane pixels)",
        "counted_pixels": total.n,
    }
    return _instance_scores(total), rows, extra
