"""evaluate's scores: pixel and ISBI 2012 scores of a binary prediction, instance scores of labels.

Sections are scored as independent dask tasks; their counts (:class:`volseg.core.metrics.ConfusionCounts`)
and contingency tables (:class:`volseg.core.metrics.Contingency`) add up to the overall scores.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from volseg.core.isbi import isbi_scores
from volseg.core.metrics import BoundingBoxes, ConfusionCounts, Contingency, ObjectErrors, label_boxes
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


def _section_ids(labels: np.ndarray, z: int, plane: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make ids unique to section ``z``: compact them, then offset by ``z * plane`` (0 stays 0).

    Returns the section-specific ids, the compact local ids (1..K, 0 stays 0) and the original
    labels of local ids 1..K (so that a report can name an object by its own label).
    """
    ids, inverse = np.unique(labels, return_inverse=True)
    local = inverse.reshape(labels.shape).astype(np.uint64) + np.uint64(ids[0] != 0)
    unique = np.where(labels != 0, local + np.uint64(z) * np.uint64(plane), np.uint64(0))
    return unique, np.where(labels != 0, local, np.uint64(0)), ids[ids != 0].astype(np.uint64)


@dataclass
class _Side:
    """One volume's labels of one section, as they enter the table, and where its objects lie.

    ``ids`` is dropped (``None``) once the section's table is built: a section's result carries its
    table, boxes and names back to the accumulator, never its voxels.
    """

    ids: np.ndarray | None
    boxes: BoundingBoxes | None = None
    names: tuple[np.ndarray, np.ndarray] | None = None  # 2-D: (section-specific id, original label)


def _side(
    labels: np.ndarray, z: int, plane: int, two_d: bool, origin: tuple[int, int, int], boxes: bool
) -> _Side:
    if not two_d:
        side = _Side(labels)
        if boxes:
            side.boxes = BoundingBoxes(3).add(labels[None], origin)
        return side
    unique, local, originals = _section_ids(labels, z, plane)
    side = _Side(unique)
    if boxes:  # boxes of the compact local ids (a fast pass), then named by their section-specific ids
        ids, lo, hi = label_boxes(local[None], origin)
        offset = np.uint64(z) * np.uint64(plane)
        side.boxes = BoundingBoxes(3).extend(ids + offset, lo, hi)
        side.names = (np.arange(1, originals.size + 1, dtype=np.uint64) + offset, originals)
    return side


@dataclass
class _Section:
    table: Contingency
    true: _Side
    pred: _Side


def _instance_section(
    pred: Volume,
    truth: Volume,
    place: Placement,
    z: int,
    truth_cells: Callable[[np.ndarray], np.ndarray] | None,
    two_d: bool,
    boxes: bool = False,
) -> _Section:
    """One section's contingency table; 2-D ids (and cells of a binary truth) are made section-specific.

    ``z`` is the section in the common frame; both volumes are read over the overlap only. With
    ``boxes``, also where each object of the section lies (in the common frame).
    """
    p = np.asarray(pred.array[(z - place.pred_at[0], *place.plane(place.pred_at))])
    t = np.asarray(truth.array[(z - place.truth_at[0], *place.plane(place.truth_at))])
    plane = p.size + 1
    origin = (z, place.region[1][0], place.region[2][0])
    if truth_cells is not None:
        t = truth_cells(t)
    true = _side(t, z, plane, two_d or truth_cells is not None, origin, boxes)
    guess = _side(p, z, plane, two_d, origin, boxes)
    table = Contingency().add(true.ids, guess.ids)
    true.ids = guess.ids = None  # a section's voxels stay in its task
    return _Section(table, true, guess)


def _instance_scores(table: Contingency) -> Scores:
    rand = table.adapted_rand()
    voi = table.voi()
    cremi = table.cremi()
    return {
        "adapted_rand_error": rand.error,
        "adapted_rand_precision": rand.precision,
        "adapted_rand_recall": rand.recall,
        "voi_split": voi.split,
        "voi_merge": voi.merge,
        "voi": voi.split + voi.merge,
        "cremi_score": cremi.score,
        "cremi_adapted_rand_error": cremi.adapted_rand_error,
        "v_rand": table.v_rand(),
        "v_info": table.v_info(),
    }


def _instance_mode(pred: Volume, opts: EvaluateOptions) -> str:
    mode = opts.instance_mode
    if mode == "auto":
        record = pred.meta.get("segment")
        options = record.get("options") if isinstance(record, dict) else None
        mode = options.get("mode", "2d") if isinstance(options, dict) else "2d"
        mode = mode if mode in ("2d", "3d") else "2d"  # metadata from elsewhere: the 2-D default
    return mode


