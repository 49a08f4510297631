"""Score a prediction volume against a ground truth, section by section.

Two kinds of evaluation, chosen by the prediction's kind:

binary (a probability or mask volume)
    Pixel error, Dice, IoU, precision and recall of the positive class at probability
    0.5 (:class:`volseg.core.metrics.ConfusionCounts`), and the ISBI 2012 scores V_rand and
    V_info (:func:`volseg.core.isbi.isbi_scores`: foreground-restricted, after border
    thinning, best over thresholds 0.0..1.0 in steps of 0.1), per section and overall.
instance (a label volume, e.g. from ``volseg segment``)
    Adapted Rand error (with its precision and recall), variation of information (split,
    merge, bits), the CREMI score and the foreground-restricted V_rand and V_info, accumulated
    in one streaming :class:`volseg.core.metrics.Contingency` over the sections (batch by batch),
    per section or as one 3-D partition (``instance_mode``), and the worst split truth objects
    and merging segments with their bounding boxes (``objects``). The truth is either instance
    labels (a label volume) or a binary truth whose cells are the 4-connected components
    of the non-membrane pixels of each section.

The truth's positive class is the set of ``foreground`` label values, as in training
(ISBI 2012: ``--foreground 0``, the membranes); ``foreground_kind`` says whether that
class is the boundary between cells (``boundary``) or the objects (``object``). Both
default to what the prediction's metadata records, else ``(0,)`` and ``boundary``.

Memory is bounded by a few sections: both volumes are read one section at a time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from volseg.core.progress import Progress, Tracker
from volseg.errors import OutputError
from volseg.stages.evaluate.inputs import (
    check_foreground,
    check_written,
    choose_sections,
    open_pair,
    place,
    settings,
    span_text,
)
from volseg.stages.evaluate.options import EvaluateOptions, EvaluateResult, parse_foreground
from volseg.stages.evaluate.scores import binary, instance
from volseg.storage.conventions import recorded_kind
from volseg.storage.files import atomic_write_json, json_ready
from volseg.storage.paths import local_path, output_not_input
from volseg.storage.volumes import overlap_region, voxel_offset

__all__ = [
    "EvaluateOptions",
    "EvaluateResult",
    "evaluate",
    "overlap_region",
    "parse_foreground",
    "span_text",
    "voxel_offset",
]


def evaluate(
    pred: str | os.PathLike,
    truth: str | os.PathLike,
    options: EvaluateOptions | None = None,
    *,
    sections: str | Sequence[int] | None = None,
    json_path: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> EvaluateResult:
    """Score ``pred`` against ``truth``, per section and overall.

    Parameters
    ----------
    pred
        A probability (uint8 0..255 or float 0..1) or mask volume, or a label volume
        (instances, from ``volseg segment``), shape ``(Z, Y, X)``. It is placed on the truth
        by its OME translation (``volseg predict --roi`` records one; see
        :func:`voxel_offset`), and the overlap of the two is scored.
    truth
        The ground truth: integer labels, binary (e.g. ISBI: 0 membrane, 255 cell) or
        instances (a label volume); not a probability volume, and not ``pred`` itself.
    options
        :class:`EvaluateOptions`.
    sections
        ``"25:30"``, ``"0,5,10"`` or indices, numbered in the truth's frame; overrides
        ``options.sections``. Default: every section of the overlap.
    json_path
        Also write the report there (NaN written as ``null``); never an input.
    progress
        Receives the task ``"evaluate"``: the sections scored.

    Returns
    -------
    EvaluateResult
        ``kind`` (``binary`` or ``instance``), ``overall`` (scores), ``sections``
        (one row per section), ``region`` (the scored overlap, ``[start, stop)`` per axis
        in the truth's frame), the inputs and settings, ``seconds``; ``to_dict()`` gives the
        report that ``json_path`` receives.
    """
    start = time.perf_counter()
    opts = options or EvaluateOptions()
    report_path = _report_path(json_path, pred, truth)
    p, t = open_pair(pred, truth)
    where = place(p, t)
    chosen = choose_sections(sections, opts, where, t)
    check_written(p, chosen, where.pred_at[0])
    check_written(t, chosen, where.truth_at[0])
    foreground, fg_kind, fg_source = settings(p, t, opts)
    kind = "instance" if p.kind == "label" else "binary"
    if kind == "binary" or recorded_kind(t) != "label":  # the truth's foreground values are used
        check_foreground(t, where, chosen, foreground, fg_source)
    run = instance if kind == "instance" else binary
    with Tracker(progress, "evaluate", len(chosen), "sections") as tracker:
        overall, rows, extra = run(p, t, where, chosen, opts, foreground, fg_kind)
        tracker.advance(len(chosen))
    report = {
        "kind": kind,
        "pred": str(p.path),
        "truth": str(t.path),
        "region": {ax: list(r) for ax, r in zip("zyx", where.region, strict=True)},
        "offsets": {"pred": list(where.pred_at), "truth": list(where.truth_at)},
        "truth_shape": list(t.shape),
        "sections_scored": list(chosen),
        "foreground": list(foreground),
        "foreground_kind": fg_kind,
        **({"threshold": opts.threshold} if kind == "binary" else {}),
        "overall": overall,
        "sections": rows,
        **extra,
        "seconds": round(time.perf_counter() - start, 3),
    }
    result = EvaluateResult.from_dict(json_ready(report))
    if report_path is not None:
        _write_report(report_path, result)
    return result


def _report_path(
    json_path: str | os.PathLike | None, pred: str | os.PathLike, truth: str | os.PathLike
) -> Path | None:
    """Where ``--json`` writes the report: a file path, never an input; checked before any work."""
    if json_path is None:
        return None
    given = os.fspath(json_path)
    path = local_path(json_path, "--json")
    if path.name in ("", ".", "..") or given.endswith(("/", os.sep)) or path.is_dir():
        raise OutputError(f"--json {given!r}: give a file path for the report, e.g. report.json")
    output_not_input({"--json": path}, {"PRED": pred, "TRUTH": truth})
    return Path(os.fspath(path))


def _write_report(path: Path, result: EvaluateResult) -> None:
    try:
        atomic_write_json(path, result.to_dict())
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot write the report ({exc.strerror or exc}); choose a writable location"
        ) from exc
