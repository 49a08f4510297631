"""``volseg doctor``: what volseg will use on this machine, and how fast it runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from volseg.app.base import app, echo_json, friendly
from volseg.errors import OptionError


def diagnose(device: str = "auto", seconds: float = 3.0) -> dict[str, Any]:
    """The machine, torch's view of it, and measured speeds of the default model (forward and training)."""
    from volseg.core.resources import machine_summary
    from volseg.nn.probe import forward_speed, runtime_summary, train_step_speed
    from volseg.nn.runtime import check_device
    from volseg.nn.unet import UNet, UNetConfig
    from volseg.stages.train import TrainConfig

    check_device(device)
    train = TrainConfig()
    return {
        "machine": machine_summary(),
        "runtime": runtime_summary(),
        "predict_on_4096_sections": _cached_pick(),
        "forward": forward_speed(UNet(UNetConfig()), tile=512, batch=1, device=device, seconds=seconds),
        "train_step": train_step_speed(
            train.model, patch=train.patch_size, batch=train.batch_size, device=device, seconds=seconds
        ),
    }


def _pick(info: Any, speeds: Any, precision: str, source: str) -> dict[str, Any]:
    """What predict picks on 8 sections of 4096 x 4096 (chunks of 1024) with these speeds."""
    from volseg.stages.predict.options import PredictOptions
    from volseg.stages.predict.plan import lay_out

    shape = (8, 4096, 4096)
    roi = tuple((0, n) for n in shape)
    sizes = (None, info.halo, 0)
    layout = lay_out(PredictOptions(device="cpu"), info, roi, (1, 1024, 1024), 1, sizes, "cpu", precision,
                     speeds, shape, source)  # fmt: skip
    return (
        layout.choice
        if layout.choice.get("chosen")
        else {
            "source": layout.choice["source"],
            "chosen": f"{layout.backend}/{layout.tile}/{layout.streams}",
        }
    )


def _cached_pick() -> dict[str, Any]:
    """predict's pick on 4096^2 sections for the default architecture, from this machine's speed cache."""
    from volseg.nn import speeds as sp
    from volseg.nn.runtime import resolve_precision
    from volseg.nn.unet import UNet, UNetConfig
    from volseg.stages.predict.worker import model_info

    info, _ = model_info(UNet(UNetConfig()))
    precision = resolve_precision("cpu", "auto")
    found = sp.cached_speeds(sp.speed_key(info.config, precision))
    return _pick(info, found or None, precision, "cache")


def tune(model: str | None = None, seconds: float = 1.0) -> dict[str, Any]:
    """Measure predict's candidates (backend, tile, forwards at once) for ``model`` (default: the default
    U-Net's architecture) on this machine's CPU, store them in the speed cache, and say what predict picks.

    What predict picks is shown for 8 sections of 4096 x 4096 (uint8, chunks of 1024): the output rate is
    the measured speed over the pixels computed per output pixel at that tile
    (:func:`volseg.stages.predict.plan.choose`).
    """
    from volseg.nn import speeds as sp
    from volseg.nn.runtime import resolve_precision
    from volseg.nn.unet import UNet, UNetConfig
    from volseg.stages.predict.worker import model_info

    info, net = model_info(model) if model else model_info(UNet(UNetConfig()))
    precision = resolve_precision("cpu", "auto")
    wanted = sp.candidates(sp.usable_backends(precision))
    speeds = sp.probe(net, wanted, info.halo, precision, seconds)
    key = sp.speed_key(info.config, precision)
    path = sp.store_speeds(key, speeds, {"model": info.path, "architecture": info.config})
    picks = _pick(info, speeds, precision, "probe")
    return {
        "cache": str(path),
        "key": key,
        "precision": precision,
        "model": info.path or "default U-Net (base 16, depth 4)",
        "speeds": {c.label: round(v, 3) for c, v in speeds.items()},
        "on_4096_sections": picks,
    }


