"""``volseg demo``: the whole chain on an embedded synthetic stack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volseg.app.base import app, echo_json, friendly, parse_ints
from volseg.app.progress import NoteLines
from volseg.errors import OptionError


@app.command("demo")
@friendly
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for every output of the chain.")] = Path(
        "demo-out"
    ),
    data: Annotated[
        str | None,
        typer.Option(
            help="IMAGE.tif,LABELS.tif: use these stacks (0 = membrane, as ISBI) instead of synthetic data."
        ),
    ] = None,
    shape: Annotated[str, typer.Option(help="Synthetic stack size Z,Y,X.")] = "12,512,512",
    seed: Annotated[int, typer.Option(help="Seed of the synthetic stack and of training.")] = 0,
    minutes: Annotated[float, typer.Option(help="Training budget in minutes (wall clock).")] = 3.0,
    steps: Annotated[int | None, typer.Option(help="Cap on training steps (whichever ends first).")] = None,
    quick: Annotated[
        bool, typer.Option(help="A reduced run (tiny stack and model, under a minute).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing demo folder.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run the whole chain on an embedded synthetic stack.

    synth, convert, train, predict, segment, evaluate and preview, with a summary of the outputs,
    the scores and the time each stage took.

    Example: volseg demo --out demo-out --minutes 3
    """
    from volseg.app.demo import DemoOptions, demo

    base = DemoOptions.quick() if quick else DemoOptions()
    zyx = parse_ints(shape, "--shape") if not quick or shape != "12,512,512" else base.shape
    pair = None
    if data is not None:
        pair = tuple(p.strip() for p in data.split(","))
        if len(pair) != 2:
            raise OptionError(
                f"--data {data!r}: give two TIFF stacks separated by a comma, IMAGE.tif,LABELS.tif"
            )
    import dataclasses

    opts = dataclasses.replace(
        base,
        shape=zyx,
        seed=seed,
        data=pair,
        steps=steps if steps is not None else base.steps,
        minutes=minutes if not quick or minutes != 3.0 else base.minutes,
    )
    result = demo(out, opts, overwrite=overwrite, progress=None if as_json else NoteLines(with_task=False))
    if as_json:
        echo_json(result.to_dict())
    else:
        from volseg.app.report import print_demo_summary

        print_demo_summary(result.to_dict())
