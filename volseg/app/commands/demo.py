"""``volseg demo``: the whole chain on an embedded synthetic stack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volseg.app.base import app, echo_json, friendly, parse_ints
from volseg.app.progress import LineProgress
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
    steps: Annotated[
        int,
        typer.Option(help="Training steps (work, not time: the same model on any machine of a CPU class)."),
    ] = 800,
    minutes: Annotated[
        float | None,
        typer.Option(
            help="Optional wall-clock cap on training; with it the model depends on the machine's speed."
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="A reduced run (tiny stack and model, under a minute).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing demo folder.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run the whole chain on an embedded synthetic stack.

    synth, convert, train, predict, segment, evaluate and preview, with a summary of the outputs,
    the scores and the time each stage took.

    Exits 1, after the summary, when the model did not beat the trivial answer (everything is cell).

    Example: volseg demo --out demo-out --steps 800
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
        steps=steps if not quick or steps != 800 else base.steps,
        minutes=minutes if minutes is not None else base.minutes,
    )
    result = demo(out, opts, overwrite=overwrite, progress=None if as_json else LineProgress())
    if as_json:
        echo_json(result.to_dict())
    else:
        from volseg.app.report import print_demo_summary

        print_demo_summary(result.to_dict())
    if result.learned is False:
        prob, trivial = result.scores["probabilities"], result.scores["trivial"]
        typer.echo(
            f"volseg: demo: the model did not learn: held-out pixel error {prob['pixel_error']:.4f} "
            f"against {trivial['pixel_error']:.4f} for the trivial answer (everything is cell); train longer "
            "(--steps) or check the data",
            err=True,
        )
        raise typer.Exit(1)
