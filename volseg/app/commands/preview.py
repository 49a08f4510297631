"""``volseg preview``: a PNG montage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volseg.app.base import app, friendly
from volseg.app.choices import PreviewStyle
from volseg.errors import OptionError


@app.command("preview")
@friendly
def preview_cmd(
    volume: Annotated[
        str | None,
        typer.Argument(help="The volume to show (image, probability, mask or labels).", show_default=False),
    ] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="The PNG to write.")] = Path("preview.png"),
    overlay: Annotated[
        str | None,
        typer.Option(
            help="A probability, mask or label volume drawn in a second row (over the raw data), where it "
            "lies: an ROI (e.g. from 'volseg predict --roi') is placed by its OME translation."
        ),
    ] = None,
    sections: Annotated[
        str | None,
        typer.Option(
            help="Sections of VOLUME to draw: 0,5,10 or 0:30:5; default: 4 evenly spaced, where the "
            "overlay lies."
        ),
    ] = None,
    level: Annotated[
        str,
        typer.Option(help="Pyramid level to read: auto (the smallest that still fills a panel) or a number."),
    ] = "auto",
    panel: Annotated[int, typer.Option(help="Longer side of each panel in pixels.")] = 320,
    columns: Annotated[int, typer.Option(help="Sections per row before the montage wraps.")] = 6,
    style: Annotated[
        PreviewStyle, typer.Option(help="How cells are drawn over the raw data.")
    ] = PreviewStyle.both,
    alpha: Annotated[float, typer.Option(help="Opacity of filled masks and cells.")] = 0.45,
    curves: Annotated[
        Path | None, typer.Option(help="Draw the training curves of this train log (JSON lines) instead.")
    ] = None,
) -> None:
    """Write a PNG montage of a few sections, with probabilities, masks or cells over the raw data.

    Reads only the drawn sections, from a downsampled pyramid level where there is one.

    Example: volseg preview image.zarr --overlay cells.zarr --sections 0:30:10 -o preview.png
    """
    from volseg.core.sections import parse_sections
    from volseg.stages.preview import PreviewOptions, preview
    from volseg.storage.volumes import open_volume

    if level != "auto" and not level.isdigit():
        raise OptionError(f"--level {level!r}: use auto or a level number such as 2")
    chosen = None
    if sections is not None and volume is not None:
        chosen = parse_sections(sections, open_volume(volume).shape[0])
    opts = PreviewOptions(
        sections=chosen,
        level=None if level == "auto" else int(level),
        panel=panel,
        columns=columns,
        style=style.value,
        alpha=alpha,
    )
    result = preview(volume, out, overlay=overlay, options=opts, curves=curves)
    if result.width is not None:
        region = result.overlay_region
        where = ", ".join(f"{ax} {a}:{b}" for ax, (a, b) in region.items()) if region else ""
        typer.echo(
            f"{result.path}: {result.width} x {result.height} px, sections "
            f"{', '.join(map(str, result.sections or []))}, level {result.level}"
            + (f"; overlay at {where}" if where else "")
        )
    else:
        typer.echo(result.path)
