"""The ``volseg`` command line: each command parses its options and calls the API.

Errors a user can cause (:class:`volseg.errors.VolsegError`) print one line on stderr
and exit with code 2; ``volseg --debug COMMAND`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from volseg import __version__
from volseg.errors import OptionError, VolsegError

app = typer.Typer(
    name="volseg",
    help="Segment electron-microscopy volumes with a U-Net, block by block.\n\n"
    "Example: volseg demo --out demo-out",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_STATE = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])


def _version(value: bool) -> None:
    if value:
        typer.echo(f"volseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
) -> None:
    _STATE["debug"] = debug


def friendly(fn: F) -> F:
    """Turn a VolsegError into one line on stderr and its exit code (2 for bad input)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VolsegError as exc:
            if _STATE["debug"]:
                raise
            message = " ".join(str(exc).split())  # one line, whatever the message held
            typer.echo(f"volseg: error: {message}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("volseg: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------ option parsing
def parse_ints(text: str | None, option: str, n: int = 3) -> tuple[int, ...] | None:
    """Parse ``"1,512,512"`` into ``(1, 512, 512)``; None stays None."""
    if text is None:
        return None
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise OptionError(f"{option} {text!r}: expected {n} integers separated by commas, e.g. 1,512,512") from None
    if len(values) != n or any(v < 1 for v in values):
        raise OptionError(f"{option} {text!r}: expected {n} positive integers separated by commas")
    return values


def parse_floats(text: str | None, option: str, n: int = 3) -> tuple[float, ...] | None:
    """Parse ``"50,4,4"`` into ``(50.0, 4.0, 4.0)``; None stays None."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise OptionError(f"{option} {text!r}: expected {n} numbers separated by commas, e.g. 50,4,4") from None
    if len(values) != n or any(not v > 0 for v in values):
        raise OptionError(f"{option} {text!r}: expected {n} positive numbers separated by commas")
    return values


def echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


# ------------------------------------------------------------------------- info
@app.command()
@friendly
def info(
    volume: Annotated[Path, typer.Argument(help="A volume folder (OME-Zarr v3).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
) -> None:
    """Describe a volume: shape, dtype, chunks, codec, sizes, voxel size, provenance, completion.

    Example: volseg info image.zarr
    """
    from volseg.volume import volume_info

    data = volume_info(volume)
    if as_json:
        echo_json(data)
        return
    from volseg._report import print_info

    print_info(data)


# @@COMMANDS@@ (stage commands are added below this line)


# ------------------------------------------------------------------------ synth
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
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from volseg.synth import synth

    columns = (
        TextColumn("synth"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks"),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=Console(stderr=True), disable=not progress or as_json)
    task = bar.add_task("synth", total=None)

    def report(done: int, total: int) -> None:  # the bar starts with the first chunk, after all checks
        bar.start()
        bar.update(task, completed=done, total=total)

    try:
        result = synth(
            out,
            shape=parse_ints(shape, "--shape"),
            seed=seed,
            chunks=parse_ints(chunks, "--chunks"),
            overwrite=overwrite,
            voxel_size=parse_floats(voxel_size, "--voxel-size"),
            codec=codec,
            workers=workers,
            progress=report,
        )
    finally:
        bar.stop()
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="volseg")
