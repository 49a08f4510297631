"""evaluate's options and result: what to score and how, and the report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from volseg.errors import OptionError
from volseg.storage.conventions import FOREGROUND_KINDS
from volseg.storage.files import json_ready

__all__ = ["INSTANCE_MODES", "EvaluateOptions", "EvaluateResult", "Scores", "parse_foreground"]

INSTANCE_MODES = ("auto", "2d", "3d")


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
    objects
        Instance evaluation: list at most this many of the worst split truth objects and of the
        worst merging predicted segments in the report (``objects``), with their ids, sizes and
        bounding boxes; 0: no lists (and no bounding boxes to compute).
    """

    sections: tuple[int, ...] | None = None
    foreground: tuple[int, ...] | None = None
    foreground_kind: str | None = None
    threshold: float = 0.5
    isbi: bool = True
    instance_mode: str = "auto"
    objects: int = 50

    def __post_init__(self) -> None:
        if isinstance(self.objects, bool) or not isinstance(self.objects, int) or self.objects < 0:
            raise OptionError(
                f"--objects {self.objects!r}: give a whole number >= 0 (0: no object lists), e.g. 50"
            )
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


Scores = dict[str, float | int | None]
"""One row of scores (NaN written as ``None``)."""


@dataclass(frozen=True)
class EvaluateResult:
    """A report: what was scored against what, and the scores, as JSON-ready data.

    Attributes
    ----------
    kind
        ``"binary"`` (a probability or mask prediction) or ``"instance"`` (labels).
    pred, truth
        The two volumes.
    region
        The scored overlap, ``[start, stop)`` per axis (``z``, ``y``, ``x``) in the truth's frame.
    offsets
        Where ``pred`` and ``truth`` start in the common frame, in voxels.
    truth_shape
        The truth's shape ``(Z, Y, X)``.
    sections_scored
        The sections scored, numbered in the truth's frame.
    foreground, foreground_kind
        The truth's positive class and whether it is the boundary or the objects.
    threshold
        Binary: the probability above which a pixel is positive; ``None`` for instances.
    overall
        The scores over all scored sections.
    sections
        One row of scores per section, with its ``section`` index.
    objects
        Instance: the worst split truth objects and merging segments (``splits``, ``merges``:
        each with the number of objects, how many are wrong, the ``listed`` ones worst first and
        how many are ``not_listed``); ``None`` for binary evaluations or ``objects=0``.
    isbi
        Binary with ISBI scores: the thresholds and the score curves over them; else ``None``.
    instance_mode, truth_cells, counted_pixels
        Instance: ``2d`` or ``3d`` ids, what the truth's cells are, the pixels counted; else ``None``.
    seconds
        Wall time of the evaluation.
    """

    kind: str
    pred: str
    truth: str
    region: dict[str, list[int]]
    offsets: dict[str, list[int]]
    truth_shape: list[int]
    sections_scored: list[int]
    foreground: list[int]
    foreground_kind: str
    threshold: float | None
    overall: Scores
    sections: list[Scores]
    objects: dict[str, Any] | None
    isbi: dict[str, Any] | None
    instance_mode: str | None
    truth_cells: str | None
    counted_pixels: int | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The report as written by ``--json``: the fields in order, those that do not apply left out."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return json_ready({k: v for k, v in out.items() if not (k in _OPTIONAL and v is None)})

    @classmethod
    def from_dict(cls, report: Mapping[str, Any]) -> EvaluateResult:
        """A report read back (e.g. a ``--json`` file); the fields that do not apply may be absent."""
        values = {f.name: report.get(f.name) if f.name in _OPTIONAL else report[f.name] for f in fields(cls)}
        return cls(**values)


_OPTIONAL = ("threshold", "objects", "isbi", "instance_mode", "truth_cells", "counted_pixels")
