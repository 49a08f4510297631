"""The block task and what a worker keeps between tasks: the model, the open volumes, its device.

:func:`run_block` is the task of one block: it reads its own input window straight from the image
volume (:func:`read_window`), runs :func:`volseg.nn.inference.infer_padded` (:func:`predict_block`),
crops, converts and writes each of its chunks once, and returns a :class:`BlockStatus` (a few numbers,
never arrays).

The model is loaded once per worker process and device (a module-level cache keyed by the model
file's checksum), never pickled into tasks; :func:`registered` shares a model loaded by the caller
with tasks that run in its process.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from volseg.core import preempt, tiling
from volseg.errors import ModelError, VolsegError
from volseg.stages.predict.plan import Job, ModelInfo
from volseg.storage.conventions import Convention, from_probability, legacy_convention
from volseg.storage.volumes import Volume, open_volume

if TYPE_CHECKING:
    import zarr
    from torch import nn

    from volseg.nn.inference import InferOptions, Margins

__all__ = [
    "BlockStatus",
    "failure",
    "model_info",
    "predict_block",
    "read_window",
    "registered",
    "run_block",
    "worker_address",
    "worker_device",
    "worker_slot",
]

# ------------------------------------------------------------------------------ model
#: Models prepared in this process, by (checksum, device); device None: as the caller loaded it.
_MODELS: dict[tuple[str, ...] | tuple[str, None], nn.Module] = {}  # (key, device[, backend]) -> model
_MODELS_LOCK = threading.Lock()
#: Held by a task's forward passes when the plan runs them one at a time (``Job.serial``): each then has
#: all the cores, while the other tasks in flight read their input and write their output.
_FORWARD_LOCK = threading.Lock()


def model_info(model: str | os.PathLike[str] | nn.Module) -> tuple[ModelInfo, nn.Module]:
    """Load (or accept) the model, check it, and name it by checksum."""
    from volseg.nn.modelfile import load_model, model_checksum

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
    info = ModelInfo(
        key=key,
        path=path_text,
        config=config,
        divisor=int(module.divisor),
        halo=int(module.halo),
        context=int(module.config.context),
        channels=int(module.config.out_channels),
        normalization=meta.get("normalization"),
        meta={k: meta.get(k) for k in ("foreground", "label_convention", "normalization")},
        convention=_convention(meta).to_dict(),
        offsets=_offsets(meta, int(module.config.out_channels)),
    )
    return info, module


def _offsets(meta: dict[str, Any], channels: int) -> tuple[tuple[int, int, int], ...] | None:
    """The affinity offsets a model file records (``extra.target == "affinities"``), else None."""
    extra = meta.get("extra") or {}
    if not isinstance(extra, dict) or extra.get("target") != "affinities":
        return None
    from volseg.core.affinities import check_offsets

    offsets = check_offsets(extra.get("offsets"), "the model's offsets")
    if len(offsets) != channels:
        raise ModelError(
            f"the model records {len(offsets)} affinity offsets for {channels} output channels; "
            "the file is damaged, train it again"
        )
    return tuple(tuple(o) for o in offsets)  # type: ignore[misc]


def _convention(meta: dict[str, Any]) -> Convention:
    """The model's recorded convention; an in-memory model without one: what its fields say."""
    record = meta.get("convention")
    return Convention.from_dict(record) if isinstance(record, dict) else legacy_convention(meta)


