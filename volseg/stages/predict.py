"""Predict: a dask graph over output blocks -> model -> probability volume; schedulers; resume.

The composition
---------------
1. **Plan** (:func:`plan_prediction`, pure arithmetic from :mod:`volseg.core.tiling`): the output
   volume has the ROI's shape and is stored in chunks; chunks are grouped into *blocks* (the
   unit of work of one task), each chunk in exactly one block.
2. **Graph**: one ``dask.delayed`` task per block that still has a chunk without a completion
   marker (done blocks are not in the graph). Each task reads its own input window straight
   from the image volume (so no image data travels through the scheduler), runs
   :func:`volseg.nn.inference.infer_padded`, crops, converts and writes each of its chunks once with
   :meth:`volseg.storage.volumes.Volume.write_block`, which records a chunk as done only after its data
   is stored. A task returns a few numbers, never arrays.
3. **Run** on dask's local schedulers (threads, processes, synchronous) or a
   ``dask.distributed`` cluster (a running scheduler, or a ``LocalCluster`` started here).

Seam-free by construction: a block's window is its inner region extended down to the global
pooling grid, plus the halo on each side, mirrored at the volume's edges exactly as
:func:`volseg.nn.inference.infer_image` pads a whole section (see :mod:`volseg.core.tiling`).

The model is loaded once per worker process (a module-level cache keyed by the model file's
checksum), never pickled into tasks; torch's thread count is set so that dask's parallel
tasks times torch's threads do not exceed the cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from volseg.core import tiling
from volseg.errors import IncompleteRunError, ModelError, OptionError, OutputError, VolsegError
from volseg.storage.volumes import Volume, create_volume, open_volume, provenance

__all__ = [
    "DTYPES",
    "SCHEDULERS",
    "Plan",
    "PredictOptions",
    "PredictResult",
    "plan_prediction",
    "predict",
    "run_block",
]

DTYPES = ("uint8", "float16", "float32")
SCHEDULERS = ("threads", "processes", "synchronous")
#: Blocks are grouped from output chunks until their y and x extents reach this (px), so that
#: a task covers whole tiles; the halo is read once per block instead of once per chunk.
BLOCK_TARGET_YX = 1024
#: The seconds a scheduler address is given to answer before the run is refused.
CONNECT_TIMEOUT_S = 3.0
#: Memory (bytes) of a worker process before any block: interpreter, torch, the model.
BASE_MEMORY = 400 * 2**20
#: Tasks in flight on one machine by default (threads or processes), each with cores / 2 torch threads.
DEFAULT_PARALLEL = 2


# =========================================================================== options
@dataclass(frozen=True)
class PredictOptions:
    """Settings of a prediction run; each one mirrors a ``volseg predict`` option.

    Parameters
    ----------
    tile
        Inner tile edge (px), a multiple of the model's divisor; ``None``: the block's edge up to
        1024 (the larger the tile, the smaller the halo overhead ``(T + 2h)^2 / T^2``).
    halo
        Context (px) on each side of a tile; ``None``: the model's default halo.
    edge
        Mirrored context (px, a multiple of the divisor) at the volume's edges in y and x, at
        most the halo; ``None``: :data:`volseg.nn.inference.DEFAULT_EDGE` (0: the network's own
        zero padding, as on every training patch).
    batch_size
        Tiles per forward pass; ``None``: 1 on CPU (no faster batched, and the activations'
        memory grows with it), 4 on a GPU, or what ``memory_limit`` allows.
    precision
        ``auto`` | ``bf16`` | ``fp16`` | ``fp32``; auto picks bf16 where the hardware has it.
    device
        ``auto`` | ``cpu`` | ``cuda`` (``cuda:N``); auto picks cuda when available.
    dtype
        Output values: ``uint8`` (probability x 255, rounded; scale recorded), ``float16``, ``float32``.
    threshold
        Also write a binary mask ``probability >= threshold`` to the sibling volume
        ``<out stem>-mask.zarr`` (uint8 0/1).
    roi
        ``"z0:z1,y0:y1,x0:x1"`` or ``((z0, z1), (y0, y1), (x0, x1))``: predict a sub-volume
        only; the halo still reads real data around it.
    tta
        Average over the 8 dihedral transforms (8x the time).
    chunks
        Output chunk ``(Z, Y, X)``; ``None``: the input's chunks (clipped to the ROI).
    block
        Work block ``(Z, Y, X)`` in voxels, rounded up to whole output chunks; ``None``: chunks
        grouped up to :data:`BLOCK_TARGET_YX` in y and x and enough sections to fill a batch.
    memory_limit
        Bytes the run may use (all tasks in flight together); chooses batch size and block.
    scheduler
        ``threads`` | ``processes`` | ``synchronous`` | ``tcp://HOST:PORT`` (a running
        ``dask scheduler``); ``None``: threads, or a LocalCluster when ``workers`` is set.
    workers
        With no scheduler: start a ``distributed.LocalCluster`` of this many worker processes.
        With ``threads`` or ``processes``: the pool size.
    retries
        Times a failed block is retried before it is reported as failed.
    overwrite
        Replace an existing output made by another run (otherwise refused).
    activation
        ``auto`` (sigmoid / softmax), ``sigmoid``, ``softmax`` or ``none`` (raw logits, float dtypes).
    channel
        For models with several output channels: which class's probability to write
        (default 1, the first class after background).
    rescale
        Normalise the image by its own sampled mean and standard deviation instead of the
        training images', mapping its values onto the training range: for an image of another
        dtype or brightness than the model was trained on (otherwise refused, see
        :func:`volseg.storage.paths.image_for_model`).
    progress
        Show a progress bar (blocks, Mvox/s, ETA) on stderr.
    """

    tile: int | None = None
    halo: int | None = None
    edge: int | None = None
    batch_size: int | None = None
    precision: str = "auto"
    device: str = "auto"
    dtype: str = "uint8"
    threshold: float | None = None
    roi: str | Sequence[Sequence[int | None]] | None = None
    tta: bool = False
    chunks: tuple[int, int, int] | None = None
    block: tuple[int, int, int] | None = None
    memory_limit: int | None = None
    scheduler: str | None = None
    workers: int | None = None
    retries: int = 2
    overwrite: bool = False
    activation: str = "auto"
    channel: int | None = None
    rescale: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        from volseg.nn.inference import ACTIVATIONS
        from volseg.nn.model import PRECISIONS

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise OptionError(message)

        need(self.dtype in DTYPES, f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        need(
            self.precision in PRECISIONS,
            f"--precision {self.precision!r}: use one of {', '.join(PRECISIONS)}",
        )
        need(
            self.activation in ACTIVATIONS,
            f"activation {self.activation!r}: use one of {', '.join(ACTIVATIONS)}",
        )
        need(
            self.threshold is None or 0.0 <= self.threshold <= 1.0,
            f"--threshold {self.threshold}: use a probability between 0 and 1, e.g. 0.5",
        )
        need(
            self.tile is None or (isinstance(self.tile, int) and self.tile > 0),
            f"--tile {self.tile!r}: use a positive multiple of the model's divisor, e.g. 512",
        )
        need(
            self.halo is None or (isinstance(self.halo, int) and self.halo >= 0),
            f"--halo {self.halo!r}: use a non-negative number of pixels (or leave it out for the model's)",
        )
        need(
            self.edge is None or (isinstance(self.edge, int) and self.edge >= 0),
            f"--edge {self.edge!r}: use a non-negative number of pixels, e.g. 0 (or the halo to mirror it)",
        )
        need(
            self.batch_size is None or self.batch_size >= 1, f"--batch-size {self.batch_size}: use 1 or more"
        )
        need(0 <= self.retries <= 100, f"--retries {self.retries}: use 0 to 100")
        need(self.workers is None or 1 <= self.workers <= 1024, f"--workers {self.workers}: use 1 to 1024")
        need(
            self.tile is None or self.tile <= 16384,
            f"--tile {self.tile}: use at most 16384 px (1024 is usual)",
        )
        need(self.halo is None or self.halo <= 4096, f"--halo {self.halo}: use at most 4096 px")
        need(self.edge is None or self.edge <= 4096, f"--edge {self.edge}: use at most 4096 px")
        need(
            self.batch_size is None or self.batch_size <= 1024,
            f"--batch-size {self.batch_size}: use 1 to 1024",
        )
        need(
            self.memory_limit is None or self.memory_limit > 0,
            f"--memory-limit {self.memory_limit}: use e.g. 4GiB",
        )
        for name in ("chunks", "block"):
            value = getattr(self, name)
            need(
                value is None or (len(value) == 3 and all(int(v) >= 1 for v in value)),
                f"--{name} {value}: use three positive sizes Z,Y,X",
            )
        sched = self.scheduler
        need(
            sched is None or sched in SCHEDULERS or _address(sched),
            f"--scheduler {sched!r}: use threads, processes, synchronous or a dask scheduler address tcp://HOST:PORT",
        )
        need(
            not (self.workers and sched and "://" in sched),
            "--workers starts a local cluster; with --scheduler ADDRESS start workers with "
            "'dask worker ADDRESS'",
        )
        need(
            not (self.workers and sched == "synchronous"),
            "--workers does not apply to --scheduler synchronous",
        )


def _address(text: str) -> bool:
    """A dask scheduler address: ``tcp://HOST:PORT`` (also ``tls://``, ``ucx://``, ``[::1]`` hosts)."""
    import re

    match = re.fullmatch(r"[a-z][a-z0-9+]*://(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+):(\d{1,5})", text)
    return bool(match) and 0 < int(match.group(2)) < 65536