def _rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    m, r, f, t = report["machine"], report["runtime"], report["forward"], report["train_step"]
    memory = f"{m['memory_bytes'] / 2**30:.1f} GiB" if m.get("memory_bytes") else "?"
    gpus = ", ".join(
        f"{g['name']} ({g['memory_bytes'] / 2**30:.0f} GiB, sm {g['capability']})" for g in r["gpus"]
    )
    return [
        ("cpu", f"{m['cpu']} ({m['cpu_class']}: {' '.join(m['cpu_flags']) or 'no flags of note'})"),
        ("cores", f"{m['cores']} usable of {m['logical_cpus']}, {memory} memory"),
        (
            "torch",
            f"{r['torch']}, oneDNN {r['onednn'] or '?'}, {r['threads']} threads, CUDA {r['cuda'] or 'none'}",
        ),
        ("gpus", gpus or "none"),
        (
            "auto picks",
            f"device {r['auto_device']}, precision {r['auto_precision']}, backend auto of "
            f"{', '.join(r['backends_installed'])}",
        ),
        ("predict", _pick_text(report["predict_on_4096_sections"])),
        (
            "forward",
            f"{f['mvox_per_s']:.2f} Mvox/s (default U-Net, tile {f['tile']}, batch {f['batch']}, "
            f"{f['precision']} on {f['device']})",
        ),
        (
            "training",
            f"{t['steps_per_s']:.2f} steps/s ({t['batch']} x {t['patch']}^2 patches, {t['precision']} on "
            f"{t['device']}; the demo's smaller model runs faster)",
        ),
    ]


@app.command("doctor")
@friendly
def doctor_cmd(
    device: Annotated[str, typer.Option(help="Device to measure: auto, cpu, cuda, cuda:N or mps.")] = "auto",
    seconds: Annotated[
        float, typer.Option(help="Seconds each speed probe runs (after a warm-up call).")
    ] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    tune_: Annotated[
        bool,
        typer.Option(
            "--tune",
            help="Measure predict's tiles, runtimes and thread layouts on this CPU (about a minute) and "
            "cache them: predict then picks the fastest.",
        ),
    ] = False,
    model: Annotated[
        Path | None, typer.Option(help="With --tune: the model to measure (default: the default U-Net).")
    ] = None,
) -> None:
    """Show what volseg will use here (CPU class, cores, torch, GPUs, auto precision) and how fast it runs.

    Measures the default model's forward speed and training step speed for a few seconds each.

    Example: volseg doctor --json
    """
    if not 0.1 <= seconds <= 5:  # the whole report stays about ten seconds
        raise OptionError(f"--seconds {seconds}: use 0.1 to 5 seconds per probe")
    if tune_:
        _print_tune(tune(str(model) if model else None, min(seconds, 1.0)), as_json)
        return
    report = diagnose(device, seconds)
    if as_json:
        echo_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="volseg doctor", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in _rows(report):
        table.add_row(name, value)
    Console(highlight=False).print(table)


def _pick_text(pick: dict[str, Any]) -> str:
    if pick.get("source") == "default":
        return (
            f"{pick['chosen']} (backend/tile/forwards at once) on 4096^2 sections: the static default, no "
            "speeds measured here yet (volseg doctor --tune)"
        )
    return (
        f"{pick['chosen']} (backend/tile/forwards at once) on 4096^2 sections, {pick['rate']:.2f} output "
        "Mvox/s by the speeds measured here"
    )


def _print_tune(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    rows = {r["candidate"]: r for r in report["on_4096_sections"]["candidates"]}
    table = Table(title=f"predict's candidates here ({report['precision']}, {report['model']})")
    for name in ("backend/tile/forwards at once", "computed Mvox/s", "pixels per output px", "output Mvox/s"):
        table.add_column(name, justify="right")
    for label, speed in report["speeds"].items():
        r = rows.get(label, {})
        overhead = f"{r['overhead']:.2f}" if "overhead" in r else "-"
        rate = f"{r['rate']:.2f}" if "rate" in r else "-"
        table.add_row(label, f"{speed:.2f}", overhead, rate)
    console = Console(highlight=False)
    console.print(table)
    console.print(
        f"on 4096 x 4096 sections predict picks {report['on_4096_sections']['chosen']} "
        f"({report['on_4096_sections']['rate']:.2f} output Mvox/s); cached in {report['cache']}"
    )
