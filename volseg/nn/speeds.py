"""Forward speeds measured on this machine for each way predict can run its forward passes, cached.

``predict`` chooses its tile, runtime and thread layout from these
(:func:`volseg.stages.predict.plan.choose`): the fastest *output* rate is the raw speed at a tile
divided by the pixels the plan computes per output pixel at that tile (halo, edges, rounding). On the
2-core AVX2 machine torch runs small tiles fastest (0.9-1.2 Mvox/s at 512, 0.5-0.7 at 2048) while
OpenVINO keeps large tiles fast (1.4-1.6 Mvox/s at 2048), so the best plan differs between machines
and runtimes, and only a measurement tells (docs/tuning.md).

A :class:`Candidate` is one way to run: the backend, the inner tile, and the *streams*: how many forward
passes run at once in the process (1: one at a time on all cores, the others' reading and writing overlapped;
N: N at once, cores / N threads each). Its speed is the *computed* megavoxels per second on windows of
``tile + 2 x halo``, measured by :func:`probe` (a warm-up call, then timed calls) and kept in a JSON cache
(``$VOLSEG_CACHE_DIR`` or ``~/.cache/volseg``, :func:`cache_path`) under a key of the machine (CPU model,
cores), the library versions, the network's architecture (not its weights: they do not change the speed) and
the precision. ``volseg doctor --tune`` fills it for the default model; a large ``predict`` run fills it for
its own model (:data:`PROBE_MIN_VOXELS`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volseg.core import tiling
from volseg.core.resources import available_cores, machine_summary
from volseg.storage.files import atomic_write_json

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "BACKEND_CHOICES",
    "PROBE_MIN_VOXELS",
    "TILES",
    "Candidate",
    "cache_path",
    "cached_speeds",
    "candidates",
    "installed_backends",
    "usable_backends",
    "probe",
    "speed_key",
    "store_speeds",
]

#: predict's ``--backend`` values: ``auto`` and :data:`volseg.nn.backends.BACKENDS` (here without torch).
BACKEND_CHOICES = ("auto", "torch", "openvino", "onnxruntime")
#: The inner tiles measured (the ceiling of docs/benchmarks.md is the best of these).
TILES = (512, 1024, 2048)
#: A run without cached speeds probes first when it has at least this many output voxels to compute
#: (about 120 sections of 4096^2: half an hour or more on a 2-core CPU, so a probe of a minute is under 5%).
PROBE_MIN_VOXELS = 2 * 10**9


@dataclass(frozen=True, order=True)
class Candidate:
    """One way to run a block's forward passes: backend, inner tile, forward passes at once."""

    backend: str
    tile: int
    streams: int

    @property
    def label(self) -> str:
        """``torch/1024/2``: the cache's and the plan's name of the candidate."""
        return f"{self.backend}/{self.tile}/{self.streams}"

    @classmethod
    def parse(cls, label: str) -> Candidate:
        backend, tile, streams = label.split("/")
        return cls(backend, int(tile), int(streams))


def installed_backends() -> list[str]:
    """``torch`` and the optional CPU runtimes whose packages are installed here."""
    from volseg.nn.backends import BACKENDS, installed

    return [b for b in BACKENDS if installed(b)]


def usable_backends(precision: str) -> list[str]:
    """The installed backends a run of ``precision`` may use: the others run fp32 only."""
    return [b for b in installed_backends() if b == "torch" or precision == "fp32"]


def candidates(
    backends: Sequence[str], tiles: Sequence[int] | None = None, cores: int | None = None
) -> list[Candidate]:
    """Every candidate of these backends and tiles (default :data:`TILES`).

    torch runs one forward on all cores or one per core side by side (streams 1 and ``cores``, when more
    than one core); OpenVINO and ONNX Runtime spread one forward over all cores themselves (streams 1: in
    benchmarks/runtimes.py two processes of one thread each ran OpenVINO at about half the speed).
    """
    cores = cores or available_cores()
    tiles = TILES if tiles is None else tiles
    out = []
    for backend in backends:
        streams = (1, cores) if backend == "torch" and cores > 1 else (1,)
        out += [Candidate(backend, t, s) for t in tiles for s in streams]
    return out