# ============================================================================== plan
@dataclass(frozen=True)
class Job:
    """What every task needs, small and picklable (paths, numbers, the inference options)."""

    run_id: str
    image: str
    out: str
    mask: str | None
    model_key: str
    model_path: str | None
    roi_start: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    halo: int
    edge: int
    divisor: int
    context: int
    infer: Any  # volseg.nn.inference.InferOptions
    normalization: dict[str, Any] | None
    dtype: str
    threshold: float | None
    channel: int | None
    pad_mode: str
    torch_threads: int | dict[str, int] | None = None
    attempts: int = 1
    catch: bool = True


@dataclass
class Plan:
    """A resolved run: what ``--dry-run`` prints and what :func:`predict` executes."""

    model_path: str | None
    image: str
    out: str
    mask: str | None
    source_shape: tuple[int, int, int]
    roi: tuple[tuple[int, int], ...]
    out_shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    chunks_per_block: tuple[int, int, int]
    tile: int
    halo: int
    edge: int
    divisor: int
    context: int
    batch_size: int
    precision: str
    device: str
    dtype: str
    scheduler: str
    parallel: int
    torch_threads: int
    n_blocks: int
    n_chunks: int
    blocks_done: int
    halo_overhead: float
    compute_overhead: float
    memory_per_block: int
    memory_total: int
    identity: dict[str, Any]
    settings: dict[str, Any]
    pending: list[tiling.Block] = field(default_factory=list, repr=False)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def block_shape(self) -> tuple[int, ...]:
        return tuple(
            min(c * k, s) for c, k, s in zip(self.chunks, self.chunks_per_block, self.out_shape, strict=True)
        )

    def describe(self) -> list[str]:
        """The plan in a few lines (``--dry-run``)."""
        from volseg.app.report import human_bytes

        zyx = lambda v: " x ".join(map(str, v))  # noqa: E731
        roi = ",".join(f"{a}:{b}" for a, b in self.roi)
        vox = math.prod(self.out_shape)
        return [
            f"model      {self.model_path or '(in memory)'}",
            f"image      {self.image}  {zyx(self.source_shape)}  roi {roi}",
            f"output     {self.out}  {zyx(self.out_shape)} {self.dtype}, chunks {zyx(self.chunks)}"
            + (f"; mask {self.mask}" if self.mask else ""),
            f"blocks     {self.n_blocks} of {zyx(self.block_shape)} ({self.n_chunks} chunks); "
            f"{self.blocks_done} done, {len(self.pending)} to run ({vox / 1e6:.1f} Mvox in all)",
            f"tiles      tile {self.tile}, halo {self.halo}, mirrored edge {self.edge} "
            f"(divisor {self.divisor}, "
            f"z context {self.context}), "
            f"batch {self.batch_size}, {self.precision} on {self.device}",
            f"overhead   halo (T + 2h)^2 / T^2 = {self.halo_overhead:.2f}; computed / output pixels "
            f"= {self.compute_overhead:.2f}",
            f"memory     ~{human_bytes(self.memory_per_block)} per block in flight, "
            f"~{human_bytes(self.memory_total)} in all with {self.parallel} in flight",
            f"scheduler  {self.scheduler}, {self.parallel} parallel task(s) x "
            f"{self.torch_threads} torch thread(s)",
            *(f"note       {n}" for n in self.notes),
            *(f"warning    {w}" for w in self.warnings),
        ]

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "pending"}
        d["blocks_to_run"] = len(self.pending)
        d["block_shape"] = list(self.block_shape)
        return d


