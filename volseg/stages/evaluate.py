"""Score a prediction volume against a ground truth, section by section.

Two kinds of evaluation, chosen by the prediction's kind:

binary (a probability or mask volume)
    Pixel error, Dice, IoU, precision and recall of the positive class at probability
    0.5 (:class:`volseg.core.metrics.ConfusionCounts`), and the ISBI 2012 scores V_rand and
    V_info (:func:`volseg.core.metrics.isbi_scores`: foreground-restricted, after border
    thinning, best over thresholds 0.0..1.0 in steps of 0.1), per section and overall.
instance (a label volume, e.g. from ``volseg segment``)
    Adapted Rand error (with its precision and recall), variation of information (split,
    merge) and the foreground-restricted V_rand and V_info, accumulated in one streaming
    :class:`volseg.core.metrics.Contingency` over the sections. The truth is either instance
    labels (a label volume) or a binary truth whose cells are the 4-connected components
    of the non-membrane pixels of each section.

The truth's positive class is the set of ``foreground`` label values, as in training
(ISBI 2012: ``--foreground 0``, the membranes); ``foreground_kind`` says whether that
class is the boundary between cells (``boundary``) or the objects (``object``). Both
default to what the prediction's metadata records, else ``(0,)`` and ``boundary``.

Memory is bounded by a few sections: both volumes are read one section at a time.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from volseg.core.sections import parse_sections
from volseg.errors import InputError, OptionError, OutputError
from volseg.storage.conventions import recorded_kind, require_kind
from volseg.storage.paths import local_path, output_not_input, same_file
from volseg.storage.volumes import Volume, open_volume, overlap_region, voxel_offset

__all__ = [
    "EvaluateOptions",
    "evaluate",
    "overlap_region",
    "parse_foreground",
    "print_report",
    "voxel_offset",
]

FOREGROUND_KINDS = ("boundary", "object")
INSTANCE_MODES = ("auto", "2d", "3d")
_FOUR = ndi.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class EvaluateOptions:
    """What to score and how.

    Attributes
    ----------
    sections
        Section indices to score; ``None``: all.
    foreground
        Truth label values of the positive class; ``None``: from the prediction's
        metadata, else ``(0,)``.
    foreground_kind
        ``"boundary"`` (the positive class is the membrane) or ``"object"``; ``None``:
        from the prediction's metadata, else ``"boundary"``.
    threshold
        Probability above which a pixel is positive for the pixel metrics.
    isbi
        Compute the ISBI V_rand / V_info of a probability map (11 thresholds per section:
        the slow part of a binary evaluation).
    instance_mode
        Instance evaluation: ``"2d"`` scores each section's segments on their own (ids are
        made section-specific, as in ISBI 2012), ``"3d"`` takes ids as 3-D objects;
        ``"auto"``: 3-D when the prediction was segmented in 3-D, else 2-D.
    """

    sections: tuple[int, ...] | None = None
    foreground: tuple[int, ...] | None = None
    foreground_kind: str | None = None
    threshold: float = 0.5
    isbi: bool = True
    instance_mode: str = "auto"

    def __post_init__(self) -> None:
        if self.foreground_kind is not None and self.foreground_kind not in FOREGROUND_KINDS:
            raise OptionError(
                f"--foreground-kind {self.foreground_kind!r}: use one of {', '.join(FOREGROUND_KINDS)}"
            )
        if self.instance_mode not in INSTANCE_MODES:
            raise OptionError(
                f"--instance-mode {self.instance_mode!r}: use one of {', '.join(INSTANCE_MODES)}"
            )
        if not 0.0 <= self.threshold < 1.0:
            raise OptionError(f"--threshold {self.threshold}: must lie in [0, 1), e.g. 0.5")
        if self.foreground is not None and not self.foreground:
            raise OptionError("--foreground: give at least one label value, e.g. 0 or 1,2")


def parse_foreground(text: str | None) -> tuple[int, ...] | None:
    """``"0"`` or ``"1,2"`` -> label values; ``None`` stays ``None``."""
    if text is None or not text.strip():
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise OptionError(
            f"--foreground {text!r}: expected label values separated by commas, e.g. 0 or 1,2"
        ) from None
    if not values or min(values) < 0:
        raise OptionError(f"--foreground {text!r}: expected non-negative label values, e.g. 0 or 1,2")
    return values


# -------------------------------------------------------------------- placement
def _span(region: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"{ax} {lo}:{hi}" for ax, (lo, hi) in zip("zyx", region, strict=True))


@dataclass(frozen=True)
class _Placement:
    """Where PRED and TRUTH lie in the common frame, and the overlap that is scored."""

    pred_at: tuple[int, ...]
    truth_at: tuple[int, ...]
    region: tuple[tuple[int, int], ...]

    def plane(self, at: Sequence[int]) -> tuple[slice, slice]:
        """The overlap's (y, x) slices in the local frame of a volume lying at ``at``."""
        return tuple(slice(lo - o, hi - o) for (lo, hi), o in zip(self.region[1:], at[1:], strict=True))


