"""``volseg train``: parse the options into a TrainConfig and train."""

from __future__ import annotations

import contextlib
import enum
from pathlib import Path
from typing import Annotated, Any

import typer

from volseg.app.base import app, friendly, warnings_as_lines
from volseg.app.choices import AugmentPreset, ForegroundKind, Loss, Norm, Precision, Target, Upsample


def _opt(help_text: str, *names: str) -> Any:
    # The train options' defaults are TrainConfig's (and its UNetConfig's), kept equal by
    # tests/test_cli_defaults.py and tests/test_train.py (reading them from the dataclasses here would
    # import torch on every volseg call, --version too); options without one write theirs in the help.
    return typer.Option(*names, help=help_text)


@app.command("train")
@friendly
def train_cmd(
    ctx: typer.Context,
    image: Annotated[
        str | None, typer.Argument(help="Image volume (Z, Y, X), e.g. image.zarr or s3://bucket/image.zarr.")
    ] = None,
    labels: Annotated[
        str | None, typer.Argument(help="Label volume of the same shape, e.g. labels.zarr.")
    ] = None,
    output: Annotated[
        Path | None,
        _opt(
            "Model file to write (MODEL.pt); MODEL.last.pt, .log.jsonl, .curves.png, .config.toml "
            "go beside it.",
            "-o",
            "--output",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        _opt("TOML file of options (the names below, with _ or -); options given here win.", "--config"),
    ] = None,
    foreground: Annotated[
        str | None,
        _opt("Label values of the positive class, e.g. 0 (ISBI membranes) or 1,2. [default: 0]"),
    ] = None,
    foreground_kind: Annotated[
        ForegroundKind,
        _opt(
            "What the foreground marks: boundary (membranes) or object (cells); decides how V_rand and "
            "V_info read the probability."
        ),
    ] = ForegroundKind.boundary,
    label_values: Annotated[
        str | None, _opt("Values the labels may hold, e.g. 0,255; any other value is refused.")
    ] = None,
    val_slices: Annotated[
        str | None,
        _opt(
            "Held-out sections as for --sections, e.g. 25:30, 0:30:5 or 0,10:12 (wins over --val-fraction)."
        ),
    ] = None,
    val_fraction: Annotated[float, _opt("Hold out the last fraction of sections; 0 = no validation.")] = 0.1,
    patch_size: Annotated[int, _opt("Training patch side, a multiple of 2**depth.")] = 256,
    batch_size: Annotated[int, _opt("Patches per step.")] = 8,
    steps: Annotated[int | None, _opt("Training steps. [default: 2000 unless --time-limit]")] = None,
    time_limit: Annotated[
        str | None, _opt("Wall-clock budget, e.g. 20m, 1h30m, 45s or seconds; the schedule spans it.")
    ] = None,
    lr: Annotated[float, _opt("Peak learning rate (AdamW).")] = 0.001,
    weight_decay: Annotated[float, _opt("AdamW weight decay.")] = 0.0001,
    warmup_steps: Annotated[
        int, _opt("Warm-up steps (at most a tenth of the run), then cosine decay.")
    ] = 100,
    augment: Annotated[AugmentPreset | None, _opt("Augmentation preset. [default: default]")] = None,
    augment_prob: Annotated[
        str | None, _opt("Per-transform probabilities over the preset, e.g. elastic=0.9,noise=0.")
    ] = None,
    loss: Annotated[Loss, _opt("Loss function.")] = Loss.bce_dice,
    target: Annotated[
        Target,
        _opt(
            "What the U-Net learns: a boundary map, or affinities (one channel per --offsets; cut them "
            "into cells with 'volseg segment --method agglo')."
        ),
    ] = Target.boundary,
    offsets: Annotated[
        str | None,
        _opt(
            "--target affinities: offsets dz,dy,dx separated by ';'; unset: nearest neighbours in y, x and "
            "z, and 3, 9, 27 px in y and x (0,-1,0;0,0,-1;-1,0,0;0,-3,0;0,0,-3;0,-9,0;0,0,-9;0,-27,0;0,0,-27)"
        ),
    ] = None,
    w0: Annotated[float, _opt("Border weight peak for weighted_bce.")] = 10.0,
    sigma: Annotated[float, _opt("Border weight width (px) for weighted_bce.")] = 5.0,
    base_channels: Annotated[int, _opt("U-Net feature maps at full resolution.")] = 16,
    depth: Annotated[int, _opt("U-Net poolings.")] = 4,
    norm: Annotated[Norm, _opt("Normalisation layers.")] = Norm.batch,
    dropout: Annotated[float, _opt("Dropout at the bottleneck.")] = 0.0,
    upsample: Annotated[Upsample, _opt("Upsampling.")] = Upsample.transpose,
    context: Annotated[int, _opt("Neighbouring sections on each side as input channels (2.5-D).")] = 0,
    device: Annotated[str, _opt("auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[
        Precision, _opt("auto: bf16 where the hardware has it, else fp32 (fp16 on GPUs).")
    ] = Precision.auto,
    workers: Annotated[
        int, _opt("Data-loading processes; -1 chooses (1-2 on CPU, up to 8 with a GPU).")
    ] = -1,
    seed: Annotated[int, _opt("Seed of the model and of every patch.")] = 0,
    val_every: Annotated[int, _opt("Validate and checkpoint every N steps.")] = 200,
    ema: Annotated[
        float,
        _opt(
            "Decay of a moving average of the weights (e.g. 0.999): the averaged model is validated and "
            "saved; 0: the last step's weights."
        ),
    ] = 0.0,
    min_foreground: Annotated[float, _opt("Redraw patches whose positive fraction is below this.")] = 0.0,
    max_attempts: Annotated[int, _opt("Draws per patch for --min-foreground.")] = 10,
    cache_gb: Annotated[float, _opt("Hold volumes up to this size (GiB) in memory.")] = 2.0,
    resume: Annotated[bool | None, _opt("Continue exactly from MODEL.last.pt.", "--resume")] = None,
    overwrite: Annotated[bool | None, _opt("Replace an existing model and its files.", "--overwrite")] = None,
    progress: Annotated[bool | None, _opt("Show a progress bar.", "--progress/--no-progress")] = None,
) -> None:
    """Train a U-Net on random augmented patches, validating on held-out sections.

    Writes the best model by V_rand to MODEL and the last checkpoint to MODEL.last.pt
    (--resume continues it exactly); Ctrl-C saves and exits. See docs/train.md.

    Example: volseg train image.zarr labels.zarr -o model.pt --val-slices 25:30 --time-limit 20m
    """
    options = {k: v.value if isinstance(v, enum.Enum) else v for k, v in locals().items() if k != "config"}
    from volseg.app.progress import TerminalProgress
    from volseg.stages.train import TrainingInterrupted, load_config_file, train

    # only the options given on the command line: the config file and --resume fill the others
    options = {
        k: v for k, v in options.items() if k != "ctx" and ctx.get_parameter_source(k).name != "DEFAULT"
    }
    options.update({k: str(options[k]) for k in ("image", "labels", "output") if options.get(k) is not None})
    show = options.pop("progress", None)
    if show is None:  # a config file may say progress = false; else a bar
        show = config is None or load_config_file(config).get("progress", True)
    try:
        with warnings_as_lines(), TerminalProgress() if show else contextlib.nullcontext() as bar:
            result = train(config_file=config, progress=bar, **options)
    except TrainingInterrupted as exc:
        typer.echo(f"volseg: {exc}", err=True)
        raise typer.Exit(130) from None
    typer.echo(
        f"{result.model}: {result.steps} steps, {result.seconds:.0f} s "
        f"({result.steps_per_second:.2f} steps/s, "
        f"data waiting {100 * result.data_wait_fraction:.1f} %)"
    )
    if m := result.metrics:
        typer.echo(
            f"best at step {result.best_step}: V_rand {m['v_rand']:.4f}  V_info {m['v_info']:.4f}  "
            f"pixel error {m['pixel_error']:.4f} (at best threshold {m['pixel_error_best']:.4f}; "
            f"ISBI 1 - F-score {m['pixel_error_isbi']:.4f})  Dice {m['dice']:.4f}"
        )