def _batches(items: Sequence[int]) -> list[Sequence[int]]:
    """Sections in batches of a few per core: the per-section tables of one batch are held at a time."""
    size = max(4, 2 * (os.cpu_count() or 1))
    return [items[i : i + size] for i in range(0, len(items), size)]


class _Accumulator:
    """The sum of the sections' tables, boxes and names, filled batch by batch."""

    def __init__(self) -> None:
        self.table = Contingency()
        self.boxes = {"true": BoundingBoxes(3), "pred": BoundingBoxes(3)}
        self.names: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"true": [], "pred": []}

    def add(self, part: _Section) -> None:
        self.table.merge(part.table)
        for key, side in (("true", part.true), ("pred", part.pred)):
            if side.boxes is not None:
                self.boxes[key].merge(side.boxes)
            if side.names is not None:
                self.names[key].append(side.names)


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

    mode = _instance_mode(pred, opts)
    truth_is_labels = recorded_kind(truth) == "label"
    cells = None if truth_is_labels else (lambda a: _cells_from_binary(a, foreground, kind))
    boxes = opts.objects > 0
    total = _Accumulator()
    rows: list[Scores] = []
    for batch in _batches(list(sections)):
        parts = dask.compute(
            *[
                dask.delayed(_instance_section)(pred, truth, place, z, cells, mode == "2d", boxes)
                for z in batch
            ]
        )
        for z, part in zip(batch, parts, strict=True):
            rows.append({"section": z, **_instance_scores(part.table)})
            total.add(part)
    extra: dict[str, Any] = {
        "instance_mode": mode,
        "truth_cells": "instance labels"
        if truth_is_labels
        else "cells of a binary truth (4-connected components of non-membrane pixels)",
        "counted_pixels": total.table.n,
    }
    if boxes:
        extra["objects"] = object_lists(total, opts.objects, mode == "2d" or cells is not None, mode == "2d")
    return _instance_scores(total.table), rows, extra


# ------------------------------------------------------------------ worst objects
def object_lists(total: _Accumulator, limit: int, true_2d: bool, pred_2d: bool) -> dict[str, Any]:
    """The report's ``objects``: the worst split true objects and the worst merging segments."""
    name_true = _Names(total.names["true"]) if true_2d else None
    name_pred = _Names(total.names["pred"]) if pred_2d else None
    splits = _ranked(total.table.objects("true"), total.boxes["true"], limit, name_true, name_pred, "split")
    merges = _ranked(total.table.objects("pred"), total.boxes["pred"], limit, name_pred, name_true, "merge")
    return {
        "limit": limit,
        "ranked_by": "share of VOI split (truth objects) or VOI merge (predicted segments), in bits",
        "splits": splits,
        "merges": merges,
    }


class _Names:
    """Section-specific ids of 2-D scoring -> the original label of the object."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        keys = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.uint64)
        values = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.uint64)
        order = np.argsort(keys)
        self.keys, self.values = keys[order], values[order]

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """The original labels of ``ids``; an id not named (predicted 0) is returned as it is."""
        if self.keys.size == 0:
            return ids
        at = np.minimum(np.searchsorted(self.keys, ids), self.keys.size - 1)
        return np.where(self.keys[at] == ids, self.values[at], ids)


def _ranked(
    errors: ObjectErrors,
    boxes: BoundingBoxes,
    limit: int,
    own: _Names | None,
    other: _Names | None,
    what: str,
) -> dict[str, Any]:
    wrong = np.flatnonzero(errors.pieces > 1)
    listed = errors.take(wrong[:limit])
    lo, hi = boxes.lookup(listed.labels)
    labels = own(listed.labels) if own else listed.labels
    partners = other(listed.largest_label) if other else listed.largest_label
    count_key = "segments" if what == "split" else "truth_objects"
    entries = []
    for k in range(len(listed.labels)):
        entry: dict[str, Any] = {"id": int(labels[k])}
        entry["voxels"] = int(listed.sizes[k])
        entry[count_key] = int(listed.pieces[k])
        entry[f"voi_{what}"] = float(listed.voi[k])
        entry["largest_fraction"] = float(listed.largest[k] / listed.sizes[k])
        entry["largest_id"] = int(partners[k])
        # predicted 0 (boundary) has no box: it is not an object
        entry["bbox"] = (
            {ax: [int(lo[k, d]), int(hi[k, d])] for d, ax in enumerate("zyx")} if lo[k, 0] >= 0 else None
        )
        entries.append(entry)
    return {
        "objects": len(errors.labels),
        f"{what}_objects": int(wrong.size),
        "listed": entries,
        "not_listed": int(wrong.size) - len(entries),
    }
