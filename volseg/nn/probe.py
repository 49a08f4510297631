"""Short measured probes: how fast the network runs here, and what torch sees of the machine.

``volseg doctor`` reports them, and ``predict --dry-run`` turns :func:`forward_speed` of the run's own
model, tile and batch into a time estimate before any block is computed. Each probe runs for a bounded
time (a warm-up call, then calls until ``seconds`` have passed, at least two).
"""

from __future__ import annotations

import re
import time
from typing import Any

import torch
from torch import nn

from volseg.nn.runtime import autocast_context, resolve_device, resolve_precision
from volseg.nn.speeds import installed_backends
from volseg.nn.unet import UNet, UNetConfig

__all__ = ["forward_speed", "runtime_summary", "train_step_speed"]


def runtime_summary() -> dict[str, Any]:
    """torch's view of the machine: versions, threads, oneDNN, GPUs, and what ``auto`` resolves to."""
    onednn = re.search(r"(?:oneDNN|MKL-DNN) v([\d.]+)", torch.__config__.show())
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(
                {"name": p.name, "memory_bytes": p.total_memory, "capability": f"{p.major}.{p.minor}"}
            )
    device = resolve_device("auto")
    return {
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "onednn": onednn.group(1) if onednn else None,
        "threads": torch.get_num_threads(),
        "gpus": gpus,
        "auto_device": str(device),
        "auto_precision": resolve_precision(device, "auto"),
        "auto_precision_cpu": resolve_precision("cpu", "auto"),
        "backend": "auto",  # torch unless speeds measured here favour an installed runtime (volseg.nn.speeds)
        "backends_installed": installed_backends(),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call: Any, device: torch.device, seconds: float) -> tuple[int, float]:
    call()  # warm-up: oneDNN / cuDNN choose their kernels on the first call
    _sync(device)
    n, start = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - start < seconds:
        call()
        n += 1
    _sync(device)
    return n, time.perf_counter() - start


def forward_speed(
    model: nn.Module,
    tile: int = 512,
    batch: int = 1,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    seconds: float = 3.0,
) -> dict[str, Any]:
    """Output megavoxels per second of ``model``'s forward on ``batch`` tiles of ``tile`` x ``tile``.

    The model runs as predict runs it (eval, channels_last, the resolved precision, no gradients);
    the input is random, which costs the same as real data.
    """
    dev = resolve_device(device)
    resolved = resolve_precision(dev, precision)
    model = model.to(device=dev, memory_format=torch.channels_last).eval()
    channels = int(getattr(getattr(model, "config", None), "in_channels", 1))
    gen = torch.Generator().manual_seed(0)
    x = (
        torch.rand((batch, channels, tile, tile), generator=gen)
        .to(dev)
        .contiguous(memory_format=torch.channels_last)
    )

    def call() -> None:
        with torch.inference_mode(), autocast_context(dev, resolved):
            model(x)

    n, elapsed = _timed(call, dev, seconds)
    return {
        "mvox_per_s": round(n * batch * tile * tile / elapsed / 1e6, 3),
        "tile": tile,
        "batch": batch,
        "device": str(dev),
        "precision": resolved,
        "calls": n,
        "seconds": round(elapsed, 2),
    }


def train_step_speed(
    config: UNetConfig | None = None,
    patch: int = 128,
    batch: int = 8,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    seconds: float = 3.0,
) -> dict[str, Any]:
    """Training steps per second (forward, loss, backward, AdamW) of a fresh U-Net on random patches."""
    dev = resolve_device(device)
    resolved = resolve_precision(dev, precision)
    with torch.random.fork_rng(devices=[]):  # a seeded model, and the caller's random state untouched
        torch.manual_seed(0)
        model = UNet(config or UNetConfig())
    model = model.to(device=dev, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    shape = (batch, model.config.in_channels, patch, patch)
    x = torch.rand(shape, generator=gen).to(dev).contiguous(memory_format=torch.channels_last)
    y = (torch.rand((batch, 1, patch, patch), generator=gen) > 0.8).float().to(dev)
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(dev, resolved):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        optimizer.step()

    n, elapsed = _timed(step, dev, seconds)
    return {
        "steps_per_s": round(n / elapsed, 3),
        "patch": patch,
        "batch": batch,
        "device": str(dev),
        "precision": resolved,
        "steps": n,
        "seconds": round(elapsed, 2),
    }