@dataclass
class PredictResult:
    """Summary of a run (what the CLI prints at the end)."""

    out: str
    mask: str | None
    status: str
    blocks_total: int
    blocks_skipped: int
    blocks_written: int
    blocks_failed: int
    voxels: int
    seconds: float
    compute_seconds: float
    plan: dict[str, Any]
    errors: list[str] = field(default_factory=list)

    @property
    def mvox_per_s(self) -> float:
        """Output voxels per second while blocks ran (cluster start-up excluded)."""
        return self.voxels / self.compute_seconds / 1e6 if self.compute_seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.blocks_written} blocks written, {self.blocks_skipped} already done, "
            f"{self.blocks_failed} failed of {self.blocks_total}; {self.voxels / 1e6:.1f} Mvox in "
            f"{self.compute_seconds:.1f} s ({self.mvox_per_s:.2f} Mvox/s; {self.seconds:.1f} s in all) "
            f"-> {self.out} ({self.status})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mvox_per_s": round(self.mvox_per_s, 3)}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def mask_path(out: Path) -> Path:
    """The sibling volume that holds the thresholded mask: ``prob.zarr`` -> ``prob-mask.zarr``."""
    return out.with_name(f"{out.stem}-mask{out.suffix}")


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class _ModelInfo:
    key: str
    path: str | None
    config: dict[str, Any]
    divisor: int
    halo: int
    context: int
    channels: int
    normalization: dict[str, Any] | None
    meta: dict[str, Any]


_MODELS: dict[tuple[str, str | None], Any] = {}
_MODELS_LOCK = threading.Lock()


def _model_info(model: Any) -> tuple[_ModelInfo, Any]:
    """Load (or accept) the model, check it, and name it by checksum."""
    from volseg.nn.model import load_model, model_checksum

    if isinstance(model, (str, os.PathLike)):
        path = Path(model).resolve()
        module = load_model(path, device="cpu")  # raises ModelError: missing, not a volseg model
        key, path_text = model_checksum(path), str(path)
    elif hasattr(model, "divisor") and hasattr(model, "config") and callable(model):
        module, path_text = model, None
        key = "mem-" + _module_digest(module)
    else:
        raise ModelError(f"model {model!r}: pass the path of a model file written by 'volseg train'")
    meta = dict(getattr(module, "volseg_meta", {}) or {})
    config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(vars(module.config))
    info = _ModelInfo(
        key=key,
        path=path_text,
        config=config,
        divisor=int(module.divisor),
        halo=int(module.halo),
        context=int(module.config.context),
        channels=int(module.config.out_channels),
        normalization=meta.get("normalization"),
        meta={k: meta.get(k) for k in ("foreground", "label_convention", "normalization")},
    )
    return info, module


