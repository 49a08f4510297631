"""``volseg predict``: a probability volume, block by block."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from volseg.app.base import app, echo_json, friendly, parse_ints, warnings_as_lines
from volseg.app.choices import Backend, OutDtype, Precision
from volseg.errors import OptionError

if TYPE_CHECKING:
    from volseg.stages.predict import PredictOptions


def _bytes_option(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(text))
    except (ValueError, TypeError):
        raise OptionError(f"{option} {text!r}: write a size such as 4GiB, 512MiB or 2e9") from None


def _echo_job_script(options: PredictOptions) -> None:
    """With a jobqueue cluster file: the script each job will run, as it is submitted."""
    spec = options.cluster_spec
    if spec is None or spec.job is None:
        return
    from volseg.cluster import job_script

    typer.echo(f"cluster    {spec.describe()}; each job runs:")
    typer.echo(job_script(spec).rstrip())


@app.command("predict")
@friendly
def predict_cmd(
    model: Annotated[
        Path, typer.Argument(help="Model file written by 'volseg train' (model.pt).", show_default=False)
    ],
    image: Annotated[
        str,
        typer.Argument(
            help="Image volume (Z, Y, X), e.g. image.zarr or s3://bucket/image.zarr.", show_default=False
        ),
    ],
    out: Annotated[
        str,
        typer.Argument(
            help="Probability volume to write, e.g. prob.zarr or s3://bucket/prob.zarr.", show_default=False
        ),
    ],
    tile: Annotated[
        int | None,
        typer.Option(
            help="Inner tile edge (px), a multiple of 2**depth; default: the fastest by the speeds measured "
            "here ('volseg doctor --tune'), else the block edge up to 1024."
        ),
    ] = None,
    halo: Annotated[
        int | None, typer.Option(help="Context (px) on each side of a tile; default: the model's.")
    ] = None,
    edge: Annotated[
        int | None,
        typer.Option(
            help="Mirrored context (px) at the volume's edges, a multiple of 2**depth up to the halo; "
            "default 0 (the network's zero padding, as in training)."
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Tiles per forward pass; default 1 on CPU, 4 on a GPU.")
    ] = None,
    precision: Annotated[
        Precision, typer.Option(help="auto = bf16 where the hardware has it.")
    ] = Precision.auto,
    device: Annotated[
        str,
        typer.Option(
            help="auto, cpu, cuda or cuda:N; with several GPUs, auto / cuda give each worker (or thread) "
            "its own."
        ),
    ] = "auto",
    dtype: Annotated[
        OutDtype, typer.Option(help="Output values; uint8 = probability x 255.")
    ] = OutDtype.uint8,
    threshold: Annotated[
        float | None, typer.Option(help="Also write OUT-mask.zarr beside OUT: probability >= T as 0/1.")
    ] = None,
    roi: Annotated[
        str | None, typer.Option(help="Sub-volume z0:z1,y0:y1,x0:x1 (empty bounds: the edge).")
    ] = None,
    tta: Annotated[
        bool, typer.Option("--tta", help="Average the 8 dihedral transforms (8x the time).")
    ] = False,
    rescale: Annotated[
        bool,
        typer.Option(
            "--rescale",
            help="Normalise the image by its own mean and spread instead of the training images': for "
            "an image of another dtype or brightness than the model was trained on (otherwise refused).",
        ),
    ] = False,
    tissue_mask: Annotated[
        str | None,
        typer.Option(
            "--mask",
            help="Tissue mask volume (nonzero = compute), the image's shape or coarser by whole factors: "
            "blocks with no mask voxel are written as background without a forward pass.",
        ),
    ] = None,
    part: Annotated[
        str | None,
        typer.Option(
            help="K/N: compute the K-th of N fixed shares of the blocks (a job array of N independent jobs, "
            "K = 1..N, the same options in each); whichever finishes last marks the output complete.",
        ),
    ] = None,
    skip_empty: Annotated[
        bool,
        typer.Option(
            "--skip-empty/--no-skip-empty",
            help="Write blocks whose input window holds one value (resin, a black border) as background "
            "(probability 0) without a forward pass.",
        ),
    ] = True,
    backend: Annotated[
        Backend,
        typer.Option(
            help="Runtime of the forward pass on the CPU: torch, or openvino / onnxruntime (optional extras, "
            "pip install 'volseg[openvino]'; faster on CPUs without native bf16, see docs/tuning.md); auto: "
            "torch unless speeds measured here show an installed one faster."
        ),
    ] = Backend.auto,
    chunks: Annotated[str | None, typer.Option(help="Output chunks Z,Y,X; default: the input's.")] = None,
    block: Annotated[
        str | None,
        typer.Option(help="Work block Z,Y,X (whole output chunks); default: chunks grouped to 1024 px."),
    ] = None,
    memory_limit: Annotated[
        str | None,
        typer.Option(help="Memory for all blocks in flight, e.g. 8GiB; chooses block and batch size."),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="threads, processes, synchronous or tcp://HOST:PORT (a running dask scheduler). "
            "[default: threads, or a local cluster with --workers]"
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Alone: start a local dask cluster of N worker processes; with threads or "
            "processes: the pool size."
        ),
    ] = None,
    cluster: Annotated[
        Path | None,
        typer.Option(
            help="Cluster file (TOML): SLURM / PBS / LSF / SGE jobs started, scaled and closed by this run "
            "(pip install 'volseg[cluster]'), or a running scheduler's address; see docs/distributed.md.",
            show_default=False,
        ),
    ] = None,
    retries: Annotated[
        int,
        typer.Option(
            help="Retries of a failed block before it is reported (the cluster file's, if it sets them)."
        ),
    ] = 2,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (blocks, halo, overhead, memory) and stop.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an output written by another run or other settings.")
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show blocks, Mvox/s and ETA while running.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary (or the plan) as JSON.")] = False,
) -> None:
    """Predict a probability volume block by block with a halo, seam-free, in parallel with dask.

    Rerunning the same command resumes an interrupted run (done blocks are skipped); failed
    blocks are retried, then reported (exit 1). See docs/predict.md.

    Example: volseg predict model.pt image.zarr prob.zarr --threshold 0.5
    """
    from contextlib import nullcontext

    from volseg.app.progress import TerminalProgress
    from volseg.stages.predict import PredictOptions, predict

    options = PredictOptions(
        tile=tile,
        halo=halo,
        edge=edge,
        batch_size=batch_size,
        precision=precision.value,
        device=device,
        dtype=dtype.value,
        threshold=threshold,
        roi=roi,
        tta=tta,
        rescale=rescale,
        skip_empty=skip_empty,
        part=part,
        tissue_mask=str(tissue_mask) if tissue_mask else None,
        backend=backend.value,
        chunks=parse_ints(chunks, "--chunks"),
        block=parse_ints(block, "--block"),
        memory_limit=_bytes_option(memory_limit, "--memory-limit"),
        scheduler=scheduler,
        workers=workers,
        cluster=str(cluster) if cluster else None,
        retries=retries,
        overwrite=overwrite,
    )
    bar = progress and not as_json and not dry_run
    with warnings_as_lines(), TerminalProgress() if bar else nullcontext() as reporter:
        result = predict(model, image, out, options, dry_run=dry_run, progress=reporter)
    if dry_run:
        if as_json:
            echo_json(result.to_dict())
        else:
            typer.echo("\n".join(result.describe()))
            _echo_job_script(options)
        return
    if as_json:
        echo_json(result.to_dict())
    else:
        typer.echo(f"predict: {result.summary()}")
