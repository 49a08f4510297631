"""``volseg segment``: membrane probabilities -> cell labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volseg.app.base import app, echo_json, friendly, parse_ints
from volseg.app.choices import InputKind, SeedKind, SegmentMethod, SegmentMode
from volseg.app.progress import NoteLines


@app.command("segment")
@friendly
def segment_cmd(
    prob: Annotated[
        Path,
        typer.Argument(
            help="Probability (uint8 or float) or binary mask volume, e.g. the output of 'volseg predict'.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Argument(help="The label volume to write (cells.zarr).", show_default=False)],
    mode: Annotated[
        SegmentMode,
        typer.Option(
            help="2d: each section on its own (ssTEM); 3d: connected components consistent across blocks."
        ),
    ] = SegmentMode.two_d,
    method: Annotated[
        SegmentMethod,
        typer.Option(
            help="2-D: seeded watershed, or plain connected components of the interior; agglo: PROB is an "
            "affinity volume (c, z, y, x), cut into fragments merged by mean affinity, global ids "
            "(2d: per section; 3d: linked across sections)."
        ),
    ] = SegmentMethod.watershed,
    seeds: Annotated[
        SeedKind,
        typer.Option(
            help="Watershed seeds: h-minima of the boundary map, or the tops of the interior's "
            "distance transform."
        ),
    ] = SeedKind.distance,
    threshold: Annotated[
        float, typer.Option(help="Boundary probability below which a pixel is cell interior.")
    ] = 0.5,
    sigma: Annotated[
        float, typer.Option(help="Gaussian smoothing of the boundary map in y, x (pixels; 0: none).")
    ] = 1.0,
    min_distance: Annotated[
        int, typer.Option(help="Smallest distance between distance-transform seeds (pixels).")
    ] = 8,
    distance_h: Annotated[
        float, typer.Option(help="Distance seeds: least height of a distance-transform maximum (pixels).")
    ] = 6.0,
    h: Annotated[float, typer.Option("--h", help="Depth of the h-minima seeds (probability units).")] = 0.1,
    min_size: Annotated[
        int, typer.Option(help="Drop segments smaller than this (pixels in 2d, voxels in 3d).")
    ] = 20,
    merge_threshold: Annotated[
        float,
        typer.Option(help="agglo: regions merge while the mean affinity between them is at least this."),
    ] = 0.5,
    fragment_threshold: Annotated[
        float,
        typer.Option(help="agglo: fragments join in-plane voxel pairs of at least this affinity (>= merge)."),
    ] = 0.7,
    keep_boundaries: Annotated[
        bool,
        typer.Option(
            "--keep-boundaries", help="2-D watershed: flood only the interior, so membranes stay 0."
        ),
    ] = False,
    relabel: Annotated[
        bool,
        typer.Option(
            "--relabel", help="2-D: consecutive ids (a second pass) instead of sparse ids z*Y*X + n."
        ),
    ] = False,
    invert: Annotated[
        bool | None,
        typer.Option(
            "--invert/--no-invert",
            help="The input is a cell (interior) "
            "probability / a membrane probability; default: from its "
            "metadata, else membrane.",
            show_default=False,
        ),
    ] = None,
    input_kind: Annotated[
        InputKind | None,
        typer.Option(
            help="What PROB holds, whatever its recorded kind (e.g. probabilities from another tool "
            "converted to Zarr); default: its recorded kind, which must be probability or mask.",
            show_default=False,
        ),
    ] = None,
    chunks: Annotated[
        str | None, typer.Option(help="Output chunks Z,Y,X; default: the input's blocks.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Dask worker threads; default: one per core.")] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler: threads, processes or synchronous; "
            "default: threads, or the active distributed client."
        ),
    ] = None,
    cluster: Annotated[
        Path | None,
        typer.Option(
            help="Cluster file (TOML): SLURM / PBS / LSF / SGE jobs started, scaled and closed by this run "
            "(pip install 'volseg[cluster]'), or a running scheduler's address; a failing block is retried "
            "as the file says (default 2), then reported (exit 1). See docs/distributed.md.",
            show_default=False,
        ),
    ] = None,
    part: Annotated[
        str | None,
        typer.Option(
            help="K/N: do the K-th of N fixed shares of both passes (a job array of N independent jobs, "
            "K = 1..N, the same options in each; they may start at once); the last to finish marks the "
            "output complete.",
            show_default=False,
        ),
    ] = None,
    part_wait: Annotated[
        float,
        typer.Option(
            help="With --part and a second pass (3d, --relabel): seconds to wait for the other parts' "
            "first pass, then exit 75 (the same command resumes with the second pass); 0: do not wait."
        ),
    ] = 600.0,  # volseg.stages.segment.parts.PART_WAIT_S (not imported here: the CLI starts fast)
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run (same input and options).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Segment cells into instance labels from a membrane probability volume, block by block.

    Resumable (--resume) and dask-parallel; writes an OME-Zarr label volume that napari shows as labels.
    With --part K/N, N jobs of a job array share the work and together write the same labels.

    Example: volseg segment prob.zarr cells.zarr --min-size 50
    """
    import time

    from volseg.stages.segment import SegmentOptions, segment

    opts = SegmentOptions(
        mode=mode.value,
        method=method.value,
        seeds=seeds.value,
        threshold=threshold,
        sigma=sigma,
        min_distance=min_distance,
        distance_h=distance_h,
        h=h,
        min_size=min_size,
        keep_boundaries=keep_boundaries,
        relabel=relabel,
        invert=invert,
        merge_threshold=merge_threshold,
        fragment_threshold=fragment_threshold,
    )
    start = time.perf_counter()

    summary = segment(
        prob,
        out,
        options=opts,
        input_kind=input_kind.value if input_kind else None,
        chunks=parse_ints(chunks, "--chunks"),
        overwrite=overwrite,
        resume=resume,
        scheduler=scheduler,
        workers=workers,
        cluster=cluster,
        part=part,
        part_wait=part_wait,
        progress=None if as_json else NoteLines(),  # one line per phase: "segment: labelling ..."
    ).to_dict()
    summary["seconds"] = round(time.perf_counter() - start, 2)
    if as_json:
        echo_json(summary)
        return
    count = (
        f"{summary['labels']} labels"
        if summary["ids"] == "consecutive"
        else f"sparse ids up to {summary['labels']}"
    )
    if summary.get("part"):
        end = "the output is complete" if summary["complete"] else "the last part to finish completes it"
        typer.echo(
            f"{summary['path']}: part {summary['part']}: {summary['blocks']} blocks of its share "
            f"({summary['resumed_blocks']} already done), {summary['mode']} mode, {summary['seconds']} s; "
            f"{end}"
        )
        return
    typer.echo(
        f"{summary['path']}: {count}, {summary['dtype']}, {summary['mode']} mode, {summary['blocks']} blocks "
        f"({summary['resumed_blocks']} already done), {summary['seconds']} s"
    )