def _place(p: Volume, t: Volume) -> _Placement:
    """Place PRED on TRUTH by their recorded translations (voxel sizes must then agree)."""
    pred_at, truth_at = voxel_offset(p), voxel_offset(t)
    placed = any(pred_at) or any(truth_at) or p.shape != t.shape
    if placed and not np.allclose(p.voxel_size, t.voxel_size, rtol=1e-6):
        raise InputError(
            f"{p.path}: voxel size {list(p.voxel_size)} differs from the truth {t.path} voxel size "
            f"{list(t.voxel_size)}, so it cannot be placed on the truth; evaluate a prediction of the "
            "truth's image (convert image and labels with the same --voxel-size)"
        )
    region = overlap_region(pred_at, p.shape, truth_at, t.shape)
    if region is None:
        own = _span([(o, o + n) for o, n in zip(pred_at, p.shape, strict=True)])
        theirs = _span([(o, o + n) for o, n in zip(truth_at, t.shape, strict=True)])
        raise InputError(
            f"{p.path}: does not overlap the truth {t.path}: it lies at {own} and the truth at {theirs} "
            "(voxels, from their OME translations); evaluate a prediction of (part of) the truth's image"
        )
    return _Placement(pred_at, truth_at, region)


# ---------------------------------------------------------------------- reading
class _Sections:
    """A lazy ``(Z, Y, X)`` view of chosen sections cropped to ``plane`` (y, x): indexing reads, converts."""

    def __init__(
        self,
        vol: Volume,
        sections: Sequence[int],
        fn: Callable[[np.ndarray], np.ndarray],
        plane: tuple[slice, slice] | None = None,
    ) -> None:
        self.vol, self.sections, self.fn = vol, list(sections), fn
        self.plane = plane or (slice(0, vol.shape[1]), slice(0, vol.shape[2]))
        self.shape = (len(self.sections), *(s.stop - s.start for s in self.plane))

    def __len__(self) -> int:
        return len(self.sections)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.fn(np.asarray(self.vol.array[(self.sections[i], *self.plane)]))


def _probability(vol: Volume) -> Callable[[np.ndarray], np.ndarray]:
    """Raw section -> probability of the positive class (float32 0..1), or a bool mask."""
    from volseg.stages.segment import value_scale

    dtype = vol.dtype
    if dtype == np.bool_ or vol.kind == "mask":
        return lambda a: a != 0
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(
            f"{vol.path}: dtype {dtype} is neither a probability nor a mask; expected uint8, float or bool"
        )
    scale, offset = (np.float32(v) for v in value_scale(vol))
    return lambda a: np.clip(a.astype(np.float32) * scale + offset, 0.0, 1.0)


def _settings(pred: Volume, truth: Volume, opts: EvaluateOptions) -> tuple[tuple[int, ...], str, str]:
    """The positive class: the options, else the model's record in ``pred``, else the truth's, else 0.

    Returns the foreground values, their kind, and where the values came from (for messages).
    """
    from volseg.stages.segment import recorded_convention

    recorded = recorded_convention(pred)
    source = "recorded in PRED's metadata"
    if recorded["foreground"] is None:
        recorded = {**recorded, **_truth_convention(truth)}
        source = "recorded in TRUTH's metadata"
    if opts.foreground:
        foreground, source = opts.foreground, "given"
    elif recorded["foreground"]:
        foreground = tuple(recorded["foreground"])
    else:
        foreground, source = (0,), "the default"
    kind = opts.foreground_kind or recorded["foreground_kind"] or "boundary"
    return foreground, kind, source


def _truth_convention(truth: Volume) -> dict[str, Any]:
    """The membrane values of a truth whose metadata maps values to meanings (``volseg synth`` does)."""
    convention = truth.meta.get("label_convention")
    if not isinstance(convention, dict) or not all(str(k).lstrip("-").isdigit() for k in convention):
        return {}
    membrane = [
        int(k) for k, v in convention.items() if str(v).lower() in ("membrane", "membranes", "boundary")
    ]
    if not membrane:
        return {}
    return {"foreground": membrane, "foreground_kind": "boundary"}


_TRUTH_FIX = (
    "pass the ground-truth labels (e.g. 'volseg convert train-labels.tif labels.zarr'), not a prediction"
)


