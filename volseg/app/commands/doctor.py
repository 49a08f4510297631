"""``volseg doctor``: what volseg will use on this machine, and how fast it runs here."""

from __future__ import annotations

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
        "forward": forward_speed(UNet(UNetConfig()), tile=512, batch=1, device=device, seconds=seconds),
        "train_step": train_step_speed(
            train.model, patch=train.patch_size, batch=train.batch_size, device=device, seconds=seconds
        ),
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
        ("auto picks", f"device {r['auto_device']}, precision {r['auto_precision']}, backend {r['backend']}"),
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
) -> None:
    """Show what volseg will use here (CPU class, cores, torch, GPUs, auto precision) and how fast it runs.

    Measures the default model's forward speed and training step speed for a few seconds each.

    Example: volseg doctor --json
    """
    if not 0.1 <= seconds <= 5:  # the whole report stays about ten seconds
        raise OptionError(f"--seconds {seconds}: use 0.1 to 5 seconds per probe")
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
