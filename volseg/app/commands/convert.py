"""``volseg convert``: TIFF/PNG stacks -> OME-Zarr."""

from __future__ import annotations

from typing import Annotated

import typer

from volseg.app.base import app, friendly, parse_floats, parse_ints
from volseg.app.choices import VolumeKind


@app.command("convert")
@friendly
def convert_cmd(
    src: Annotated[
        str,
        typer.Argument(
            help="A multi-page TIFF (ImageJ, OME, BigTIFF), one 2-D TIFF or PNG, a folder of per-section "
            "TIFF/PNG files, or a quoted glob pattern such as 'sections/*.png'.",
            show_default=False,
        ),
    ],
    out: Annotated[
        str,
        typer.Argument(
            help="The volume to write: a folder (image.zarr) or a URL (s3://bucket/image.zarr).",
            show_default=False,
        ),
    ],
    chunks: Annotated[
        str | None, typer.Option(help="Chunk shape Z,Y,X; default 1,1024,1024 clipped to the stack.")
    ] = None,
    codec: Annotated[
        str, typer.Option(help="blosc-zstd, blosc-lz4, zstd, gzip or none, optionally :LEVEL (e.g. zstd:5).")
    ] = "blosc-zstd",
    voxel_size: Annotated[
        str | None,
        typer.Option(
            "--voxel-size",
            help="Voxel size Z,Y,X in --unit (nanometer unless --unit says otherwise); default: from the "
            "TIFF metadata, else 1,1,1 with no unit.",
        ),
    ] = None,
    unit: Annotated[
        str | None, typer.Option(help="Unit of the voxel size: nanometer, micrometer, ... (nm, um accepted).")
    ] = None,
    channel: Annotated[
        int | None, typer.Option(help="Channel to convert from an RGB or multi-channel source (0, 1, ...).")
    ] = None,
    order: Annotated[
        str | None,
        typer.Option(
            help="Section order for folders and globs: natural (default, 2 before 10), name, or a text file "
            "listing the section file names in order."
        ),
    ] = None,
    shards: Annotated[
        str | None,
        typer.Option(
            help="Shard shape Z,Y,X in whole chunks (e.g. 1,8192,8192): one file per shard instead of per "
            "chunk, for stacks with very many chunks; default: no shards."
        ),
    ] = None,
    kind: Annotated[
        VolumeKind,
        typer.Option(
            help="What the stack holds, recorded for the stages that read it: image (raw EM), label "
            "(annotations), mask (binary) or probability (a map from another tool)."
        ),
    ] = VolumeKind.image,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted conversion (same sources and options).")
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar with sections/s and ETA.")
    ] = True,
) -> None:
    """Convert a TIFF/PNG stack (file, folder or glob) into an OME-Zarr volume, section by section.

    Memory stays at one band of chunks; an interrupted run continues with --resume.

    Example: volseg convert train-volume.tif image.zarr --voxel-size 50,4,4
    """
    from contextlib import nullcontext

    from volseg.app.progress import TerminalProgress
    from volseg.stages.convert import convert

    with TerminalProgress() if progress else nullcontext() as bar:
        result = convert(
            src,
            out,
            chunks=parse_ints(chunks, "--chunks"),
            codec=codec,
            voxel_size=parse_floats(voxel_size, "--voxel-size"),
            unit=unit,
            overwrite=overwrite,
            resume=resume,
            channel=channel,
            order=order,
            shards=parse_ints(shards, "--shards"),
            kind=kind.value,
            progress=bar,
        )
    zyx = lambda v: " x ".join(str(x) for x in v)  # noqa: E731
    unit_text = f" {result.unit}" if result.unit else " (no unit)"
    typer.echo(
        f"{result.path}: {zyx(result.shape)} {result.dtype}, chunks {zyx(result.chunks)}, "
        f"voxel {zyx(result.voxel_size)}{unit_text}, {result.volume.meta.get('status')}"
    )