def _module_digest(module: Any) -> str:
    digest = hashlib.sha256(type(module).__qualname__.encode())
    digest.update(repr(getattr(module, "config", None)).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _worker_model(job: Job) -> tuple[Any, Any]:
    """The model for ``job`` in this worker, and the inference options for its device.

    Loaded and prepared once per process and device, then reused by every task.
    """
    import copy

    import torch

    from volseg.nn.model import load_model, prepare_for_inference

    threads = job.torch_threads
    if isinstance(threads, dict):
        threads = threads.get(_worker_address(), None)
    device = worker_device(job.infer.device)
    infer = job.infer if device == job.infer.device else replace(job.infer, device=device)
    with _MODELS_LOCK:
        if threads and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        key = (job.model_key, device)
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS.get((job.model_key, None))  # registered by predict() in this process
            if model is None:
                if job.model_path is None:
                    raise RuntimeError("an in-memory model needs the threads or synchronous scheduler")
                model = load_model(job.model_path, device="cpu")
            elif any(v is model for k, v in _MODELS.items() if k[1] is not None):
                model = copy.deepcopy(model)  # already prepared for another device (GPU)
            # Converted once, under the lock: infer_padded's own conversion is then a no-op, so
            # no thread swaps the weights while another one runs a forward pass.
            model = _MODELS[key] = prepare_for_inference(model, device)
        return model, infer


def worker_device(device: str) -> str:
    """The device of this worker: with several GPUs, ``cuda`` / ``auto`` become one GPU per worker.

    The workers of ``--workers N`` (a LocalCluster, named 0 .. N-1) and the threads of one
    process take ``cuda:0``, ``cuda:1``, ... in turn, so that tasks spread over the GPUs. A
    worker started by hand should be given its GPU with ``CUDA_VISIBLE_DEVICES`` (it then sees
    one). Any other device is returned as it is.
    """
    import torch

    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return device
    count = torch.cuda.device_count()
    return device if count < 2 else f"cuda:{_worker_slot() % count}"


_SLOT = threading.local()
_SLOTS = itertools.count()


def _worker_slot() -> int:
    """0, 1, 2, ...: a LocalCluster worker's name, else one number per thread of this process."""
    try:
        from distributed import get_worker

        name = get_worker().name
        if isinstance(name, int):
            return name
    except (ImportError, ValueError):
        pass
    if not hasattr(_SLOT, "value"):
        _SLOT.value = next(_SLOTS)
    return _SLOT.value


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


# ============================================================================ tasks
@dataclass(frozen=True)
class BlockStatus:
    """What a task returns: a few numbers (never arrays)."""

    index: tuple[int, ...]
    voxels: int
    chunks_written: int
    seconds: float
    error: str | None = None
    #: The error is bad or damaged input (a missing chunk): rerunning cannot help.
    bad_input: bool = False


_VOLUMES: dict[tuple[str, str], Volume] = {}


def _volume(path: str, mode: str, run_id: str) -> Volume:
    """Open a volume once per process and run (zarr metadata is read once, not per task)."""
    key = (path, f"{mode}:{run_id}")
    vol = _VOLUMES.get(key)
    if vol is None:
        for old in [k for k in _VOLUMES if not k[1].endswith(run_id)]:  # earlier runs' volumes
            _VOLUMES.pop(old, None)
        vol = _VOLUMES[key] = open_volume(path, mode=mode)
    return vol


def read_window(array: Any, job: Job, block: tiling.Block) -> tuple[np.ndarray, tuple[int, int], Any]:
    """The block's input: z context, aligned y / x window with halo, ``job.edge`` mirrored at the edges.

    Returns
    -------
    (padded, crop, margins)
        ``padded`` is ``(Z + 2c, top + Y' + bottom, left + X' + right)`` in the stored dtype,
        where ``Y' >= Y`` and ``X' >= X`` start on the pooling grid; ``crop`` is where the
        block starts in ``Y', X'``; ``margins`` is ``((top, bottom), (left, right))``: the halo
        inside the volume, ``job.edge`` at its edges.
    """
    reads, takes, crops, margins = [], [], [], []
    for axis, (span, start, n) in enumerate(zip(block.out, job.roi_start, array.shape, strict=True)):
        lo, hi = start + span.start, start + span.stop
        if axis == 0:
            window = tiling.Window(lo - job.context, hi + job.context, lo, 0)
        else:
            window = tiling.aligned_window(lo, hi, job.halo, job.divisor, n, job.edge)
            crops.append(window.crop)
            margins.append((window.origin - window.lo, window.hi - hi))
        read, take = tiling.source_window(window.lo, window.hi, n, job.pad_mode)
        reads.append(read)
        takes.append(take)
    data = np.asarray(array[tuple(reads)])
    if not all(np.array_equal(t, np.arange(len(t))) for t in takes):
        data = data[np.ix_(*takes)]
    return data, (crops[0], crops[1]), (margins[0], margins[1])


def convert(probs: np.ndarray, dtype: str) -> np.ndarray:
    """Float probabilities -> the output dtype (uint8: ``rint(p * 255)`` clipped to 0..255)."""
    if dtype == "uint8":
        return np.clip(np.rint(probs * np.float32(255)), 0, 255).astype(np.uint8)
    return probs.astype(dtype)


def predict_block(model: Any, job: Job, block: tiling.Block, array: Any, infer: Any = None) -> np.ndarray:
    """float32 ``(Z, Y, X)`` probabilities of one block (pure given the input array).

    ``infer``: the inference options (default ``job.infer``), with this worker's device.
    """
    from volseg.nn.inference import infer_padded

    padded, (cy, cx), margins = read_window(array, job, block)
    probs = infer_padded(model, padded, job.halo, infer or job.infer, job.normalization, margins)
    if probs.ndim == 4:
        probs = probs[1 if job.channel is None else job.channel]
    bz, by, bx = block.shape
    return probs[:, cy : cy + by, cx : cx + bx]


def _write_chunks(job: Job, block: tiling.Block, probs: np.ndarray) -> int:
    out = _volume(job.out, "r+", job.run_id)
    mask = _volume(job.mask, "r+", job.run_id) if job.mask else None
    written = 0
    for cid in block.chunk_ids:
        if out.is_done(cid) and (mask is None or mask.is_done(cid)):
            continue
        region = tiling.region(job.out_shape, job.chunks, cid)
        local = tuple(
            slice(r.start - b.start, r.stop - b.start) for r, b in zip(region, block.out, strict=True)
        )
        p = probs[local]
        if mask is not None:
            mask.write_block(cid, (p >= np.float32(job.threshold)).astype(np.uint8))
        out.write_block(cid, convert(p, job.dtype))
        written += 1
    return written


def run_block(job: Job, block: tiling.Block) -> BlockStatus:
    """The task: read the block with its halo, predict, write each of its chunks once.

    With ``job.catch`` (local schedulers) a failure is retried ``job.attempts - 1`` times and
    then returned as an error status, so that the other blocks go on; without it (a
    distributed cluster) the exception propagates and dask's own retries apply.
    """
    start = time.perf_counter()
    for attempt in range(job.attempts):
        try:
            model, infer = _worker_model(job)
            source = _volume(job.image, "r", job.run_id)
            probs = predict_block(model, job, block, source.array, infer)
            written = _write_chunks(job, block, probs)
            return BlockStatus(block.index, block.size, written, time.perf_counter() - start)
        except Exception as exc:
            if not job.catch:
                raise
            seconds = time.perf_counter() - start
            if isinstance(exc, VolsegError):  # bad or damaged input (a missing chunk): retrying can't help
                return BlockStatus(block.index, block.size, 0, seconds, " ".join(str(exc).split()), True)
            if attempt + 1 == job.attempts:
                message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                return BlockStatus(block.index, block.size, 0, time.perf_counter() - start, message)
    raise AssertionError("unreachable")  # pragma: no cover


# ======================================================================== planning
def _resolve_roi(options: PredictOptions, shape: Sequence[int]) -> tiling.Roi:
    roi = options.roi
    if isinstance(roi, str):
        roi = tiling.parse_roi(roi)
    return tiling.resolve_roi(roi, shape)


def _check_tile_halo(options: PredictOptions, info: _ModelInfo) -> tuple[int | None, int, int]:
    """Tile (None: chosen with the block), halo and mirrored edge, checked against the model."""
    from volseg.nn.inference import DEFAULT_EDGE
    from volseg.nn.model import check_size

    if options.tile is not None:
        check_size(options.tile, info.divisor, "--tile")  # names the nearest valid tiles
    if options.halo is not None:  # windows start on the pooling grid only for such halos
        check_size(options.halo, info.divisor, "--halo", allow_zero=True)
    halo = info.halo if options.halo is None else options.halo
    edge = DEFAULT_EDGE if options.edge is None else options.edge
    check_size(edge, info.divisor, "--edge", allow_zero=True)  # the frame starts on the grid too
    return options.tile, halo, min(edge, halo)


def _grouping(
    out_shape: Sequence[int], chunks: Sequence[int], block: Sequence[int] | None, tile: int, tiles_wanted: int
) -> tuple[int, int, int]:
    """Chunks per block along (z, y, x)."""
    grid = tiling.grid_shape(out_shape, chunks)
    if block is not None:
        return tuple(min(g, -(-int(b) // c)) for b, c, g in zip(block, chunks, grid, strict=True))  # type: ignore[return-value]
    target = max(BLOCK_TARGET_YX, tile)
    ky, kx = (min(g, max(1, -(-target // c))) for c, g in zip(chunks[1:], grid[1:], strict=True))
    by, bx = (min(c * k, s) for c, k, s in zip(chunks[1:], (ky, kx), out_shape[1:], strict=True))
    per_section = math.ceil(by / tile) * math.ceil(bx / tile)
    kz = min(grid[0], max(1, -(-max(1, math.ceil(tiles_wanted / per_section)) // chunks[0])))
    return kz, ky, kx


def estimate_memory(
    block_shape: Sequence[int],
    tile: int,
    halo: int,
    batch: int,
    info: _ModelInfo,
    precision: str,
    itemsize: int,
) -> int:
    """Bytes one block in flight needs: its window, float output, batch windows and activations.

    The U-Net's peak activations are about 8 feature maps of ``base_channels`` at full
    resolution per window (skips kept for the decoder), 4 bytes a value in fp32 and 2 in
    bf16 / fp16: measured 30 and 16 bytes per pixel and base channel (base 16, depth 4, CPU,
    1216 x 1216 windows); 9 maps are counted for a margin.
    """
    bz, by, bx = block_shape
    c = info.context
    d = info.divisor
    wy, wx = by + 2 * halo + d, bx + 2 * halo + d
    window = (bz + 2 * c) * wy * wx * itemsize
    out = info.channels * bz * (by + d) * (bx + d) * 4 * 2  # float32 result + crop/convert copies
    ty, tx = min(tile, by + d), min(tile, bx + d)
    w2 = (ty + 2 * halo + d) * (tx + 2 * halo + d)
    base = int(info.config.get("base_channels", 16))
    act_bytes = 4 if precision == "fp32" else 2
    batch_mem = batch * w2 * ((2 * c + 1) * 4 + 9 * base * act_bytes)
    return int(window + out + batch_mem)


def _parallelism(options: PredictOptions, n_pending: int) -> tuple[str, int, int]:
    """(scheduler label, tasks in flight, torch threads per task) on this machine.

    By default :data:`DEFAULT_PARALLEL` tasks run at once (one reads or writes while another
    computes) and share the cores between their torch threads. With a running cluster the
    count is known only once connected (1 here, for the estimates).
    """
    cores = _cores()
    sched = options.scheduler or ("local-cluster" if options.workers else "threads")
    if sched == "synchronous" or "://" in sched:
        parallel = 1
    else:
        parallel = options.workers or min(cores, DEFAULT_PARALLEL)
    parallel = max(1, min(parallel, n_pending))
    return sched, parallel, max(1, cores // parallel)


def plan_prediction(
    model: Any,
    image: str | os.PathLike,
    out: str | os.PathLike,
    options: PredictOptions | None = None,
    **overrides: Any,
) -> Plan:
    """Resolve a run without writing anything: what ``--dry-run`` prints."""
    options = replace(options or PredictOptions(), **overrides)
    plan, _ = _plan(model, image, out, options)
    return plan


def _plan(model: Any, image: Any, out: Any, options: PredictOptions) -> tuple[Plan, Any]:
    from volseg.nn.model import resolve_device, resolve_precision
    from volseg.storage import conventions
    from volseg.storage import paths as checks

    if not (options.scheduler and "://" in options.scheduler):  # a cluster's workers are probed instead
        checks.check_device(options.device)
    out = checks.local_path(out, "OUT")
    outp = Path(out).resolve()
    mask = mask_path(outp) if options.threshold is not None else None
    model_path = checks.local_path(model, "MODEL") if isinstance(model, (str, os.PathLike)) else None
    image = checks.local_path(image, "IMAGE")
    checks.output_not_input({"OUT": out, "mask": mask}, {"input IMAGE": image, "model": model_path})
    info, module = _model_info(model)
    source = open_volume(image)  # InputError: missing / not a volume
    conventions.require_kind(
        source,
        ("image",),
        "predict's IMAGE",
        "pass the image volume (from 'volseg convert' or 'volseg synth')",
        unknown_ok=True,
    )
    conventions.require_complete(source, "IMAGE")
    tile, halo, edge = _check_tile_halo(options, info)
    roi = _resolve_roi(options, source.shape)
    fit = checks.image_for_model(
        source,
        (getattr(module, "volseg_meta", None) or {}).get("extra") or {},
        info.normalization,
        roi=roi,
        rescale=options.rescale,
        model_name=f"the model {info.path}" if info.path else "the model",
    )
    info = replace(info, normalization=fit.normalization)
    out_shape = tuple(b - a for a, b in roi)
    chunks = tuple(min(int(c), s) for c, s in zip(options.chunks or source.chunks, out_shape, strict=True))
    if options.scheduler and "://" in options.scheduler and options.device != "auto":
        # a cluster's workers check and resolve their own devices (this machine may have no GPU)
        device = options.device.split(":")[0]
        guess = "fp32" if device == "cpu" else "bf16"
        precision = options.precision if options.precision != "auto" else guess
    else:  # as resolved here; workers resolve "auto" themselves
        device = resolve_device(options.device).type
        precision = resolve_precision(device, options.precision)
    sched, parallel, threads = _parallelism(options, 1 << 30)
    plan_tile, batch, cpb, mem = _size_blocks(
        options, info, out_shape, chunks, tile, halo, precision, source.dtype.itemsize, parallel, device
    )
    identity = _identity(info, source, roi, chunks, options, plan_tile, halo, edge)
    existing = _existing_done(outp, mask, identity, options.overwrite)
    all_blocks = list(tiling.blocks(out_shape, chunks, cpb))
    pending = [b for b in all_blocks if not all(c in existing for c in b.chunk_ids)]
    sched, parallel, threads = _parallelism(options, len(pending))
    block_shape = tuple(min(c * k, s) for c, k, s in zip(chunks, cpb, out_shape, strict=True))
    plan = Plan(
        model_path=info.path,
        image=str(source.path.resolve()),
        out=str(outp),
        mask=str(mask) if mask else None,
        source_shape=source.shape,
        roi=roi,
        out_shape=out_shape,
        chunks=chunks,
        chunks_per_block=cpb,
        tile=plan_tile,
        halo=halo,
        edge=edge,
        divisor=info.divisor,
        context=info.context,
        batch_size=batch,
        precision=precision,
        device=device,
        dtype=options.dtype,
        scheduler=sched,
        parallel=max(1, parallel),
        torch_threads=threads,
        n_blocks=len(all_blocks),
        n_chunks=math.prod(tiling.grid_shape(out_shape, chunks)),
        blocks_done=len(all_blocks) - len(pending),
        halo_overhead=tiling.halo_overhead(plan_tile, halo),
        compute_overhead=tiling.plan_overhead(
            out_shape[1:],
            block_shape[1:],
            [a for a, _ in roi[1:]],
            plan_tile,
            halo,
            info.divisor,
            source.shape[1:],
            edge,
        ),
        memory_per_block=mem,
        memory_total=mem * max(1, parallel) + BASE_MEMORY,
        identity=identity,
        settings=_settings(options, plan_tile, halo, edge, batch, cpb),
        pending=pending,
        notes=_notes(info, out_shape, block_shape, plan_tile),
        warnings=list(fit.warnings),
    )
    return plan, (info, module, source)


def _notes(info: _ModelInfo, out_shape: Sequence[int], block: Sequence[int], tile: int) -> list[str]:
    """What the user should know about this plan's results (printed before the run)."""
    norm = info.config.get("norm", "batch")
    tiled = any(b < n or tile < b for b, n in zip(block[1:], out_shape[1:], strict=True))
    if norm in ("group", "instance") and tiled:
        return [
            f"the model's {norm} norm computes statistics over each tile's window, so tiles meet with "
            "seams; for seam-free output use --tile and --block covering whole sections"
        ]
    return []


def _size_blocks(
    options: PredictOptions,
    info: _ModelInfo,
    out_shape: Sequence[int],
    chunks: Sequence[int],
    tile: int | None,
    halo: int,
    precision: str,
    itemsize: int,
    parallel: int,
    device: str,
) -> tuple[int, int, tuple[int, int, int], int]:
    """Tile, batch size, chunks per block and memory per block in flight.

    Without ``--memory-limit``: the given (or default) tile and batch, chunks grouped up to
    :data:`BLOCK_TARGET_YX`. The default batch is 1 on CPU (larger batches are no faster there
    and multiply the activations' memory) and 4 on a GPU. With a limit: the largest that fit,
    shrinking the block's depth, then its extent, then (unless ``--tile``) the tile, then
    (on a GPU, unless ``--batch-size``) the batch.
    """
    from volseg.nn.model import round_up

    gpu = device not in ("cpu", "mps")
    default = 4 if gpu else 1
    batches = [options.batch_size] if options.batch_size else ([8, 4, 2, 1] if gpu else [1])
    if not options.memory_limit:
        batches = [options.batch_size or default]
    budget = (options.memory_limit - BASE_MEMORY) / parallel if options.memory_limit else math.inf
    smallest = math.inf
    for batch in batches:
        t_max = tile or BLOCK_TARGET_YX
        while True:
            cpb = _grouping(out_shape, chunks, options.block, t_max, batch)
            while True:
                block_shape = [min(c * k, s) for c, k, s in zip(chunks, cpb, out_shape, strict=True)]
                t = tile or min(t_max, round_up(max(block_shape[1:]), info.divisor))
                mem = estimate_memory(block_shape, t, halo, batch, info, precision, itemsize)
                if mem <= budget:
                    return t, batch, cpb, mem
                smallest = min(smallest, mem)
                if options.block is not None or cpb == (1, 1, 1):
                    break
                cpb = _shrink(cpb)
            if tile or t_max <= info.divisor:
                break
            t_max = max(info.divisor, round_up(t_max // 2, info.divisor))
    from volseg.app.report import human_bytes

    raise OptionError(
        f"--memory-limit {human_bytes(options.memory_limit or 0)}: too small, the smallest plan needs about "
        f"{human_bytes(smallest * parallel + BASE_MEMORY)} ({parallel} block(s) in flight); raise it, or "
        f"lower --chunks or --workers"
    )


def _shrink(cpb: tuple[int, int, int]) -> tuple[int, int, int]:
    kz, ky, kx = cpb
    if kz > 1:
        return (kz // 2, ky, kx)
    if ky >= kx and ky > 1:
        return (kz, ky // 2, kx)
    return (kz, ky, max(1, kx // 2))


def _identity(
    info: _ModelInfo,
    source: Volume,
    roi: Any,
    chunks: Sequence[int],
    options: PredictOptions,
    tile: int,
    halo: int,
    edge: int,
) -> dict[str, Any]:
    """The settings that change output values: a rerun must match them to resume.

    Device and precision are recorded as asked (``auto`` resolves the same way on the same
    hardware); the batch size, the block grouping and the scheduler do not change values.
    """
    ident = {
        "model_checksum": info.key,
        "source": str(source.path.resolve()),
        "source_shape": list(source.shape),
        "roi": [list(r) for r in roi],
        "chunks": list(chunks),
        "dtype": options.dtype,
        "threshold": options.threshold,
        "tile": tile,
        "halo": halo,
        "edge": edge,
        "precision": options.precision,
        "device": options.device,
        "tta": options.tta,
        "activation": options.activation,
        "channel": options.channel,
        "rescale": options.rescale,
    }
    return json.loads(json.dumps(ident))


def _settings(
    options: PredictOptions, tile: int, halo: int, edge: int, batch: int, cpb: Sequence[int]
) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(options).items() if k != "progress"}
    settings.update(tile=tile, halo=halo, edge=edge, batch_size=batch, chunks_per_block=list(cpb))
    return json.loads(json.dumps(settings, default=str))


# =========================================================================== output
def _existing_done(
    out: Path, mask: Path | None, identity: dict[str, Any], overwrite: bool
) -> set[tuple[int, ...]]:
    """Chunks already done by an identical earlier run; refuse an output from another run.

    With a mask, a chunk is done only when both volumes have it.
    """
    if overwrite:
        return set()
    done: set[tuple[int, ...]] | None = None
    for path in [out] + ([mask] if mask else []):
        empty = not path.exists() or (path.is_dir() and not any(path.iterdir()))
        blocks = set() if empty else _check_identity(path, identity).done_blocks()
        done = blocks if done is None else done & blocks
    return done or set()


def _check_identity(path: Path, identity: dict[str, Any]) -> Volume:
    from volseg.errors import InputError

    try:
        vol = open_volume(path)
    except InputError:
        raise OutputError(
            f"{path}: exists and is not a volseg prediction; pass --overwrite to replace it, "
            f"or choose another output"
        ) from None
    prior = (vol.meta.get("predict") or {}).get("identity")
    if prior is None:
        raise OutputError(
            f"{path}: exists and was not written by 'volseg predict' (kind {vol.kind}); "
            f"pass --overwrite to replace it, or choose another output"
        )
    if prior != identity:
        diffs = [
            f"{k} {_brief(prior.get(k))} -> {_brief(v)}" for k, v in identity.items() if prior.get(k) != v
        ]
        more = f"; and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise OutputError(
            f"{path}: exists from another run ({'; '.join(diffs[:3])}{more}); pass --overwrite to "
            f"replace it, or choose another output"
        )
    return vol


def _brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 28 else text[:12] + "..." + text[-12:]


def _create_outputs(plan: Plan, info: _ModelInfo, source: Volume, options: PredictOptions) -> None:
    """Create the output (and mask) volumes unless an identical run already did."""
    prov = provenance(
        sources=[plan.image] + ([info.path] if info.path else []),
        config={"stage": "predict", **plan.settings},
    )
    values = (
        {"dtype": "uint8", "scale": 1 / 255, "offset": 0.0, "meaning": "probability = value * scale"}
        if plan.dtype == "uint8"
        else {"dtype": plan.dtype, "scale": 1.0, "offset": 0.0, "meaning": "probability"}
    )
    extra = {
        "predict": {
            "identity": plan.identity,
            "settings": plan.settings,
            "model": {"checksum": info.key, "path": info.path, "config": info.config, **info.meta},
            "roi": [list(r) for r in plan.roi],
        },
        "values": values,
    }
    targets = [(Path(plan.out), plan.dtype, "probability", extra)]
    if plan.mask:
        mask_extra = {**extra, "values": {"dtype": "uint8", "meaning": f"probability >= {options.threshold}"}}
        targets.append((Path(plan.mask), "uint8", "mask", mask_extra))
    for path, dtype, kind, meta in targets:
        if not options.overwrite and path.exists() and (path / "zarr.json").exists():
            continue  # an identical run's output (checked in _existing_done): resume it
        vol = create_volume(
            path,
            plan.out_shape,
            dtype,
            plan.chunks,
            voxel_size=source.voxel_size,
            unit=source.unit,
            kind=kind,
            overwrite=True,
            provenance_block=prov,
            extra=meta,
        )
        _add_translation(vol, [a for a, _ in plan.roi], source.voxel_size)


def _add_translation(vol: Volume, start: Sequence[int], voxel_size: Sequence[float]) -> None:
    """Place a ROI output where it lies in the source (OME translation), for viewers."""
    if not any(start):
        return
    ome = dict(vol.group.attrs["ome"])
    for dataset in ome["multiscales"][0]["datasets"]:
        dataset["coordinateTransformations"].append(
            {
                "type": "translation",
                "translation": [float(a * v) for a, v in zip(start, voxel_size, strict=True)],
            }
        )
    vol.group.attrs.update({"ome": ome})


def _finish(plan: Plan) -> str:
    """Mark the outputs complete when every chunk is done; return the status."""
    outputs = [open_volume(plan.out, mode="r+")] + ([open_volume(plan.mask, mode="r+")] if plan.mask else [])
    if all(len(v.done_blocks()) == v.n_blocks for v in outputs):
        for v in outputs:
            if not v.complete:
                v.mark_complete()
        return "complete"
    return "incomplete"


# ======================================================================== schedulers
class _Progress:
    """Blocks done, Mvox/s and ETA on stderr (rich), fed by dask callbacks or as_completed."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.voxels = 0
        self.start = self.end = time.perf_counter()
        self._bar = None
        if enabled and total:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("predict"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("blocks"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._task = self._bar.add_task("predict", total=total, rate="")
            self._bar.start()

    def advance(self, status: BlockStatus | None) -> None:
        if status is not None and status.error is None:
            self.voxels += status.voxels
        if self._bar is not None:
            rate = self.voxels / max(time.perf_counter() - self.start, 1e-9) / 1e6
            self._bar.update(self._task, advance=1, rate=f"{rate:.2f} Mvox/s")

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def close(self) -> None:
        self.end = time.perf_counter()
        if self._bar is not None:
            self._bar.stop()


def _run_local(tasks: list[Any], scheduler: str, parallel: int, progress: _Progress) -> list[BlockStatus]:
    import dask
    from dask.callbacks import Callback

    keys = {t.key for t in tasks}

    class _Blocks(Callback):
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if key in keys:
                progress.advance(result)

    kwargs = {} if scheduler == "synchronous" else {"num_workers": parallel}
    with _Blocks():
        return list(dask.compute(*tasks, scheduler=scheduler, **kwargs))


@contextlib.contextmanager
def _client(options: PredictOptions, memory_limit: int | None) -> Iterator[Any]:
    """A distributed client: to a running scheduler (checked within seconds) or a new LocalCluster."""
    import logging

    from distributed import Client, LocalCluster

    if options.scheduler and "://" in options.scheduler:
        try:
            client = Client(options.scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise OptionError(
                f"--scheduler {options.scheduler}: no dask scheduler answered within "
                f"{CONNECT_TIMEOUT_S:.0f} s "
                f"({type(exc).__name__}); start one with 'dask scheduler' or use --scheduler threads"
            ) from None
        with client:
            yield client
        return
    n = options.workers or 1
    per_worker = int(memory_limit / n) if memory_limit else "auto"
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        memory_limit=per_worker,
        silence_logs=logging.ERROR,
    )
    with cluster, Client(cluster, set_as_default=False) as client:
        yield client


def _worker_probe(device: str, precision: str) -> dict[str, Any]:
    import socket

    from volseg.nn.model import resolve_device, resolve_precision

    try:
        dev = resolve_device(device).type
    except VolsegError as exc:
        return {"host": socket.gethostname(), "cores": _cores(), "error": str(exc)}
    return {
        "host": socket.gethostname(),
        "cores": _cores(),
        "device": dev,
        "precision": resolve_precision(dev, precision),
    }


def _check_workers(client: Any, plan: Plan, options: PredictOptions) -> dict[str, int]:
    """Workers see the shared paths; torch threads per worker so that no host is oversubscribed."""
    probes = client.run(_worker_probe, options.device, options.precision)
    if not probes:
        raise OptionError(
            f"--scheduler {options.scheduler}: the scheduler has no workers; start some with "
            f"'dask worker {options.scheduler}'"
        )
    for address, probe in probes.items():
        if probe.get("error"):
            raise OptionError(f"worker {address}: {probe['error']}")
    paths = [p for p in (plan.model_path, plan.image, str(Path(plan.out).parent)) if p]
    seen = client.run(lambda ps: [os.path.exists(p) for p in ps], paths)
    for address, ok in seen.items():
        missing = [p for p, e in zip(paths, ok, strict=True) if not e]
        if missing:
            raise OptionError(
                f"worker {address} cannot see {missing[0]}: the workers must share storage with "
                f"this machine (same paths); see docs/distributed.md"
            )
    threads_per_host: dict[str, int] = {}
    nthreads = {a: w["nthreads"] for a, w in client.scheduler_info()["workers"].items()}
    for address, probe in probes.items():
        threads_per_host[probe["host"]] = threads_per_host.get(probe["host"], 0) + nthreads.get(address, 1)
    return {a: max(1, p["cores"] // threads_per_host[p["host"]]) for a, p in probes.items()}


def _run_distributed(client: Any, tasks: list[Any], retries: int, progress: _Progress) -> list[BlockStatus]:
    """Submit the blocks, then collect their statuses as they finish (dask retries failed tasks)."""
    from distributed import as_completed

    futures = client.compute(tasks, retries=retries)
    index = {f.key: _block_index_from_key(t.key) for f, t in zip(futures, tasks, strict=True)}
    lost: dict[Any, int] = {}
    results = []
    pending = as_completed(futures, loop=client.loop)
    for future in pending:
        if future.status == "error":
            status = _failed(index[future.key], future.exception())
        else:
            try:
                status = future.result()
            except Exception as exc:
                # The worker holding this tiny result died after computing it: the scheduler
                # recomputes the key (its chunks are done, so the task only checks and returns).
                lost[future.key] = lost.get(future.key, 0) + 1
                if lost[future.key] <= 1 + retries:
                    pending.add(future)
                    continue
                status = _failed(index[future.key], exc)
        progress.advance(status)
        results.append(status)
        future.release()
    return results


def _failed(index: tuple[int, ...], exc: BaseException | None) -> BlockStatus:
    if isinstance(exc, VolsegError):  # bad or damaged input, e.g. a missing chunk: its own message
        return BlockStatus(index, 0, 0, 0.0, " ".join(str(exc).split()), True)
    return BlockStatus(index, 0, 0, 0.0, f"{type(exc).__name__}: {exc}".splitlines()[0][:300])


def _block_index_from_key(key: Any) -> tuple[int, ...]:
    text = key if isinstance(key, str) else str(key)
    return tuple(int(p) for p in text.rsplit("-", 1)[-1].split("."))


# ============================================================================= API
def predict(
    model: Any,
    image: str | os.PathLike,
    out: str | os.PathLike,
    options: PredictOptions | None = None,
    *,
    dry_run: bool = False,
    **overrides: Any,
) -> PredictResult | Plan:
    """Predict a probability volume from an image volume, block by block with a halo.

    Parameters
    ----------
    model
        A model file written by ``volseg train`` (any scheduler), or a loaded model (threads or
        synchronous scheduler only: it cannot be shipped to other processes).
    image
        The image volume (OME-Zarr, ``(Z, Y, X)``).
    out
        The probability volume to write; resumed when it exists from an identical run.
    options
        :class:`PredictOptions`; keyword ``overrides`` replace single fields
        (``volseg.predict(m, img, out, tile=512, scheduler="processes")``).
    dry_run
        Return the :class:`Plan` without writing anything.

    Returns
    -------
    PredictResult
        Counts, voxels, seconds and status; or the :class:`Plan` with ``dry_run``.

    Raises
    ------
    VolsegError
        Bad input (exit 2 in the CLI): model, image, tile / halo, ROI, an output from another run,
        a scheduler that does not answer.
    IncompleteRunError
        Some blocks failed after their retries; they are not recorded as done (exit 1).
    """
    options = replace(options or PredictOptions(), **overrides)
    plan, (info, module, source) = _plan(model, image, out, options)
    if dry_run:
        return plan
    for warning in plan.warnings:
        print(f"volseg: warning: {warning}", file=sys.stderr)
    for note in plan.notes if options.progress else ():
        print(f"volseg: note: {note}", file=sys.stderr)
    if info.path is None and plan.scheduler not in ("threads", "synchronous"):
        raise OptionError(
            "an in-memory model runs only with --scheduler threads or synchronous; "
            "pass the model file to use processes or a cluster"
        )
    _create_outputs(plan, info, source, options)
    started = time.perf_counter()
    with _registered(info, module):
        results, compute_seconds = _execute(plan, info, options)
    return _report(plan, results, time.perf_counter() - started, compute_seconds)


@contextlib.contextmanager
def _registered(info: _ModelInfo, module: Any) -> Iterator[None]:
    """Share the model already loaded here with in-process tasks (threads, synchronous)."""
    with _MODELS_LOCK:
        ours = [k for k in _MODELS if k[0] == info.key]
        _MODELS.setdefault((info.key, None), module)
    try:
        yield
    finally:
        with _MODELS_LOCK:
            for k in [k for k in _MODELS if k[0] == info.key and k not in ours]:
                del _MODELS[k]


def _job(plan: Plan, info: _ModelInfo, options: PredictOptions, torch_threads: Any, catch: bool) -> Job:
    from volseg.nn.inference import PAD_MODE, InferOptions

    infer = InferOptions(
        tile=plan.tile,
        halo=plan.halo,
        edge=plan.edge,
        batch_size=plan.batch_size,
        precision=options.precision,
        device=options.device,
        tta=options.tta,
        activation=options.activation,
    )
    return Job(
        run_id=uuid.uuid4().hex,
        image=plan.image,
        out=plan.out,
        mask=plan.mask,
        model_key=info.key,
        model_path=info.path,
        roi_start=tuple(a for a, _ in plan.roi),
        out_shape=plan.out_shape,
        chunks=plan.chunks,
        halo=plan.halo,
        edge=plan.edge,
        divisor=plan.divisor,
        context=plan.context,
        infer=infer,
        normalization=info.normalization,
        dtype=plan.dtype,
        threshold=options.threshold,
        channel=options.channel,
        pad_mode=PAD_MODE,
        torch_threads=torch_threads,
        attempts=1 + options.retries if catch else 1,
        catch=catch,
    )


def _tasks(job: Job, blocks: list[tiling.Block]) -> list[Any]:
    import dask

    task = dask.delayed(run_block, pure=False)
    return [
        task(job, b, dask_key_name=f"volseg-block-{job.run_id[:8]}-{'.'.join(map(str, b.index))}")
        for b in blocks
    ]


def _execute(plan: Plan, info: _ModelInfo, options: PredictOptions) -> tuple[list[BlockStatus], float]:
    """Run the pending blocks; return their statuses and the seconds they took."""
    if not plan.pending:
        return [], 0.0
    if plan.scheduler in SCHEDULERS:
        job = _job(plan, info, options, plan.torch_threads, catch=True)
        with (
            _torch_threads(plan.torch_threads if plan.scheduler != "processes" else None),
            _progress(len(plan.pending), options.progress) as progress,
        ):
            results = _run_local(_tasks(job, plan.pending), plan.scheduler, plan.parallel, progress)
        return results, progress.seconds
    with _client(options, options.memory_limit) as client:
        threads = _check_workers(client, plan, options)
        job = _job(plan, info, options, threads, catch=False)
        with _progress(len(plan.pending), options.progress) as progress:
            results = _run_distributed(client, _tasks(job, plan.pending), options.retries, progress)
        return results, progress.seconds


@contextlib.contextmanager
def _progress(total: int, enabled: bool) -> Iterator[_Progress]:
    progress = _Progress(total, enabled)
    try:
        yield progress
    finally:
        progress.close()


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _report(plan: Plan, results: list[BlockStatus], seconds: float, compute_seconds: float) -> PredictResult:
    failed = [r for r in results if r.error]
    status = _finish(plan)
    result = PredictResult(
        out=plan.out,
        mask=plan.mask,
        status=status,
        blocks_total=plan.n_blocks,
        blocks_skipped=plan.blocks_done,
        blocks_written=len(results) - len(failed),
        blocks_failed=len(failed),
        voxels=sum(r.voxels for r in results if not r.error),
        seconds=seconds,
        compute_seconds=compute_seconds,
        plan=plan.to_dict(),
        errors=[f"block {'.'.join(map(str, r.index))}: {r.error}" for r in failed],
    )
    damaged = [r for r in failed if r.bad_input]
    if damaged:
        error = IncompleteRunError(
            f"{len(damaged)} of {plan.n_blocks} blocks could not read their input and are not marked done "
            f"(block {'.'.join(map(str, damaged[0].index))}: {damaged[0].error}); {plan.out} stays "
            "incomplete, and rerunning resumes it once the input is repaired"
        )
        error.result = result
        raise error
    if failed:
        error = IncompleteRunError(
            f"{len(failed)} of {plan.n_blocks} blocks failed after {plan.settings['retries']} retries and "
            f"are not marked done ({result.errors[0]}); {plan.out} stays incomplete, rerun the same "
            f"command to retry them"
        )
        error.result = result
        raise error
    return result
