"""The ``volseg`` command line: each command parses its options and calls the API.

Errors a user can cause (:class:`volseg.errors.VolsegError`) print one line on stderr
and exit with code 2; ``volseg --debug COMMAND`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
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

from volseg.errors import OptionError, VolsegError
from volseg.version import __version__

#: convert -> train -> predict -> segment -> evaluate -> preview; then the whole chain, its data, a look.
COMMAND_ORDER = ("convert", "train", "predict", "segment", "evaluate", "preview", "demo", "synth", "info")


class _Group(TyperGroup):
    """The command group: one line for every error, also for those click finds while parsing.

    Before parsing, URL arguments are refused (typer would turn ``s3://b/x`` into the local
    folder ``s3:/b/x``). Click's usage errors (a missing argument, an option that is not an
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
            refuse_urls(args)
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            refuse_urls(args)
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except VolsegError as exc:
            if _STATE["debug"]:
                raise
            typer.echo(f"volseg: error: {' '.join(str(exc).split())}", err=True)
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
        raise OptionError(
            f"{option} {text!r}: expected {n} integers separated by commas, e.g. 1,512,512"
        ) from None
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
        raise OptionError(
            f"{option} {text!r}: expected {n} numbers separated by commas, e.g. 50,4,4"
        ) from None
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
    from volseg.storage.volumes import volume_info

    data = volume_info(volume)
    if as_json:
        echo_json(data)
        return
    from volseg.app.report import print_info

    print_info(data)


# @@COMMANDS@@ (stage commands are added below this line)


# ------------------------------------------------------------------------- demo
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
    say = (lambda line: None) if as_json else (lambda line: typer.echo(line, err=True))
    result = demo(out, opts, overwrite=overwrite, progress=say)
    if as_json:
        echo_json(result.to_dict())
    else:
        from volseg.app.report import print_demo_summary

        print_demo_summary(result.to_dict())


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
    from contextlib import nullcontext

    from volseg.app.progress import TerminalProgress
    from volseg.stages.synth import synth

    # the bar starts with the first chunk, after all checks
    with TerminalProgress() if progress and not as_json else nullcontext() as bar:
        result = synth(
            out,
            shape=parse_ints(shape, "--shape"),
            seed=seed,
            chunks=parse_ints(chunks, "--chunks"),
            overwrite=overwrite,
            voxel_size=parse_floats(voxel_size, "--voxel-size"),
            codec=codec,
            workers=workers,
            progress=bar,
        )
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


# ------------------------------------------------------------------------ train
class Loss(str, enum.Enum):
    bce_dice = "bce_dice"
    weighted_bce = "weighted_bce"
    bce = "bce"
    dice = "dice"


class TrainForegroundKind(str, enum.Enum):
    boundary = "boundary"
    object = "object"


class AugmentPreset(str, enum.Enum):
    none = "none"
    light = "light"
    default = "default"
    heavy = "heavy"


class Norm(str, enum.Enum):
    batch = "batch"
    group = "group"
    instance = "instance"
    none = "none"


class Upsample(str, enum.Enum):
    transpose = "transpose"
    bilinear = "bilinear"


class Precision(str, enum.Enum):  # also used by predict
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