def _open_pair(pred: str | os.PathLike, truth: str | os.PathLike) -> tuple[Volume, Volume]:
    """Open PRED and TRUTH; refuse a truth that is not labels, and a volume scored against itself."""
    p, t = open_volume(pred), open_volume(truth)
    if p.path.resolve() == t.path.resolve() or same_file(p.path, t.path):
        raise InputError(
            f"{p.path}: PRED and TRUTH {t.path} are the same volume, and a volume scored against itself "
            "scores perfectly; pass the prediction and the ground truth"
        )
    if np.issubdtype(t.dtype, np.floating):
        raise InputError(
            f"{t.path}: the truth has dtype {t.dtype}; give integer labels (a binary or instance truth)"
        )
    require_kind(
        p,
        ("probability", "mask", "label"),
        "evaluate's PRED",
        "pass the output of 'volseg predict' or 'volseg segment' (a map from another tool: convert it "
        "with --kind probability)",
        unknown_ok=True,
    )
    # Labels converted from a TIFF are recorded as "image": integer data of that kind is accepted.
    if recorded_kind(t) != "image":
        require_kind(t, ("label", "mask"), "evaluate's TRUTH", _TRUTH_FIX, unknown_ok=True)
    return p, t


def _check_foreground(
    truth: Volume, place: _Placement, sections: Sequence[int], foreground: tuple[int, ...], source: str
) -> None:
    """Refuse a positive class that no pixel (or every pixel) of the scored truth holds: nothing to score."""
    import dask

    tz = [z - place.truth_at[0] for z in sections]
    view = _Sections(
        truth, tz, lambda a: np.count_nonzero(np.isin(a, foreground)), place.plane(place.truth_at)
    )
    counts = dask.compute(*[dask.delayed(view.__getitem__)(i) for i in range(len(tz))])
    total, pixels = int(sum(counts)), len(tz) * view.shape[1] * view.shape[2]
    if 0 < total < pixels:
        return
    first = _Sections(truth, tz[:8], np.unique, view.plane)  # the values of a few sections, for the message
    values = sorted(set().union(*(first[i].tolist() for i in range(len(first)))))
    what = "no pixel" if total == 0 else "every pixel"
    raise InputError(
        f"{truth.path}: {what} of the scored {_sections_text(sections)} holds the --foreground value(s) "
        f"{list(foreground)} ({source}); the truth holds {values[:8]}{' ...' if len(values) > 8 else ''}: "
        "pass --foreground with the value(s) that mark the positive class (ISBI 2012: --foreground 0)"
    )


def _sections_text(sections: Sequence[int]) -> str:
    if len(sections) == 1:
        return f"section {sections[0]}"
    if len(sections) <= 4:
        return f"sections {', '.join(map(str, sections))}"
    return f"{len(sections)} sections ({sections[0]} to {sections[-1]})"


# ----------------------------------------------------------------------- binary
def _pixel_section(pred: _Sections, truth_pos: _Sections, i: int, threshold: float):
    from volseg.core.metrics import ConfusionCounts

    return ConfusionCounts.from_arrays(pred[i], truth_pos[i], threshold)


