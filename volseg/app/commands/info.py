"""``volseg info``: describe a volume."""

from __future__ import annotations

from typing import Annotated

import typer

from volseg.app.base import app, echo_json, friendly


@app.command()
@friendly
def info(
    volume: Annotated[str, typer.Argument(help="A volume (OME-Zarr v3): a folder or a URL (s3://...).")],
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
