"""``volseg info``: describe a volume."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

try:  # newer typer carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_errors
try:
    from typer.exceptions import Abort as ClickAbort
except ImportError:  # pragma: no cover
    ClickAbort = getattr(click_errors, "Abort", KeyboardInterrupt)

from volseg.app.base import app, echo_json, friendly


@app.command()
@friendly
def info(
    volume: Annotated[Path, typer.Argument(help="A volume folder (OME-Zarr v3).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
) -> None:
    """Describe a volume: shape, dtype, chunks, codec, sizes, voxel size, provenance, completion.

    Example: volseg info image.zarr
    """
    from volseg.storage.volumes import volume_info

    data = volume_info(volume)
    if as_json:
        echo_json(data)
        return
    from volseg.app.report import print_info

    print_info(data)
