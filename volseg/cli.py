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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="volseg")