def _binary(
    pred: Volume,
    truth: Volume,
    place: _Placement,
    sections: Sequence[int],
    opts: EvaluateOptions,
    foreground: tuple[int, ...],
    kind: str,
) -> tuple[dict, list[dict], dict]:
    import dask

    from volseg.core.metrics import ConfusionCounts, isbi_scores

    pz = [z - place.pred_at[0] for z in sections]
    tz = [z - place.truth_at[0] for z in sections]
    pp, tp = place.plane(place.pred_at), place.plane(place.truth_at)
    prob = _Sections(pred, pz, _probability(pred), pp)
    positive = _Sections(truth, tz, lambda a: np.isin(a, foreground), tp)
    counts = dask.compute(
        *[dask.delayed(_pixel_section)(prob, positive, i, opts.threshold) for i in range(len(sections))]
    )
    total = sum(counts, ConfusionCounts())
    overall = total.scores()
    rows = [{"section": z, **c.scores()} for z, c in zip(sections, counts, strict=True)]
    extra: dict[str, Any] = {}
    if opts.isbi:
        if kind == "boundary":
            membrane_prob, membrane = prob, positive
        else:  # the model scored objects: a membrane is where it says "not object"
            membrane_prob = _Sections(pred, pz, lambda a, f=_probability(pred): _not(f(a)), pp)
            membrane = _Sections(truth, tz, lambda a: ~np.isin(a, foreground), tp)
        isbi = isbi_scores(membrane_prob, membrane)
        overall.update(
            v_rand=isbi["v_rand"],
            v_info=isbi["v_info"],
            v_rand_threshold=isbi["v_rand_threshold"],
            v_info_threshold=isbi["v_info_threshold"],
            pixel_error_isbi=isbi["pixel_error_isbi"],
            pixel_error_isbi_threshold=isbi["pixel_error_isbi_threshold"],
        )
        k_rand = isbi["thresholds"].index(isbi["v_rand_threshold"])
        k_info = isbi["thresholds"].index(isbi["v_info_threshold"])
        for row, r, i in zip(rows, isbi["sections"]["v_rand"], isbi["sections"]["v_info"], strict=True):
            row.update(v_rand=r[k_rand], v_info=i[k_info])
        extra["isbi"] = {
            k: isbi[k]
            for k in (
                "thresholds",
                "v_rand_curve",
                "v_info_curve",
                "v_info_section_mean",
                "pixel_fscore_curve",
                "thin",
                "connectivity",
            )
        }
    overall.update(tp=total.tp, fp=total.fp, fn=total.fn, tn=total.tn)
    return overall, rows, extra


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
    pred: Volume, truth: Volume, place: _Placement, z: int, truth_cells: Callable | None, two_d: bool
):
    """One section's contingency table; 2-D ids (and cells of a binary truth) are made section-specific.

    ``z`` is the section in the common frame; both volumes are read over the overlap only.
    """
    from volseg.core.metrics import Contingency

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


def _instance_scores(table: Any) -> dict[str, float]:
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


def _instance(
    pred: Volume,
    truth: Volume,
    place: _Placement,
    sections: Sequence[int],
    opts: EvaluateOptions,
    foreground: tuple[int, ...],
    kind: str,
) -> tuple[dict, list[dict], dict]:
    import dask

    from volseg.core.metrics import Contingency

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
    rows = [{"section": z, **_instance_scores(t)} for z, t in zip(sections, tables, strict=True)]
    extra = {
        "instance_mode": mode,
        "truth_cells": "instance labels"
        if truth_is_labels
        else "cells of a binary truth (4-connected components of non-membrane pixels)",
        "counted_pixels": total.n,
    }
    return _instance_scores(total), rows, extra


