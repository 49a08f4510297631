"""What evaluate reads: the two volumes, where one lies on the other, the sections and the positive class.

Both volumes are read one section at a time (:class:`Sections`), over the part where they overlap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from volseg.core.sections import parse_sections
from volseg.errors import InputError, OptionError
from volseg.stages.evaluate.options import EvaluateOptions
from volseg.storage.conventions import (
    recorded_convention,
    recorded_kind,
    require_kind,
    to_probability,
    truth_membrane_values,
    value_scale,
)
from volseg.storage.paths import same_file
from volseg.storage.volumes import Volume, open_volume, overlap_region, voxel_offset

__all__ = [
    "Placement",
    "Sections",
    "check_foreground",
    "check_written",
    "choose_sections",
    "open_pair",
    "place",
    "probability",
    "settings",
    "span_text",
]


# -------------------------------------------------------------------- placement
def span_text(region: Sequence[Sequence[int]]) -> str:
    """``[(0, 5), (0, 512), ...]`` -> ``"z 0:5, y 0:512, ..."``."""
    return ", ".join(f"{ax} {lo}:{hi}" for ax, (lo, hi) in zip("zyx", region, strict=True))


@dataclass(frozen=True)
class Placement:
    """Where PRED and TRUTH lie in the common frame, and the overlap that is scored."""

    pred_at: tuple[int, ...]
    truth_at: tuple[int, ...]
    region: tuple[tuple[int, int], ...]

    def plane(self, at: Sequence[int]) -> tuple[slice, slice]:
        """The overlap's (y, x) slices in the local frame of a volume lying at ``at``."""
        return tuple(slice(lo - o, hi - o) for (lo, hi), o in zip(self.region[1:], at[1:], strict=True))


def place(p: Volume, t: Volume) -> Placement:
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
        own = span_text([(o, o + n) for o, n in zip(pred_at, p.shape, strict=True)])
        theirs = span_text([(o, o + n) for o, n in zip(truth_at, t.shape, strict=True)])
        raise InputError(
            f"{p.path}: does not overlap the truth {t.path}: it lies at {own} and the truth at {theirs} "
            "(voxels, from their OME translations); evaluate a prediction of (part of) the truth's image"
        )
    return Placement(pred_at, truth_at, region)


# ---------------------------------------------------------------------- reading
class Sections:
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


def probability(vol: Volume) -> Callable[[np.ndarray], np.ndarray]:
    """Raw section -> probability of the positive class (float32 0..1), or a bool mask."""
    dtype = vol.dtype
    if dtype == np.bool_ or vol.kind == "mask":
        return lambda a: a != 0
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(
            f"{vol.path}: dtype {dtype} is neither a probability nor a mask; expected uint8, float or bool"
        )
    scale, offset = value_scale(vol)
    return lambda a: to_probability(a, scale, offset)


def settings(pred: Volume, truth: Volume, opts: EvaluateOptions) -> tuple[tuple[int, ...], str, str]:
    """The positive class: the options, else the model's record in ``pred``, else the truth's, else 0.

    Returns the foreground values, their kind, and where the values came from (for messages).
    """
    recorded = recorded_convention(pred)
    values, kind, source = recorded.foreground, recorded.foreground_kind, "recorded in PRED's metadata"
    if values is None:
        source = "recorded in TRUTH's metadata"
        membrane = truth_membrane_values(truth)  # a truth that maps values to meanings (synth's does)
        if membrane is not None:
            values, kind = membrane, "boundary"
    if opts.foreground:
        foreground, source = opts.foreground, "given"
    elif values:
        foreground = tuple(values)
    else:
        foreground, source = (0,), "the default"
    return foreground, opts.foreground_kind or kind or "boundary", source


_TRUTH_FIX = (
    "pass the ground-truth labels (e.g. 'volseg convert train-labels.tif labels.zarr'), not a prediction"
)


def open_pair(pred: str | os.PathLike, truth: str | os.PathLike) -> tuple[Volume, Volume]:
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


def check_foreground(
    truth: Volume, place: Placement, sections: Sequence[int], foreground: tuple[int, ...], source: str
) -> None:
    """Refuse a positive class that no pixel (or every pixel) of the scored truth holds: nothing to score."""
    import dask

    tz = [z - place.truth_at[0] for z in sections]
    view = Sections(
        truth, tz, lambda a: np.count_nonzero(np.isin(a, foreground)), place.plane(place.truth_at)
    )
    counts = dask.compute(*[dask.delayed(view.__getitem__)(i) for i in range(len(tz))])
    total, pixels = int(sum(counts)), len(tz) * view.shape[1] * view.shape[2]
    if 0 < total < pixels:
        return
    first = Sections(truth, tz[:8], np.unique, view.plane)  # the values of a few sections, for the message
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


def check_written(vol: Volume, sections: Sequence[int], z0: int = 0) -> None:
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


def choose_sections(
    sections: str | Sequence[int] | None, opts: EvaluateOptions, place: Placement, truth: Volume
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