def _opt(help_text: str, *names: str) -> Any:
    # The train options' defaults are TrainConfig's (and its UNetConfig's), kept equal by
    # tests/test_cli_defaults.py and tests/test_train.py (reading them from the dataclasses here would
    # import torch on every volseg call, --version too); options without one write theirs in the help.
    return typer.Option(*names, help=help_text)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Warnings of a stage (stages do not print) as one ``volseg: warning: ...`` line each on stderr."""

    def show(message: Warning | str, *_: object, **__: object) -> None:
        typer.echo(f"volseg: warning: {message}", err=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


@app.command("train")
@friendly
def train_cmd(
    ctx: typer.Context,
    image: Annotated[Path | None, typer.Argument(help="Image volume (Z, Y, X), e.g. image.zarr.")] = None,
    labels: Annotated[
        Path | None, typer.Argument(help="Label volume of the same shape, e.g. labels.zarr.")
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
        TrainForegroundKind,
        _opt(
            "What the foreground marks: boundary (membranes) or object (cells); decides how V_rand and "
            "V_info read the probability."
        ),
    ] = TrainForegroundKind.boundary,
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
        with _warnings_as_lines(), TerminalProgress() if show else contextlib.nullcontext() as bar:
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


# ---------------------------------------------------------------------- segment
class SegmentMode(str, enum.Enum):
    two_d = "2d"
    three_d = "3d"


class SegmentMethod(str, enum.Enum):
    watershed = "watershed"
    cc = "cc"


class SeedKind(str, enum.Enum):
    distance = "distance"
    hminima = "hminima"


class InputKind(str, enum.Enum):
    probability = "probability"
    mask = "mask"


@app.command("segment")
@friendly
def segment_cmd(
    prob: Annotated[
        Path,
        typer.Argument(
            help="Probability (uint8 or float) or binary mask volume, e.g. the output of 'volseg predict'.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Argument(help="The label volume to write (cells.zarr).", show_default=False)],
    mode: Annotated[
        SegmentMode,
        typer.Option(
            help="2d: each section on its own (ssTEM); 3d: connected components consistent across blocks."
        ),
    ] = SegmentMode.two_d,
    method: Annotated[
        SegmentMethod,
        typer.Option(help="2-D: seeded watershed, or plain connected components of the interior."),
    ] = SegmentMethod.watershed,
    seeds: Annotated[
        SeedKind,
        typer.Option(
            help="Watershed seeds: h-minima of the boundary map, or the tops of the interior's "
            "distance transform."
        ),
    ] = SeedKind.distance,
    threshold: Annotated[
        float, typer.Option(help="Boundary probability below which a pixel is cell interior.")
    ] = 0.5,
    sigma: Annotated[
        float, typer.Option(help="Gaussian smoothing of the boundary map in y, x (pixels; 0: none).")
    ] = 1.0,
    min_distance: Annotated[
        int, typer.Option(help="Smallest distance between distance-transform seeds (pixels).")
    ] = 8,
    distance_h: Annotated[
        float, typer.Option(help="Distance seeds: least height of a distance-transform maximum (pixels).")
    ] = 6.0,
    h: Annotated[float, typer.Option("--h", help="Depth of the h-minima seeds (probability units).")] = 0.1,
    min_size: Annotated[
        int, typer.Option(help="Drop segments smaller than this (pixels in 2d, voxels in 3d).")
    ] = 20,
    keep_boundaries: Annotated[
        bool,
        typer.Option(
            "--keep-boundaries", help="2-D watershed: flood only the interior, so membranes stay 0."
        ),
    ] = False,
    relabel: Annotated[
        bool,
        typer.Option(
            "--relabel", help="2-D: consecutive ids (a second pass) instead of sparse ids z*Y*X + n."
        ),
    ] = False,
    invert: Annotated[
        bool | None,
        typer.Option(
            "--invert/--no-invert",
            help="The input is a cell (interior) "
            "probability / a membrane probability; default: from its "
            "metadata, else membrane.",
            show_default=False,
        ),
    ] = None,
    input_kind: Annotated[
        InputKind | None,
        typer.Option(
            help="What PROB holds, whatever its recorded kind (e.g. probabilities from another tool "
            "converted to Zarr); default: its recorded kind, which must be probability or mask.",
            show_default=False,
        ),
    ] = None,
    chunks: Annotated[
        str | None, typer.Option(help="Output chunks Z,Y,X; default: the input's blocks.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Dask worker threads; default: one per core.")] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler: threads, processes or synchronous; "
            "default: threads, or the active distributed client."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run (same input and options).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Segment cells into instance labels from a membrane probability volume, block by block.

    Resumable (--resume) and dask-parallel; writes an OME-Zarr label volume that napari shows as labels.

    Example: volseg segment prob.zarr cells.zarr --min-size 50
    """
    import time

    from volseg.core.progress import Update
    from volseg.stages.segment import SegmentOptions, segment

    opts = SegmentOptions(
        mode=mode.value,
        method=method.value,
        seeds=seeds.value,
        threshold=threshold,
        sigma=sigma,
        min_distance=min_distance,
        distance_h=distance_h,
        h=h,
        min_size=min_size,
        keep_boundaries=keep_boundaries,
        relabel=relabel,
        invert=invert,
    )
    start = time.perf_counter()

    def say(update: Update) -> None:  # each phase as one line on stderr, e.g. "segment: labelling ..."
        if update.message is not None and not as_json:
            typer.echo(update.describe(), err=True)

    summary = segment(
        prob,
        out,
        options=opts,
        input_kind=input_kind.value if input_kind else None,
        chunks=parse_ints(chunks, "--chunks"),
        overwrite=overwrite,
        resume=resume,
        scheduler=scheduler,
        workers=workers,
        progress=say,
    ).to_dict()
    summary["seconds"] = round(time.perf_counter() - start, 2)
    if as_json:
        echo_json(summary)
        return
    count = (
        f"{summary['labels']} labels"
        if summary["ids"] == "consecutive"
        else f"sparse ids up to {summary['labels']}"
    )
    typer.echo(
        f"{summary['path']}: {count}, {summary['dtype']}, {summary['mode']} mode, {summary['blocks']} blocks "
        f"({summary['resumed_blocks']} already done), {summary['seconds']} s"
    )