# ------------------------------------------------------------------------ the API
def evaluate(
    pred: str | os.PathLike,
    truth: str | os.PathLike,
    *,
    options: EvaluateOptions | None = None,
    sections: str | Sequence[int] | None = None,
    json_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
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

    Returns
    -------
    dict
        ``kind`` (``binary`` or ``instance``), ``overall`` (scores), ``sections``
        (one row per section), ``region`` (the scored overlap, ``[start, stop)`` per axis
        in the truth's frame), the inputs and settings, ``seconds``.
    """
    start = time.perf_counter()
    opts = options or EvaluateOptions()
    if json_path is not None:
        given = os.fspath(json_path)
        json_path = local_path(json_path, "--json")
        if json_path.name in ("", ".", "..") or given.endswith(("/", os.sep)) or json_path.is_dir():
            raise OutputError(f"--json {given!r}: give a file path for the report, e.g. report.json")
        output_not_input({"--json": json_path}, {"PRED": pred, "TRUTH": truth})
    p, t = _open_pair(pred, truth)
    place = _place(p, t)
    chosen = _choose_sections(sections, opts, place, t)
    _check_written(p, chosen, place.pred_at[0])
    _check_written(t, chosen, place.truth_at[0])
    foreground, fg_kind, fg_source = _settings(p, t, opts)
    kind = "instance" if p.kind == "label" else "binary"
    if kind == "binary" or recorded_kind(t) != "label":  # the truth's foreground values are used
        _check_foreground(t, place, chosen, foreground, fg_source)
    run = _instance if kind == "instance" else _binary
    overall, rows, extra = run(p, t, place, chosen, opts, foreground, fg_kind)
    report = {
        "kind": kind,
        "pred": str(p.path),
        "truth": str(t.path),
        "region": {ax: list(r) for ax, r in zip("zyx", place.region, strict=True)},
        "offsets": {"pred": list(place.pred_at), "truth": list(place.truth_at)},
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
    report = _json_ready(report)
    if json_path is not None:
        _write_json(Path(os.fspath(json_path)), report)
    return report


def _check_written(vol: Volume, sections: Sequence[int], z0: int = 0) -> None:
    """Refuse sections (in the common frame; ``vol`` starts at section ``z0``) not written yet."""
    if vol.meta.get("status") != "incomplete":
        return
    done = vol.done_blocks()
    bz, (_, ny, nx) = vol.block_shape[0], vol.block_grid
    missing = [z for z in sections if sum(1 for d in done if d[0] == (z - z0) // bz) < ny * nx]
    if missing:
        raise InputError(
            f"{vol.path}: is incomplete and section {missing[0]} ({len(missing)} of {len(sections)} chosen) "
            "is not written yet; finish the run with --resume, or choose written sections with --sections"
        )


def _choose_sections(
    sections: str | Sequence[int] | None, opts: EvaluateOptions, place: _Placement, truth: Volume
) -> tuple[int, ...]:
    """The sections to score, numbered in the truth's frame; all of the overlap by default."""
    lo, hi = place.region[0]
    n = place.truth_at[0] + truth.shape[0]
    if isinstance(sections, str):
        chosen = parse_sections(sections, n)
    elif sections is not None:
        chosen = parse_sections(",".join(str(int(z)) for z in sections), n)
    elif opts.sections is not None:
        chosen = parse_sections(",".join(str(int(z)) for z in opts.sections), n)
    else:
        chosen = tuple(range(lo, hi))
    chosen = tuple(sorted(chosen or ()))
    outside = [z for z in chosen if not lo <= z < hi]
    if outside:
        raise OptionError(
            f"--sections: section {outside[0]} lies outside the sections {lo}:{hi} where the prediction "
            f"overlaps the truth (sections are numbered in the truth); choose sections within {lo}:{hi}"
        )
    return chosen


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else float(obj)
    return obj


def _write_json(path: Path, report: dict[str, Any]) -> None:
    import json

    from volseg.errors import OutputError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot write the report ({exc.strerror or exc}); choose a writable location"
        ) from exc


# ---------------------------------------------------------------------- terminal
_BINARY_COLUMNS = (
    ("pixel_error", "pixel error"),
    ("pixel_error_isbi", "ISBI pixel error"),
    ("dice", "Dice"),
    ("iou", "IoU"),
    ("v_rand", "V_rand"),
    ("v_info", "V_info"),
)
_INSTANCE_COLUMNS = (
    ("adapted_rand_error", "adapted Rand error"),
    ("voi_split", "VOI split"),
    ("voi_merge", "VOI merge"),
    ("v_rand", "V_rand"),
    ("v_info", "V_info"),
)
MAX_ROWS = 40


def print_report(report: dict[str, Any]) -> None:
    """Print a report as a table: one row per section (at most :data:`MAX_ROWS`), then the overall row."""
    from rich.console import Console
    from rich.table import Table

    columns = _BINARY_COLUMNS if report["kind"] == "binary" else _INSTANCE_COLUMNS
    columns = tuple(c for c in columns if c[0] in report["overall"])
    table = Table(title=f"{report['pred']} vs {report['truth']}", title_justify="left")
    table.add_column("section", justify="right")
    for _, name in columns:
        table.add_column(name, justify="right")
    rows = report["sections"]
    for row in rows[:MAX_ROWS]:
        table.add_row(str(row["section"]), *(_fmt(row.get(key)) for key, _ in columns))
    if len(rows) > MAX_ROWS:
        table.add_row(f"... {len(rows) - MAX_ROWS} more", *("" for _ in columns))
    table.add_section()
    table.add_row("[bold]all[/bold]", *(f"[bold]{_fmt(report['overall'].get(k))}[/bold]" for k, _ in columns))
    console = Console(highlight=False)
    console.print(table)
    console.print(_footer(report))


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _footer(report: dict[str, Any]) -> str:
    o = report["overall"]
    parts = [
        f"{report['kind']} evaluation of {len(report['sections_scored'])} sections",
        f"foreground {','.join(map(str, report['foreground']))} ({report['foreground_kind']})",
    ]
    if report["kind"] == "binary" and "v_rand_threshold" in o:
        parts.append(
            f"best thresholds: V_rand {o['v_rand_threshold']:.1f}, V_info {o['v_info_threshold']:.1f}"
        )
    if report["kind"] == "instance":
        parts.append(f"{report['instance_mode']} ids; truth: {report['truth_cells']}")
    region, at = report.get("region"), report.get("offsets", {}).get("truth")
    whole = at is not None and [[a, a + n] for a, n in zip(at, report["truth_shape"], strict=True)]
    if region and [region[ax] for ax in "zyx"] != whole:
        span = _span([region[ax] for ax in "zyx"])
        starts = ", ".join(f"{ax} {v}" for ax, v in zip("zyx", report["offsets"]["pred"], strict=True))
        parts.append(f"scored the overlap {span} of the truth (the prediction starts at {starts})")
    parts.append(f"{report['seconds']} s")
    return "; ".join(parts)
