"""The ``volseg`` command group and what every command shares: one-line errors, option parsing, warnings.

Errors a user can cause (:class:`volseg.errors.VolsegError`) print one line on stderr
and exit with code 2; ``volseg --debug COMMAND`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

try:  # newer typer carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_errors
try:
    from typer.exceptions import Abort as ClickAbort
except ImportError:  # pragma: no cover
    ClickAbort = getattr(click_errors, "Abort", KeyboardInterrupt)

from volseg.errors import OptionError, VolsegError, VolsegWarning, flag, renamed
from volseg.version import __version__

#: convert -> train -> predict -> segment -> evaluate -> preview; then the whole chain, its data, a look.
COMMAND_ORDER = (
    "convert", "train", "predict", "segment", "evaluate", "preview", "demo", "synth", "info", "doctor",
)  # fmt: skip


class _Group(TyperGroup):
    """The command group: one line for every error, also for those click finds while parsing.

    Click's usage errors (a missing argument, an option that is not an
    integer, an unknown option) are printed as one line naming the option, with exit code 2,
    like volseg's own errors, instead of a usage box.
    """

    def list_commands(self, ctx: Any) -> list[str]:
        """The commands in the order of the data flow (``--help`` and docs/cli.md list them so)."""
        known = [name for name in COMMAND_ORDER if name in self.commands]
        return known + sorted(set(self.commands) - set(known))

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except VolsegError as exc:
            if _STATE["debug"]:
                raise
            typer.echo(f"volseg: error: {one_line(exc)}", err=True)
            sys.exit(exc.exit_code)
        except click_errors.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "volseg"
            message = " ".join(exc.format_message().split()).rstrip(".")
            if message:  # none when the help was shown for a command given no arguments
                typer.echo(f"volseg: error: {message}; see '{where} --help'", err=True)
            sys.exit(exc.exit_code)
        except click_errors.ClickException as exc:
            typer.echo(f"volseg: error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except ClickAbort:
            typer.echo("volseg: interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="volseg",
    cls=_Group,
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
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
    ] = False,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            envvar="VOLSEG_STORAGE",
            help="A TOML file of object-storage options, a table per protocol ([s3] endpoint_url, profile, "
            "anon, ...); see docs/storage.md.",
            show_default=False,
        ),
    ] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option(
            help="The S3 endpoint of s3:// URLs (MinIO, Ceph, ...), e.g. http://127.0.0.1:9000.",
            show_default=False,
        ),
    ] = None,
    profile: Annotated[
        str | None, typer.Option(help="The credentials profile of s3:// URLs (~/.aws).", show_default=False)
    ] = None,
    anon: Annotated[
        bool, typer.Option("--anon", help="Read s3:// URLs without credentials (public buckets).")
    ] = False,
) -> None:
    from volseg.storage.locations import configure

    _STATE["debug"] = debug
    configure(file=storage, endpoint_url=endpoint_url, profile=profile, anon=anon or None)


def one_line(exc: VolsegError) -> str:
    """The error as the CLI prints it: one line, with the CLI flag where the message names an API argument."""
    if exc.argument and not exc.argument.startswith("-"):
        exc = renamed(exc, flag(exc.argument))
    return " ".join(str(exc).split())  # one line, whatever the message held


def friendly(fn: F) -> F:
    """Turn a VolsegError into one line on stderr and its exit code (2 for bad input)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VolsegError as exc:
            if _STATE["debug"]:
                raise
            typer.echo(f"volseg: error: {one_line(exc)}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("volseg: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------ option parsing
def _parse_numbers(text: str, option: str, n: int, kind: type, words: str, example: str) -> tuple:
    parts = [p.strip() for p in (text.replace("x", ",") if kind is int else text).split(",")]
    try:
        values = tuple(kind(p) for p in parts)
    except ValueError:
        raise OptionError(
            f"{option} {text!r}: expected {n} {words} separated by commas, e.g. {example}"
        ) from None
    if len(values) != n or any(not v > 0 for v in values):
        raise OptionError(f"{option} {text!r}: expected {n} positive {words} separated by commas")
    return values


def parse_ints(text: str | None, option: str, n: int = 3) -> tuple[int, ...] | None:
    """Parse ``"1,512,512"`` (or ``1x512x512``) into ``(1, 512, 512)``; None stays None."""
    return None if text is None else _parse_numbers(text, option, n, int, "integers", "1,512,512")


def parse_floats(text: str | None, option: str, n: int = 3) -> tuple[float, ...] | None:
    """Parse ``"50,4,4"`` into ``(50.0, 4.0, 4.0)``; None stays None."""
    return None if text is None else _parse_numbers(text, option, n, float, "numbers", "50,4,4")


def echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """A stage's warnings (:class:`~volseg.errors.VolsegWarning`; stages do not print) as one line each.

    Each is shown every time, as ``volseg: warning: ...`` on stderr; other warnings as Python shows them.
    """
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, VolsegWarning):
            typer.echo(f"volseg: warning: {message}", err=True)
        else:
            shown(message, category, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("always", VolsegWarning)
        warnings.showwarning = show
        yield