# --------------------------------------------------------------------- evaluate
class InstanceMode(str, enum.Enum):
    auto = "auto"
    two_d = "2d"
    three_d = "3d"


class ForegroundKind(str, enum.Enum):
    boundary = "boundary"
    object = "object"


@app.command("evaluate")
@friendly
def evaluate_cmd(
    pred: Annotated[
        Path,
        typer.Argument(
            help="Probability, mask or label (instance) volume to score; an ROI (from 'volseg predict "
            "--roi') is placed on TRUTH by its OME translation.",
            show_default=False,
        ),
    ],
    truth: Annotated[
        Path,
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
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the report as JSON to this file (never one of the inputs)."),
    ] = None,
) -> None:
    """Score a prediction against ground truth: pixel error, Dice, IoU, V_rand, V_info, adapted Rand, VOI.

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
    )
    report = evaluate(pred, truth, options=opts, sections=sections, json_path=json_path)
    print_report(report)
    if json_path is not None:
        typer.echo(f"report: {json_path}")


# ---------------------------------------------------------------------- preview
class PreviewStyle(str, enum.Enum):
    both = "both"
    fill = "fill"
    outline = "outline"


@app.command("preview")
@friendly
def preview_cmd(
    volume: Annotated[
        Path | None,
        typer.Argument(help="The volume to show (image, probability, mask or labels).", show_default=False),
    ] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="The PNG to write.")] = Path("preview.png"),
    overlay: Annotated[
        Path | None,
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


# ---------------------------------------------------------------------- predict
class OutDtype(str, enum.Enum):
    uint8 = "uint8"
    float16 = "float16"
    float32 = "float32"


def _bytes_option(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(text))
    except (ValueError, TypeError):
        raise OptionError(f"{option} {text!r}: write a size such as 4GiB, 512MiB or 2e9") from None


@app.command("predict")
@friendly
def predict_cmd(
    model: Annotated[
        Path, typer.Argument(help="Model file written by 'volseg train' (model.pt).", show_default=False)
    ],
    image: Annotated[
        Path, typer.Argument(help="Image volume (Z, Y, X), e.g. image.zarr.", show_default=False)
    ],
    out: Annotated[
        Path, typer.Argument(help="Probability volume to write, e.g. prob.zarr.", show_default=False)
    ],
    tile: Annotated[
        int | None,
        typer.Option(
            help="Inner tile edge (px), a multiple of 2**depth; default: the block edge up to 1024."
        ),
    ] = None,
    halo: Annotated[
        int | None, typer.Option(help="Context (px) on each side of a tile; default: the model's.")
    ] = None,
    edge: Annotated[
        int | None,
        typer.Option(
            help="Mirrored context (px) at the volume's edges, a multiple of 2**depth up to the halo; "
            "default 0 (the network's zero padding, as in training)."
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Tiles per forward pass; default 1 on CPU, 4 on a GPU.")
    ] = None,
    precision: Annotated[
        Precision, typer.Option(help="auto = bf16 where the hardware has it.")
    ] = Precision.auto,
    device: Annotated[
        str,
        typer.Option(
            help="auto, cpu, cuda or cuda:N; with several GPUs, auto / cuda give each worker (or thread) "
            "its own."
        ),
    ] = "auto",
    dtype: Annotated[
        OutDtype, typer.Option(help="Output values; uint8 = probability x 255.")
    ] = OutDtype.uint8,
    threshold: Annotated[
        float | None, typer.Option(help="Also write OUT-mask.zarr beside OUT: probability >= T as 0/1.")
    ] = None,
    roi: Annotated[
        str | None, typer.Option(help="Sub-volume z0:z1,y0:y1,x0:x1 (empty bounds: the edge).")
    ] = None,
    tta: Annotated[
        bool, typer.Option("--tta", help="Average the 8 dihedral transforms (8x the time).")
    ] = False,
    rescale: Annotated[
        bool,
        typer.Option(
            "--rescale",
            help="Normalise the image by its own mean and spread instead of the training images': for "
            "an image of another dtype or brightness than the model was trained on (otherwise refused).",
        ),
    ] = False,
    chunks: Annotated[str | None, typer.Option(help="Output chunks Z,Y,X; default: the input's.")] = None,
    block: Annotated[
        str | None,
        typer.Option(help="Work block Z,Y,X (whole output chunks); default: chunks grouped to 1024 px."),
    ] = None,
    memory_limit: Annotated[
        str | None,
        typer.Option(help="Memory for all blocks in flight, e.g. 8GiB; chooses block and batch size."),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="threads, processes, synchronous or tcp://HOST:PORT (a running dask scheduler). "
            "[default: threads, or a local cluster with --workers]"
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Alone: start a local dask cluster of N worker processes; with threads or "
            "processes: the pool size."
        ),
    ] = None,
    retries: Annotated[int, typer.Option(help="Retries of a failed block before it is reported.")] = 2,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (blocks, halo, overhead, memory) and stop.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an output written by another run or other settings.")
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show blocks, Mvox/s and ETA while running.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary (or the plan) as JSON.")] = False,
) -> None:
    """Predict a probability volume block by block with a halo, seam-free, in parallel with dask.

    Rerunning the same command resumes an interrupted run (done blocks are skipped); failed
    blocks are retried, then reported (exit 1). See docs/predict.md.

    Example: volseg predict model.pt image.zarr prob.zarr --threshold 0.5
    """
    import warnings
    from contextlib import nullcontext

    from volseg.app.progress import TerminalProgress
    from volseg.stages.predict import PredictOptions, PredictWarning, predict

    options = PredictOptions(
        tile=tile,
        halo=halo,
        edge=edge,
        batch_size=batch_size,
        precision=precision.value,
        device=device,
        dtype=dtype.value,
        threshold=threshold,
        roi=roi,
        tta=tta,
        rescale=rescale,
        chunks=parse_ints(chunks, "--chunks"),
        block=parse_ints(block, "--block"),
        memory_limit=_bytes_option(memory_limit, "--memory-limit"),
        scheduler=scheduler,
        workers=workers,
        retries=retries,
        overwrite=overwrite,
    )
    shown = warnings.showwarning

    def say(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, PredictWarning):  # the plan's warnings, before the run starts
            typer.echo(f"volseg: warning: {message}", err=True)
        else:
            shown(message, category, *args, **kwargs)

    bar = progress and not as_json and not dry_run
    with warnings.catch_warnings(), TerminalProgress() if bar else nullcontext() as reporter:
        warnings.simplefilter("always", PredictWarning)
        warnings.showwarning = say
        result = predict(model, image, out, options, dry_run=dry_run, progress=reporter)
    if dry_run:
        if as_json:
            echo_json(result.to_dict())
        else:
            typer.echo("\n".join(result.describe()))
        return
    if as_json:
        echo_json(result.to_dict())
    else:
        typer.echo(f"predict: {result.summary()}")


# ---------------------------------------------------------------------- convert
class VolumeKind(str, enum.Enum):
    image = "image"
    label = "label"
    mask = "mask"
    probability = "probability"


@app.command("convert")
@friendly
def convert_cmd(
    src: Annotated[
        str,
        typer.Argument(
            help="A multi-page TIFF (ImageJ, OME, BigTIFF), one 2-D TIFF or PNG, a folder of per-section "
            "TIFF/PNG files, or a quoted glob pattern such as 'sections/*.png'.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Argument(help="The volume folder to write (image.zarr).", show_default=False)],
    chunks: Annotated[
        str | None, typer.Option(help="Chunk shape Z,Y,X; default 1,1024,1024 clipped to the stack.")
    ] = None,
    codec: Annotated[
        str, typer.Option(help="blosc-zstd, blosc-lz4, zstd, gzip or none, optionally :LEVEL (e.g. zstd:5).")
    ] = "blosc-zstd",
    voxel_size: Annotated[
        str | None,
        typer.Option(
            "--voxel-size",
            help="Voxel size Z,Y,X in --unit (nanometer unless --unit says otherwise); default: from the "
            "TIFF metadata, else 1,1,1 with no unit.",
        ),
    ] = None,
    unit: Annotated[
        str | None, typer.Option(help="Unit of the voxel size: nanometer, micrometer, ... (nm, um accepted).")
    ] = None,
    channel: Annotated[
        int | None, typer.Option(help="Channel to convert from an RGB or multi-channel source (0, 1, ...).")
    ] = None,
    order: Annotated[
        str | None,
        typer.Option(
            help="Section order for folders and globs: natural (default, 2 before 10), name, or a text file "
            "listing the section file names in order."
        ),
    ] = None,
    shards: Annotated[
        str | None,
        typer.Option(
            help="Shard shape Z,Y,X in whole chunks (e.g. 1,8192,8192): one file per shard instead of per "
            "chunk, for stacks with very many chunks; default: no shards."
        ),
    ] = None,
    kind: Annotated[
        VolumeKind,
        typer.Option(
            help="What the stack holds, recorded for the stages that read it: image (raw EM), label "
            "(annotations), mask (binary) or probability (a map from another tool)."
        ),
    ] = VolumeKind.image,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted conversion (same sources and options).")
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar with sections/s and ETA.")
    ] = True,
) -> None:
    """Convert a TIFF/PNG stack (file, folder or glob) into an OME-Zarr volume, section by section.

    Memory stays at one band of chunks; an interrupted run continues with --resume.

    Example: volseg convert train-volume.tif image.zarr --voxel-size 50,4,4
    """
    from contextlib import nullcontext

    from volseg.app.progress import TerminalProgress
    from volseg.stages.convert import convert

    with TerminalProgress() if progress else nullcontext() as bar:
        result = convert(
            src,
            out,
            chunks=parse_ints(chunks, "--chunks"),
            codec=codec,
            voxel_size=parse_floats(voxel_size, "--voxel-size"),
            unit=unit,
            overwrite=overwrite,
            resume=resume,
            channel=channel,
            order=order,
            shards=parse_ints(shards, "--shards"),
            kind=kind.value,
            progress=bar,
        )
    zyx = lambda v: " x ".join(str(x) for x in v)  # noqa: E731
    unit_text = f" {result.unit}" if result.unit else " (no unit)"
    typer.echo(
        f"{result.path}: {zyx(result.shape)} {result.dtype}, chunks {zyx(result.chunks)}, "
        f"voxel {zyx(result.voxel_size)}{unit_text}, {result.volume.meta.get('status')}"
    )


#: Options whose value is rightly a URL (a dask scheduler address).
_URL_OPTIONS = ("--scheduler",)


def refuse_urls(args: list[str]) -> None:
    """Refuse a path argument that is a URL, before typer turns ``s3://b/x`` into the folder ``s3:/b/x``.

    Object storage is not supported yet; every argument that looks like ``scheme://...`` is
    refused with one line, except the values of :data:`_URL_OPTIONS`.
    """
    from volseg.storage.paths import looks_like_url

    previous = ""
    for arg in args:
        name, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        value = value if (eq or not name) else ""
        option = name if eq else previous
        if value and "://" in value and looks_like_url(value) and option not in _URL_OPTIONS:
            raise OptionError(
                f"{value}: is a URL; object storage (s3://, gs://, http://) is not supported yet, copy the "
                "data to a local or mounted disk and pass its path"
            )
        previous = arg if arg.startswith("-") else ""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="volseg")