def _module_digest(module: nn.Module) -> str:
    digest = hashlib.sha256(type(module).__qualname__.encode())
    digest.update(repr(getattr(module, "config", None)).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def registered(info: ModelInfo, module: nn.Module) -> Iterator[None]:
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


def _worker_model(job: Job) -> tuple[nn.Module, InferOptions]:
    """The model for ``job`` in this worker, and the inference options for its device.

    Loaded and prepared once per process and device, then reused by every task.
    """
    import torch

    from volseg.nn.modelfile import load_model
    from volseg.nn.runtime import prepare_for_inference

    threads = job.torch_threads
    if isinstance(threads, dict):
        threads = threads.get(worker_address(), None)
    device = worker_device(job.infer.device)
    infer = job.infer if device == job.infer.device else replace(job.infer, device=device)
    with _MODELS_LOCK:
        if threads and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        key = (job.model_key, device, job.backend)  # a torch model and its exported twin are two entries
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
            model = prepare_for_inference(model, device)
            if job.backend != "torch":  # exported once per process: OpenVINO / ONNX Runtime on the CPU
                from volseg.nn.backends import wrap

                model = wrap(model, job.backend, threads or None)
            _MODELS[key] = model
        return model, infer


# ----------------------------------------------------------------------------- device
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
    return device if count < 2 else f"cuda:{worker_slot() % count}"


_SLOT = threading.local()
_SLOTS = itertools.count()


def worker_slot() -> int:
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


def worker_address() -> str | None:
    """This dask worker's address, or ``None`` outside a ``distributed`` worker."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


# ------------------------------------------------------------------------------- task
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
    #: Not started: a stop was requested (SIGTERM / SIGUSR1, :mod:`volseg.core.preempt`).
    stopped: bool = False
    #: Its input window held one value: written as background, no forward pass (``Job.skip_empty``).
    empty: bool = False


def failure(
    index: tuple[int, ...], exc: BaseException | None, voxels: int = 0, seconds: float = 0.0
) -> BlockStatus:
    """The status of a block that raised ``exc``: one line of error, flagged when the input is at fault."""
    if isinstance(exc, VolsegError):  # bad or damaged input, e.g. a missing chunk: its own message
        return BlockStatus(index, voxels, 0, seconds, " ".join(str(exc).split()), True)
    return BlockStatus(index, voxels, 0, seconds, f"{type(exc).__name__}: {exc}".splitlines()[0][:300])


_VOLUMES: dict[tuple[str, str], Volume] = {}


def _volume(path: str, mode: str, job: Job) -> Volume:
    """Open a volume once per process and run (zarr metadata is read once, not per task); a URL with
    the storage options of the process that planned the run."""
    from volseg.storage.locations import at

    run_id = job.run_id
    key = (path, f"{mode}:{run_id}")
    vol = _VOLUMES.get(key)
    if vol is None:
        for old in [k for k in _VOLUMES if not k[1].endswith(run_id)]:  # earlier runs' volumes
            _VOLUMES.pop(old, None)
        # the inputs were checked when the run was planned; an affinity output is a channel volume
        vol = _VOLUMES[key] = open_volume(at(path, job.storage), mode=mode, channels=True)
    return vol


def read_window(
    array: zarr.Array | np.ndarray, job: Job, block: tiling.Block
) -> tuple[np.ndarray, tuple[int, int], Margins]:
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


def predict_block(
    model: nn.Module,
    job: Job,
    block: tiling.Block,
    array: zarr.Array | np.ndarray,
    infer: InferOptions | None = None,
    *,
    window: tuple[np.ndarray, tuple[int, int], Margins] | None = None,
) -> np.ndarray:
    """float32 ``(Z, Y, X)`` probabilities of one block (pure given the input array).

    ``infer``: the inference options (default ``job.infer``), with this worker's device; ``window``: the
    block's input as :func:`read_window` returns it, when already read.
    """
    from volseg.nn.inference import infer_padded

    padded, (cy, cx), margins = window if window is not None else read_window(array, job, block)
    with _FORWARD_LOCK if job.serial else contextlib.nullcontext():
        probs = infer_padded(model, padded, job.halo, infer or job.infer, job.normalization, margins)
    if probs.ndim == 4 and not job.affinities:
        probs = probs[1 if job.channel is None else job.channel]
    bz, by, bx = block.shape
    return probs[..., cy : cy + by, cx : cx + bx]


#: Threads that convert, compress and write a block's chunks at once (zarr's codecs release the GIL).
WRITE_THREADS = 4
_WRITERS: list[Any] = []  # the process's write pool, made on first use
_WRITERS_LOCK = threading.Lock()


def _writers() -> Any:
    from concurrent.futures import ThreadPoolExecutor

    from volseg.core.resources import available_cores

    with _WRITERS_LOCK:
        if not _WRITERS:
            n = max(1, min(WRITE_THREADS, available_cores()))
            _WRITERS.append(ThreadPoolExecutor(n, thread_name_prefix="volseg-write"))
        return _WRITERS[0]


def _in_mask(job: Job, block: tiling.Block) -> bool:
    """Whether the tissue mask has a nonzero voxel over the block's output region."""
    mask = _volume(str(job.tissue_mask), "r", job)
    region = tuple(
        slice((start + s.start) // f, -(-(start + s.stop) // f))
        for s, start, f in zip(block.out, job.roi_start, job.mask_factors, strict=True)
    )
    return bool(np.asarray(mask.array[region]).any())


def is_constant(window: np.ndarray) -> bool:
    """Whether ``window`` holds a single value (NaNs count as different from everything)."""
    if window.size == 0:
        return True
    first = window.reshape(-1)[0]
    return bool(np.all(window == first))


def _write_chunks(job: Job, block: tiling.Block, probs: np.ndarray) -> int:
    """Convert and write each chunk of the block that is not done yet, several at once; the count written.

    Each chunk is written, made durable and then marked done on its own (one file each), so chunks of a
    block may go in parallel: a crash leaves every chunk either done or not recorded.
    """
    out = _volume(job.out, "r+", job)
    mask = _volume(job.mask, "r+", job) if job.mask else None
    todo = [c for c in block.chunk_ids if not (out.is_done(c) and (mask is None or mask.is_done(c)))]

    def write(cid: tuple[int, ...]) -> None:
        region = tiling.region(job.out_shape, job.chunks, cid)
        local = tuple(
            slice(r.start - b.start, r.stop - b.start) for r, b in zip(region, block.out, strict=True)
        )
        p = probs[(slice(None),) * (probs.ndim - 3) + local]  # an affinity block: every channel
        if mask is not None:
            mask.write_block(cid, (p >= np.float32(job.threshold)).astype(np.uint8))
        out.write_block(cid, from_probability(p, job.dtype))

    if len(todo) <= 1:
        for cid in todo:
            write(cid)
    else:
        from concurrent.futures import wait

        futures = [_writers().submit(write, cid) for cid in todo]
        wait(futures)  # every chunk finished before the block counts, or before its first error is raised
        for future in futures:
            future.result()
    return len(todo)


def run_block(job: Job, block: tiling.Block) -> BlockStatus:
    """The task: read the block with its halo, predict, write each of its chunks once.

    With ``job.catch`` (local schedulers) a failure is retried ``job.attempts - 1`` times and
    then returned as an error status, so that the other blocks go on; without it (a
    distributed cluster) the exception propagates and dask's own retries apply.
    """
    if preempt.requested():  # a batch system's notice: no new block; those in flight finish and record
        return BlockStatus(block.index, 0, 0, 0.0, stopped=True)
    start = time.perf_counter()
    for attempt in range(job.attempts):
        try:
            model, infer = _worker_model(job)
            source = _volume(job.image, "r", job)
            window = None
            empty = bool(job.tissue_mask) and not _in_mask(job, block)  # outside the tissue
            if not empty:
                window = read_window(source.array, job, block)
                empty = job.skip_empty and is_constant(window[0])  # resin, a black border
            if empty:  # the background, probability 0 (affinities: no pair joined), without a forward pass
                lead = (job.affinities,) if job.affinities else ()
                probs = np.zeros(lead + tuple(block.shape), np.float32)
            else:
                probs = predict_block(model, job, block, source.array, infer, window=window)
            written = _write_chunks(job, block, probs)
            seconds = time.perf_counter() - start
            return BlockStatus(block.index, block.size, written, seconds, empty=empty)
        except Exception as exc:
            if not job.catch:
                raise
            # bad or damaged input (a missing chunk): retrying can't help
            if isinstance(exc, VolsegError) or attempt + 1 == job.attempts:
                return failure(block.index, exc, block.size, time.perf_counter() - start)
    raise AssertionError("unreachable")  # pragma: no cover
