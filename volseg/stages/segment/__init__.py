"""Membrane probabilities -> cell instance labels, block by block.

The arrays are segmented by the kernels of :mod:`volseg.core.segmentation`; this stage reads the
input lazily, maps those kernels over blocks and writes the labels. Two modes:

``2d`` (default, for anisotropic ssTEM)
    Every section is segmented on its own (:func:`volseg.core.segmentation.segment_section`:
    smoothing, seeds, a seeded watershed, small segments given to their neighbours; or the plain
    connected components of the interior with ``method="cc"``). The unit of work is a band of whole
    sections (one output block deep), so a section is never cut. Ids are unique over the volume:
    section ``z`` owns the id range ``z * Y * X + 1 ... (z + 1) * Y * X`` ("sparse" ids; ids depend
    only on the section, not on the chunking). ``relabel=True`` makes them consecutive instead,
    with a second streaming pass.

``3d``
    Connected components of the thresholded interior (6-connectivity) that are
    consistent across block borders: each block is labelled on its own, the labels
    touching across block faces are merged (``scipy.sparse.csgraph``), objects smaller
    than ``min_size`` voxels are removed, and every block is rewritten with
    consecutive global ids. Only the block faces and per-block sizes are kept in
    memory during the merge, never the volume.

Both modes run as a dask graph of independent block tasks and are resumable: a block
is recorded as done only after its data is stored, a rerun with the same options
skips the done blocks, a rerun with other options is refused unless ``overwrite``.
The output is an OME-Zarr label volume (``image-label`` metadata) of ``uint32`` ids
(``uint64`` when the volume has 2**32 voxels or more).

The stage is a small package: :mod:`~volseg.stages.segment.options` (what decides the labels, what a
run reports), :mod:`~volseg.stages.segment.inputs` (the input's values as membrane probabilities, the
output volume) and :mod:`~volseg.stages.segment.passes` (the two passes over blocks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from volseg.core import preempt
from volseg.core.progress import Progress, Tracker
from volseg.stages.segment.inputs import boundary_from_volume, input_kind_of, open_output
from volseg.stages.segment.options import SegmentOptions, SegmentResult, check_run_options
from volseg.stages.segment.passes import Run, scratch_volume
from volseg.storage.conventions import require_complete
from volseg.storage.paths import output_not_input
from volseg.storage.volumes import Volume, open_volume

__all__ = ["SegmentOptions", "SegmentResult", "boundary_from_volume", "segment"]


def segment(
    prob: str | os.PathLike,
    out: str | os.PathLike,
    options: SegmentOptions | None = None,
    *,
    input_kind: str | None = None,
    chunks: Sequence[int] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    codec: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> SegmentResult:
    """Segment cells in a probability (or mask) volume into an instance label volume.

    Parameters
    ----------
    prob
        Input volume ``(Z, Y, X)`` recorded as a probability or mask volume (what
        ``volseg predict`` writes): uint8 probabilities 0..255 (or with ``scale`` in
        their metadata), float probabilities 0..1, or a binary mask. Raw EM images,
        labels and volumes of unrecorded kind are refused, unless ``input_kind`` says
        what they hold.
    out
        Output label volume (OME-Zarr with ``image-label`` metadata), placed where the
        input lies (the input's OME scale and translation). Never the input, inside it
        or holding it.
    options
        :class:`SegmentOptions`; defaults suit ISBI-like ssTEM at 4 nm/pixel.
    input_kind
        ``"probability"`` or ``"mask"``: what the input holds, whatever its recorded kind
        (e.g. probabilities from another tool converted to Zarr).
    chunks
        Output chunks ``(z, y, x)``; default: the input's blocks.
    overwrite
        Replace an existing output (otherwise an existing output is refused).
    resume
        Continue an interrupted run: the done blocks are kept, the others are written.
        Refused when the output was made from another input or with other options.
    codec
        Output codec (see :func:`volseg.storage.volumes.parse_codec`).
    scheduler, workers
        Dask scheduler (``"threads"``, ``"processes"``, ``"synchronous"``; default: the
        active one, e.g. a ``distributed.Client``) and its number of workers.
    progress
        Receives the task ``"segment"``: a note at each phase, and the units and blocks done.

    Returns
    -------
    SegmentResult
        ``path``, ``mode``, ``ids``, ``labels`` (number of ids, or the upper end of the sparse id
        range), ``dtype``, ``blocks``, ``resumed_blocks``; ``to_dict()`` gives them as a dict.
    """
    opts = options or SegmentOptions()
    check_run_options(chunks, overwrite, resume, scheduler, workers, input_kind)
    output_not_input({"OUT": out}, {"PROB": prob})  # before anything is created or deleted
    src = open_volume(prob)
    convert = boundary_from_volume(src, opts.invert, input_kind_of(src, input_kind))
    require_complete(src, "input")
    vol = open_output(src, Path(os.fspath(out)), opts, chunks, overwrite, resume, codec, input_kind)
    resumed = len(vol.done_blocks())
    with Tracker(progress, "segment", vol.n_blocks, "blocks") as tracker:
        tracker.advance(resumed)
        if vol.complete:
            tracker.note("already complete")
            return _result(vol, opts, resumed)
        scratch = None if opts.mode == "2d" and not opts.relabel else scratch_volume(vol, opts.mode)
        run = Run(src, convert, vol, scratch, opts, scheduler, workers, tracker)
        with preempt.stop_on_signals():  # SIGTERM / SIGUSR1: finish the units in hand, record them, stop
            run.label()
            run.number()
        vol.mark_complete()
    return _result(vol, opts, resumed)


def _result(vol: Volume, opts: SegmentOptions, resumed: int) -> SegmentResult:
    return SegmentResult(
        path=str(vol.path),
        mode=opts.mode,
        ids="consecutive" if (opts.mode == "3d" or opts.relabel) else "sparse",
        labels=vol.meta.get("labels"),
        dtype=str(vol.dtype),
        blocks=vol.n_blocks,
        resumed_blocks=resumed,
    )
