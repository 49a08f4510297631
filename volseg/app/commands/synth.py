"""``volseg synth``: a synthetic ssTEM-like stack with exact labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volseg.app.base import app, echo_json, friendly, parse_floats, parse_ints


@app.command("synth")
@friendly
def synth_cmd(
    out: Annotated[
        Path,
        typer.Argument(
            help="Folder to write image.zarr, cells.zarr and membranes.zarr into.", show_default=False
        ),
    ],
    shape: Annotated[str, typer.Option(help="Volume size Z,Y,X in voxels.")] = "30,512,512",
    seed: Annotated[
        int, typer.Option(min=0, help="Selects the volume; same seed and shape, same bytes.")
    ] = 0,
    chunks: Annotated[
        str | None, typer.Option(help="Chunk shape Z,Y,X (also the unit of generation); default 1,1024,1024.")
    ] = None,
    voxel_size: Annotated[
        str, typer.Option("--voxel-size", help="Voxel size Z,Y,X in nanometres, recorded in the metadata.")
    ] = "50,4,4",
    codec: Annotated[
        str, typer.Option(help="blosc-zstd, blosc-lz4, zstd, gzip or none, optionally :LEVEL.")
    ] = "blosc-zstd",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing volumes.")] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Threads generating chunks at once; the output does not depend on it.")
    ] = 1,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Write a synthetic ssTEM-like stack with exact labels (membranes: 255 interior, 0 membrane, as ISBI).

    Example: volseg synth synth-out --shape 30,512,512 --seed 0
    """
    from contextlib import nullcontext

    from volseg.app.progress import TerminalProgress
    from volseg.stages.synth import synth

    # the bar starts with the first chunk, after all checks
    with TerminalProgress() if progress and not as_json else nullcontext() as bar:
        result = synth(
            out,
            shape=parse_ints(shape, "--shape"),
            seed=seed,
            chunks=parse_ints(chunks, "--chunks"),
            overwrite=overwrite,
            voxel_size=parse_floats(voxel_size, "--voxel-size"),
            codec=codec,
            workers=workers,
            progress=bar,
        )
    summary = {
        "out": str(result.out),
        "volumes": [str(result.image), str(result.cells), str(result.membranes)],
        "shape": list(result.shape),
        "seed": result.seed,
        "membrane_fraction": round(result.membrane_fraction, 4),
        "seconds": round(result.seconds, 2),
        "mvox_per_s": round(result.mvox_per_s, 2),
    }
    if as_json:
        echo_json(summary)
        return
    typer.echo(
        f"{result.out}: image.zarr, cells.zarr, membranes.zarr  {' x '.join(map(str, result.shape))}, "
        f"seed {result.seed}, membrane {100 * result.membrane_fraction:.1f} %, "
        f"{result.seconds:.1f} s ({result.mvox_per_s:.2f} Mvox/s)"
    )
