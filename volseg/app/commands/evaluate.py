"""``volseg evaluate``: score a prediction against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volseg.app.base import app, friendly
from volseg.app.choices import ForegroundKind, InstanceMode


@app.command("evaluate")
@friendly
def evaluate_cmd(
    pred: Annotated[
        str,
        typer.Argument(
            help="Probability, mask or label (instance) volume to score; an ROI (from 'volseg predict "
            "--roi') is placed on TRUTH by its OME translation.",
            show_default=False,
        ),
    ],
    truth: Annotated[
        str,
        typer.Argument(
            help="Ground-truth labels: binary (e.g. ISBI 0/255) or instances; not a probability volume.",
            show_default=False,
        ),
    ],
    sections: Annotated[
        str | None,
        typer.Option(
            help="Sections of TRUTH to score: A:B (B excluded), 0,5,10 or 0:30:5; default: all where PRED "
            "lies."
        ),
    ] = None,
    foreground: Annotated[
        str | None,
        typer.Option(
            help="Truth label values of the positive class, as in "
            "training (ISBI: 0); default: from PRED's metadata, "
            "else 0."
        ),
    ] = None,
    foreground_kind: Annotated[
        ForegroundKind | None,
        typer.Option(
            help="The positive class is the boundary between cells or the objects; default: from PRED's "
            "metadata, else boundary.",
            show_default=False,
        ),
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="Probability above which a pixel is positive (pixel metrics).")
    ] = 0.5,
    isbi: Annotated[
        bool,
        typer.Option(
            "--isbi/--no-isbi",
            help="Compute the ISBI V_rand / V_info of probabilities (11 thresholds per section).",
        ),
    ] = True,
    instance_mode: Annotated[
        InstanceMode,
        typer.Option(
            help="Labels: score each section on its own (2d) or "
            "3-D objects (3d); auto: as PRED was "
            "segmented."
        ),
    ] = InstanceMode.auto,
    objects: Annotated[
        int,
        typer.Option(
            min=0,
            help="Labels: list this many of the worst split truth objects and merging segments "
            "(ids, voxels, bounding boxes) in the --json report; 0: none.",
        ),
    ] = 50,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the report as JSON to this file (never one of the inputs)."),
    ] = None,
) -> None:
    """Score a prediction against ground truth: pixel error, Dice, IoU, V_rand, V_info, ARAND, VOI, CREMI.

    Per section and overall, one section at a time; probabilities and masks get pixel and ISBI 2012 scores,
    label volumes get instance scores. A prediction of an ROI is scored on the part of the truth it covers.

    Example: volseg evaluate prob.zarr labels.zarr --foreground 0 --sections 25:30 --json report.json
    """
    from volseg.app.report import print_report
    from volseg.stages.evaluate import EvaluateOptions, evaluate, parse_foreground

    opts = EvaluateOptions(
        foreground=parse_foreground(foreground),
        foreground_kind=foreground_kind.value if foreground_kind else None,
        threshold=threshold,
        isbi=isbi,
        instance_mode=instance_mode.value,
        objects=objects,
    )
    report = evaluate(pred, truth, options=opts, sections=sections, json_path=json_path)
    print_report(report)
    if json_path is not None:
        typer.echo(f"report: {json_path}")
