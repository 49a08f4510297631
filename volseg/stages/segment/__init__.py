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
``part="K/N"`` makes the run one of N independent jobs (a job array) that each do a fixed
share of both passes and together write the single run's labels
(:mod:`~volseg.stages.segment.parts`).
The output is an OME-Zarr label volume (``image-label`` metadata) of ``uint32`` ids
(``uint64`` when the volume has 2**32 voxels or more).

The stage is a small package: :mod:`~volseg.stages.segment.options` (what decides the labels, what a
run reports), :mod:`~volseg.stages.segment.inputs` (the input's values as membrane probabilities, the
output volume), :mod:`~volseg.stages.segment.passes` (the two passes over blocks) and
:mod:`~volseg.stages.segment.parts` (the shares, waits and locks of ``--part K/N`` jobs).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from volseg.cluster import open_cluster
from volseg.core import preempt
from volseg.core.progress import Progress, Tracker
from volseg.stages.segment.inputs import boundary_from_volume, input_kind_of, open_output
from volseg.stages.segment.options import (
    CLUSTER_RETRIES,
    SegmentOptions,
    SegmentResult,
    check_cluster,
    check_run_options,
)
from volseg.stages.segment.parts import PART_WAIT_S, Part, PartsPending, parse_part
from volseg.stages.segment.passes import Run, own_blocks, scratch_volume
from volseg.storage.conventions import require_complete
from volseg.storage.locks import creating
from volseg.storage.paths import location, output_not_input
from volseg.storage.volumes import Volume, open_volume

__all__ = ["PartsPending", "SegmentOptions", "SegmentResult", "boundary_from_volume", "segment"]


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
    part: str | None = None,
    part_wait: float = PART_WAIT_S,
    cluster: str | os.PathLike | None = None,
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
    part
        ``"K/N"``: this run is job K of N independent jobs (a job array, the same arguments in each)
        that together write exactly the output of one run. Unit ``i`` of pass 1 (a band of sections
        in 2-D, a block in 3-D) and its blocks are part ``i % N + 1``'s. The jobs may start at once
        and in any order; an existing output of the same run is joined (no ``resume`` needed); the
        part that finds every block done marks the output complete. Not with ``overwrite``.
    part_wait
        With a second pass (3-D, 2-D ``relabel``): how long (s) a part that has done its share of
        pass 1 waits for the other parts' shares before it raises :class:`PartsPending` (exit 75;
        rerunning it resumes with pass 2). 0: do not wait.
    cluster
        A cluster file (``--cluster FILE.toml``, :mod:`volseg.cluster`): SLURM / PBS / LSF / SGE jobs
        started for this run and closed at its end (also on an error or a stop signal), or a running
        scheduler's address; instead of ``scheduler`` and ``workers``. A failing unit or block is tried
        ``1 + retries`` times (``[cluster.worker] retries``, default :data:`CLUSTER_RETRIES`), then
        reported failed (:class:`~volseg.errors.IncompleteRunError`); the workers must see the same paths.
    progress
        Receives the task ``"segment"``: a note at each phase, and the units and blocks done.

    Returns
    -------
    SegmentResult
        ``path``, ``mode``, ``ids``, ``labels`` (number of ids, or the upper end of the sparse id
        range), ``dtype``, ``blocks``, ``resumed_blocks`` (and ``part``, ``complete`` for a part);
        ``to_dict()`` gives them as a dict.

    Raises
    ------
    PartsPending
        A part did its share of pass 1 and the others did not finish theirs within ``part_wait``.
    """
    opts = options or SegmentOptions()
    check_run_options(chunks, overwrite, resume, scheduler, workers, input_kind)
    if opts.method in ("agglo", "mws"):
        return _agglo(prob, out, opts, input_kind, part, cluster, chunks, overwrite, resume, codec,
                      scheduler, workers, progress)  # fmt: skip
    spec = check_cluster(cluster, scheduler, workers)
    share = parse_part(part, part_wait, overwrite)
    output_not_input({"OUT": out}, {"PROB": prob})  # before anything is created or deleted
    src = open_volume(prob)
    convert = boundary_from_volume(src, opts.invert, input_kind_of(src, input_kind))
    require_complete(src, "input")
    path = location(out, "OUT")  # a local folder or a URL (s3://...)
    with creating(path) if share else contextlib.nullcontext():  # a job array's jobs: one creates the output
        vol = open_output(
            src, path, opts, chunks, overwrite, resume or share is not None, codec, input_kind,
            share.n if share else None,
        )  # fmt: skip
        second_pass = opts.mode == "3d" or opts.relabel
        scratch = scratch_volume(vol, opts.mode) if second_pass and not vol.complete else None
    blocks = own_blocks(vol, opts.mode, share)
    done = vol.done_blocks()
    resumed = sum(b in done for b in blocks)
    with Tracker(progress, "segment", len(blocks), "blocks") as tracker:
        tracker.advance(resumed)
        if vol.complete:
            tracker.note("already complete")
            return _result(vol, opts, len(blocks), resumed, vol.meta.get("labels"), share, True)
        # SIGTERM / SIGUSR1: finish the units in hand, record them, stop; a cluster made here is closed
        with preempt.stop_on_signals(), open_cluster(spec) if spec else contextlib.nullcontext() as client:
            retries = spec.retries_or(CLUSTER_RETRIES) if spec else 0
            if spec:
                tracker.note(f"on {spec.describe()}")
            run = Run(src, convert, vol, scratch, opts, scheduler, workers, tracker, share, client, retries)
            if share is not None and resumed == len(blocks):  # its share is written: only the end may be left
                labels, complete = None, run.finish(run.number)
            else:
                run.label()
                labels = run.number()
                complete = run.finish(lambda: labels)
    return _result(vol, opts, len(blocks), resumed, labels, share, complete)


def _agglo(
    prob: str | os.PathLike, out: str | os.PathLike, opts: SegmentOptions, input_kind: str | None,
    part: str | None, cluster: str | os.PathLike | None, chunks: Sequence[int] | None, overwrite: bool,
    resume: bool, codec: str | None, scheduler: str | None, workers: int | None, progress: Progress | None,
) -> SegmentResult:  # fmt: skip
    from volseg.errors import OptionError
    from volseg.stages.segment.graph import segment_affinities

    for given, flag in ((input_kind, "--input-kind"), (part, "--part"), (cluster, "--cluster")):
        if given is not None:
            raise OptionError(
                f"{flag}: not with --method {opts.method} yet; run one job on this machine's scheduler"
            )
    output_not_input({"OUT": out}, {"PROB": prob})
    return segment_affinities(
        prob, out, opts, chunks=chunks, overwrite=overwrite, resume=resume, codec=codec,
        scheduler=scheduler, workers=workers, progress=progress,
    )  # fmt: skip


def _result(
    vol: Volume, opts: SegmentOptions, blocks: int, resumed: int, labels: int | None, part: Part | None,
    complete: bool,
) -> SegmentResult:  # fmt: skip
    if labels is None and complete:
        labels = open_volume(vol.path).meta.get("labels")  # recorded by whichever run completed it
    return SegmentResult(
        path=str(vol.path),
        mode=opts.mode,
        ids="consecutive" if (opts.mode == "3d" or opts.relabel) else "sparse",
        labels=labels,
        dtype=str(vol.dtype),
        blocks=blocks,
        resumed_blocks=resumed,
        part=part.name if part else None,
        complete=complete,
    )