# ------------------------------------------------------------------------------ cache
def cache_path() -> Path:
    """The speed cache: ``$VOLSEG_CACHE_DIR/speeds.json``, else under ``$XDG_CACHE_HOME/volseg`` or
    ``~/.cache/volseg``."""
    root = os.environ.get("VOLSEG_CACHE_DIR")
    if root:
        return Path(root) / "speeds.json"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "volseg" / "speeds.json"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def speed_key(config: dict[str, Any], precision: str, cores: int | None = None) -> str:
    """The cache key: this machine, the runtimes' versions, the architecture and the precision (a digest)."""
    m = machine_summary()
    arch = {k: v for k, v in sorted(config.items()) if k not in ("dropout", "seed")}
    record = {
        "cpu": m["cpu"],
        "cores": cores or available_cores(),
        "torch": _version("torch"),
        "openvino": _version("openvino"),
        "onnxruntime": _version("onnxruntime"),
        "architecture": arch,
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _load() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_speeds(key: str) -> dict[Candidate, float]:
    """Measured speeds (computed Mvox/s) under ``key``; empty when none were measured here."""
    entry = _load().get(key) or {}
    out = {}
    for label, value in (entry.get("speeds") or {}).items():
        with contextlib.suppress(ValueError, TypeError):
            out[Candidate.parse(label)] = float(value)
    return out


def store_speeds(key: str, speeds: dict[Candidate, float], info: dict[str, Any] | None = None) -> Path:
    """Add ``speeds`` to the cache under ``key`` (an atomic rewrite; an unwritable cache is skipped)."""
    data = _load()
    entry = data.get(key) or {}
    merged = {**(entry.get("speeds") or {}), **{c.label: round(v, 4) for c, v in speeds.items()}}
    data[key] = {**entry, **(info or {}), "speeds": merged, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = cache_path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, data)
    return path


# ------------------------------------------------------------------------------ probe
@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _measure(run: Any, x: torch.Tensor, streams: int, seconds: float) -> float:
    """Computed Mvox/s of ``streams`` threads each calling ``run(x)``: a warm-up, then timed calls."""
    counts = [0] * streams
    start_gate = threading.Barrier(streams)
    elapsed = [0.0] * streams
    errors: list[BaseException] = []

    def stream(i: int) -> None:
        try:
            run(x)  # warm-up: oneDNN / OpenVINO build their kernels for the shape
            start_gate.wait()
            t = time.perf_counter()
            while counts[i] < 1 or time.perf_counter() - t < seconds:
                run(x)
                counts[i] += 1
            elapsed[i] = time.perf_counter() - t
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)
            start_gate.abort()

    workers = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    pixels = x.shape[0] * x.shape[-2] * x.shape[-1]
    return sum(counts) * pixels / max(elapsed) / 1e6


def probe(
    model: nn.Module,
    wanted: Sequence[Candidate],
    halo: int,
    precision: str = "fp32",
    seconds: float = 1.0,
    cores: int | None = None,
) -> dict[Candidate, float]:
    """Computed Mvox/s of each candidate on windows of ``tile + 2 x halo`` (random input, batch 1, CPU).

    Each candidate is measured once: a warm-up call, then calls for ``seconds`` (at least one per stream).
    torch runs as predict runs it (eval, channels_last, autocast to ``precision``, no gradients); the other
    backends run the network exported once per backend (:mod:`volseg.nn.backends`), fp32.
    """
    import torch

    from volseg.nn.backends import wrap
    from volseg.nn.runtime import autocast_context, prepare_for_inference

    cores = cores or available_cores()
    net = prepare_for_inference(model, "cpu")
    divisor = int(net.divisor)
    channels = int(net.config.in_channels)
    exported: dict[str, nn.Module] = {}
    out: dict[Candidate, float] = {}
    gen = torch.Generator().manual_seed(0)
    for cand in wanted:
        window = tiling.round_up(cand.tile + 2 * halo, divisor)
        x = torch.rand((1, channels, window, window), generator=gen).contiguous(
            memory_format=torch.channels_last
        )
        threads = max(1, cores // cand.streams)
        if cand.backend == "torch":

            def run(t: torch.Tensor, precision: str = precision) -> None:
                with torch.inference_mode(), autocast_context(torch.device("cpu"), precision):
                    net(t)

            with _threads(threads):
                out[cand] = _measure(run, x, cand.streams, seconds)
        else:
            if cand.backend not in exported:
                exported[cand.backend] = wrap(net, cand.backend, threads)
            runner = exported[cand.backend]

            def run_exported(t: torch.Tensor, runner: nn.Module = runner) -> None:
                with torch.inference_mode():
                    runner(t)

            out[cand] = _measure(run_exported, x, cand.streams, seconds)
    return out
