"""The convert stage: a TIFF / PNG stack -> an OME-Zarr volume, streamed band by band.

A *band* is one chunk's depth of sections (``chunks[0]``, 1 by default). The
converter reads one band at a time (page by page from a multi-page TIFF, file by
file from a folder; from an uncompressed TIFF only a few rows of chunks of it at a
time), stores every block that is not done yet, records each one as done
(:meth:`volseg.storage.volumes.Volume.mark_done`) once it is on disk, and reuses its buffer.
Peak memory is therefore at most one band, whatever the stack's depth. The output's
status becomes ``complete`` only after the last block.

The readers (TIFF, PNG, folders, globs) are :mod:`volseg.storage.stacks`, the voxel sizes
:mod:`volseg.storage.calibration`; this module holds the options, creating or reopening the
output, and the copy pipeline (reading, compression and fsync threads, heap trimming).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from volseg.core import preempt
from volseg.core.progress import Progress, Tracker
from volseg.core.resources import available_cores
from volseg.errors import InputError, OptionError, OutputError, VolsegError
from volseg.storage.calibration import UNITS, normalise_unit, resolve_calibration
from volseg.storage.codecs import DEFAULT_CODEC, parse_codec, resolve_shards
from volseg.storage.files import json_ready
from volseg.storage.locations import Location
from volseg.storage.paths import local_path, location, output_not_input
from volseg.storage.provenance import now, provenance
from volseg.storage.stacks import Stack, open_stack
from volseg.storage.volumes import KINDS, Volume, create_volume, open_volume

__all__ = ["DEFAULT_CHUNKS", "ConvertOptions", "ConvertResult", "convert"]

DEFAULT_CHUNKS = (1, 1024, 1024)


# ------------------------------------------------------------------------ options
@dataclass(frozen=True)
class ConvertOptions:
    """Validated settings of one conversion (see :func:`convert`)."""

    chunks: tuple[int, int, int] | None = None
    codec: str = DEFAULT_CODEC
    voxel_size: tuple[float, float, float] | None = None
    unit: str | None = None
    channel: int | None = None
    order: str | None = None
    shards: tuple[int, int, int] | None = None

    @classmethod
    def checked(
        cls,
        *,
        chunks: Sequence[int] | None = None,
        codec: str | None = DEFAULT_CODEC,
        voxel_size: Sequence[float] | None = None,
        unit: str | None = None,
        channel: int | None = None,
        order: str | os.PathLike | None = None,
        shards: Sequence[int] | None = None,
    ) -> ConvertOptions:
        """Build options from user values, naming the bad value and the fix."""
        if chunks is not None:
            chunks = _positive_triple(chunks, "chunks", int, "1,1024,1024")
        if shards is not None:
            shards = _positive_triple(shards, "shards", int, "1,8192,8192")
        if voxel_size is not None:
            voxel_size = _positive_triple(voxel_size, "voxel_size", float, "50,4,4")
        if unit is not None:
            name = normalise_unit(unit)
            if name is None:
                raise OptionError(
                    f"--unit {unit!r}: unknown unit; use one of {', '.join(UNITS)} (or nm, um, mm)"
                )
            unit = name
        codec = str(codec or DEFAULT_CODEC).strip().lower()
        parse_codec(codec)
        if channel is not None and (isinstance(channel, bool) or not isinstance(channel, int) or channel < 0):
            raise OptionError(f"--channel {channel!r}: expected a channel index 0, 1, 2, ...")
        order = None if order is None else os.fspath(order)
        return cls(chunks, codec, voxel_size, unit, channel, order, shards)  # type: ignore[arg-type]


def _positive_triple(value: Any, name: str, kind: type, example: str) -> tuple:
    try:
        items = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        items = ()
    if len(items) != 3 or not all(np.isfinite(v) and v > 0 for v in items):
        raise OptionError(f"{name}={value!r}: expected three positive numbers (z, y, x), e.g. {example}")
    if kind is int and any(float(v) != int(v) for v in value):
        raise OptionError(f"{name}={value!r}: expected three positive integers (z, y, x), e.g. {example}")
    return items


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert` wrote: the complete volume and a summary of it.

    Attributes
    ----------
    volume
        The output, opened for reading and writing (``volume.data`` is a dask array).
    path, shape, dtype, chunks, shards, voxel_size, unit, kind
        The output's location and layout (``unit`` is ``None`` when the source was uncalibrated).
    seconds
        Wall time of the conversion, checks included.
    """

    volume: Volume = field(repr=False, compare=False)
    path: Path | Location
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    voxel_size: tuple[float, ...]
    unit: str | None
    kind: str
    seconds: float

    @classmethod
    def of(cls, vol: Volume, seconds: float) -> ConvertResult:
        """The summary of ``vol``, written in ``seconds``."""
        layout = (vol.shape, str(vol.dtype), vol.chunks, vol.shards, vol.voxel_size)
        return cls(vol, vol.path, *layout, vol.unit or None, vol.kind, seconds)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (everything but :attr:`volume`)."""
        names = ("path", "shape", "dtype", "chunks", "shards", "voxel_size", "unit", "kind", "seconds")
        return json_ready({name: getattr(self, name) for name in names})


# ------------------------------------------------------------------------- convert
def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    options: ConvertOptions | None = None,
    *,
    chunks: Sequence[int] | None = None,
    codec: str = DEFAULT_CODEC,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    channel: int | None = None,
    order: str | os.PathLike | None = None,
    shards: Sequence[int] | None = None,
    kind: str = "image",
    progress: Progress | None = None,
) -> ConvertResult:
    """Convert a TIFF / PNG stack into an OME-Zarr volume, band by band.

    Parameters
    ----------
    src
        Multi-page TIFF (classic, BigTIFF, ImageJ, OME), one 2-D TIFF or PNG, a folder
        of per-section TIFF / PNG files, or a glob pattern.
    out
        Output volume folder (``*.zarr``).
    options
        The settings below as one :class:`ConvertOptions` (then leave those keywords unset).
    chunks
        Chunk shape ``(Z, Y, X)``; default ``(1, 1024, 1024)`` clipped to the stack.
    codec
        ``blosc-zstd`` (default), ``blosc-lz4``, ``zstd``, ``gzip`` or ``none``, optionally ``:LEVEL``.
    voxel_size, unit
        Override the voxel size ``(z, y, x)`` read from the TIFF metadata; ``voxel_size``
        is in ``unit`` (nanometer by default). Without either, an uncalibrated source
        gets ``(1, 1, 1)`` and no unit.
    overwrite, resume
        Replace an existing output, or continue an interrupted one (same sources and settings).
    channel
        Channel (or RGB sample) to convert from a multi-channel source.
    order
        Folders and globs: ``"natural"`` (default), ``"name"``, or a text file listing section file names.
    shards
        Shard shape ``(Z, Y, X)``, whole chunks each (Zarr v3 sharding): one file per shard
        instead of per chunk, for stacks with very many chunks. A shard is then the unit that is
        written, fsynced and recorded as done, and a band is one shard deep. Default: no shards.
    kind
        What the stack holds, recorded in the volume's metadata for the stages that read it:
        ``image`` (raw EM, default), ``label`` (annotations: integer classes or instance ids;
        OME ``image-label`` metadata), ``mask`` (binary) or ``probability`` (a probability map
        from another tool, e.g. for ``volseg segment``).
    progress
        Receives the sections done (:mod:`volseg.core.progress`), with ``sections/s``.

    Returns
    -------
    ConvertResult
        The complete volume (``.volume``: shape ``(Z, Y, X)``, the source's dtype) and its summary.
    """
    start = time.perf_counter()
    given = {"chunks": chunks, "codec": codec, "voxel_size": voxel_size, "unit": unit}
    given.update({"channel": channel, "order": order, "shards": shards})
    if options is not None:
        defaults = {f.name: f.default for f in dataclasses.fields(ConvertOptions)}
        if any(given[k] != defaults[k] for k in given):
            raise OptionError("convert: pass the settings as options or as keywords, not both")
        given = dataclasses.asdict(options)
    opts = ConvertOptions.checked(**given)
    out = _checked_paths(src, out, kind, overwrite, resume)
    with open_stack(src, channel=opts.channel, order=opts.order) as stack:
        vol = _output(src, out, stack, opts, kind, overwrite=overwrite, resume=resume)
        with preempt.stop_on_signals():  # SIGTERM / SIGUSR1: finish the blocks in hand, record them, stop
            _copy(stack, vol, progress)
    if not vol.complete:
        vol.mark_complete()
    return ConvertResult.of(vol, time.perf_counter() - start)


def _checked_paths(
    src: str | os.PathLike, out: str | os.PathLike, kind: str, overwrite: bool, resume: bool
) -> Path | Location:
    """The checks that need no source: the flags, the paths, the kind name."""
    if overwrite and resume:
        raise OptionError("--overwrite and --resume exclude each other: choose one")
    out = location(out, "OUT")  # a local folder or a URL (s3://...); the TIFF sources are local files
    if isinstance(src, (str, os.PathLike)):
        local_path(src, "SRC")
    _check_kind(kind)
    return out


def _output(
    src: str | os.PathLike,
    out: Path,
    stack: Stack,
    opts: ConvertOptions,
    kind: str,
    *,
    overwrite: bool,
    resume: bool,
) -> Volume:
    """Check the stack against the output and the kind, then create the output or reopen it to resume."""
    _refuse_source_as_output(out, stack, opts.order)
    if np.dtype(stack.dtype).kind not in "biuf":
        raise InputError(
            f"{stack.files[0]}: holds {stack.dtype} values; volseg converts integer, float or boolean "
            "images: export the stack as one of those"
        )
    _check_kind(kind, stack.dtype)
    config = _config(src, stack, opts)
    config["kind"] = kind
    if resume and (out.exists() or out.is_symlink()):
        return _reopen(out, stack, config)
    return _create(out, stack, config, overwrite)


def _refuse_source_as_output(out: Path, stack: Stack, order: Any = None) -> None:
    """The output is no source file, no folder holding one, and nothing inside one."""
    inputs: list[tuple[str, Any]] = [("source", f) for f in stack.files]
    if order not in (None, "natural", "name"):
        inputs.append(("--order file", order))
    output_not_input({"OUT": out}, inputs)


def _check_kind(kind: str, dtype: Any = None) -> None:
    if kind not in KINDS:
        raise OptionError(f"--kind {kind!r}: use one of {', '.join(KINDS)}")
    if dtype is None:
        return
    dt = np.dtype(dtype)
    integer = dt.kind in "biu"
    if (kind in ("label", "mask") and not integer) or (kind == "probability" and dt.kind not in "uf"):
        need = "integer values" if kind in ("label", "mask") else "unsigned integers or floats"
        raise InputError(
            f"--kind {kind}: the stack holds {dt}, but a {kind} volume needs {need}; check the source "
            "or use --kind image"
        )


def _config(src: str | os.PathLike, stack: Stack, opts: ConvertOptions) -> dict[str, Any]:
    """Everything that decides the output's bytes: recorded, and compared on resume."""
    chunks = tuple(min(c, s) for c, s in zip(opts.chunks or DEFAULT_CHUNKS, stack.shape, strict=True))
    cal = resolve_calibration(stack.calibration, opts.voxel_size, opts.unit)
    config = {
        "stage": "convert",
        "source": os.fspath(src),
        "shape": list(stack.shape),
        "dtype": str(stack.dtype),
        "chunks": list(chunks),
        "codec": opts.codec,
        "voxel_size": list(cal.voxel_size),
        "unit": cal.unit,
        "channel": opts.channel,
        "order": opts.order,
        "shards": opts.shards and resolve_shards(opts.shards, chunks, stack.shape, "--shards"),
    }
    return json.loads(json.dumps(config))  # the form it takes once stored


def _create(out: Path, stack: Stack, config: dict[str, Any], overwrite: bool) -> Volume:
    return create_volume(
        out,
        stack.shape,
        stack.dtype,
        config["chunks"],
        codec=config["codec"],
        voxel_size=config["voxel_size"],
        unit=config["unit"],
        shards=config["shards"],
        kind=config["kind"],
        overwrite=overwrite,
        provenance_block=provenance(stack.files, config),
    )


def _reopen(out: Path, stack: Stack, config: dict[str, Any]) -> Volume:
    """Reopen an interrupted output, refusing one made from other sources or settings."""
    again = "pass --overwrite to start again"
    try:
        vol = open_volume(out, mode="r+")
    except InputError as exc:
        raise OutputError(f"cannot resume {out}: {exc}; {again}") from None
    old = vol.provenance.get("config", {})
    if old.get("stage") != "convert":
        raise OutputError(f"cannot resume {out}: it was not written by 'volseg convert'; {again}")
    keys = ("shape", "dtype", "chunks", "codec", "voxel_size", "unit", "channel", "order", "shards", "kind")
    for key in keys:
        if old.get(key, "image" if key == "kind" else None) != config[key]:
            raise OutputError(
                f"cannot resume {out}: it was made with {key} {old.get(key)!r}, this run has "
                f"{config[key]!r}; rerun with the first run's options, or {again}"
            )
    current = provenance(stack.files)["sources"]
    then = vol.provenance.get("sources", [])
    if current != then:
        changed = (
            next((a["path"] for a, b in zip(current, then, strict=False) if a != b), None)
            or f"{len(then)} -> {len(current)} files"
        )
        raise OutputError(
            f"cannot resume {out}: the sources changed since it was started ({changed}); {again}"
        )
    if not vol.complete:
        vol.update_meta(resumed=[*vol.meta.get("resumed", []), now()])
    return vol


def _copy(stack: Stack, vol: Volume, progress: Progress | None) -> None:
    """Write every block that is not done yet, a band of sections (or a few rows of it) at a time."""
    (cz, cy, _), (nbz, nby, nbx) = vol.block_shape, vol.block_grid
    nz, ny, nx = stack.shape
    done = vol.done_blocks()
    todo = [[(b, y, x) for y in range(nby) for x in range(nbx) if (b, y, x) not in done] for b in range(nbz)]
    finished = sum(min(cz, nz - b * cz) for b in range(nbz) if not todo[b])
    rows = _rows_at_a_time(stack, cy, nbx)
    # Two buffers when two pieces fit in a band's rows: the next piece is read while this one compresses.
    buffers = [np.empty((min(cz, nz), rows, nx), stack.dtype) for _ in range(2 if 2 * rows <= ny else 1)]
    try:
        with (
            Tracker(progress, f"convert {vol.path.name}", nz, "sections") as tracker,
            ThreadPoolExecutor(_SYNCERS, thread_name_prefix="volseg-fsync") as sync,
            ThreadPoolExecutor(_writers(), thread_name_prefix="volseg-compress") as compress,
        ):
            if finished:
                tracker.update(finished)
            advance = _with_speed(tracker)
            _pipeline(stack, vol, _pieces(todo, cz, cy, nz, ny, rows), buffers, compress, sync, advance)
    except VolsegError as exc:
        raise type(exc)(f"{exc}; {vol.path} is left incomplete") from exc
    except OSError as exc:
        raise OutputError(
            f"{vol.path}: cannot write ({exc.strerror or exc}); it is left incomplete: "
            "fix that and rerun with --resume"
        ) from exc


def _with_speed(tracker: Tracker) -> Callable[[float], None]:
    """``tracker.advance`` that also reports the sections per second of this run (resumed ones aside)."""
    started, before = time.perf_counter(), tracker.done

    def advance(n: float) -> None:
        elapsed = time.perf_counter() - started
        speed = (tracker.done + n - before) / elapsed if elapsed > 0 else 0.0
        tracker.advance(n, **{"sections/s": round(speed, 2)})

    return advance


def _pieces(
    todo: Sequence[Sequence[tuple[int, int, int]]], cz: int, cy: int, nz: int, ny: int, rows: int
) -> Iterator[tuple[int, int, int, list[tuple[int, int, int]]]]:
    """``(z0, z1, y0, blocks)`` for each piece of the bands with work left; ``blocks`` may be empty."""
    for b, blocks in enumerate(todo):
        if blocks:
            z0, z1 = b * cz, min((b + 1) * cz, nz)
            for y0 in range(0, ny, rows):
                yield z0, z1, y0, [i for i in blocks if y0 <= i[1] * cy < y0 + rows]


def _pipeline(
    stack: Stack,
    vol: Volume,
    pieces: Iterator[tuple[int, int, int, list[tuple[int, int, int]]]],
    buffers: list[np.ndarray],
    compress: ThreadPoolExecutor,
    sync: ThreadPoolExecutor,
    advance: Callable[[float], None],
) -> None:
    """Read each piece into the next free buffer and hand its blocks to the compression threads.

    Each block is its own chunk (or shard) file, so no two threads touch the same object and no
    lock is needed. A compression thread stores its block, then hands the fsync and the done
    record to the sync threads, so compressing never waits for the disk; the records trail the
    data by a piece or two.
    """
    ny, rows = stack.shape[1], buffers[0].shape[1]
    free = list(buffers)
    inflight: deque[tuple[np.ndarray, list[Future[Future[None]]]]] = deque()  # buffer, its blocks' stores
    records: list[Future[None]] = []  # done records being written
    stopped = False
    try:
        for z0, z1, y0, blocks in pieces:
            if preempt.requested():  # a batch system's notice: no new piece; the ones in hand are finished
                stopped = True
                break
            if blocks:
                if not free:  # reuse the oldest piece's buffer once all its blocks are stored
                    buf, stores = inflight.popleft()
                    stored = [f.result() for f in stores]
                    _wait(records)
                    records = stored
                    free.append(buf)
                buf = free.pop()
                piece = buf[: z1 - z0, : min(ny - y0, rows)]
                stack.read(z0, z1, piece, y0)
                inflight.append(
                    (buf, [compress.submit(_store_block, vol, piece, y0, b, sync) for b in blocks])
                )
                _trim_heap()
            advance((z1 - z0) * min(ny - y0, rows) / ny)
        while inflight:
            records += [f.result() for f in inflight.popleft()[1]]
        _wait(records)
        if stopped:
            done = len(vol.done_blocks())
            raise preempt.Preempted(
                f"{vol.path}: stopped by {preempt.stop_signal()} with {done} of {vol.n_blocks} blocks "
                "written and recorded; rerun the same command with --resume to finish"
            )
    except BaseException:
        # drop queued blocks; stored ones keep records
        for f in (f for _, stores in inflight for f in stores):
            f.cancel()
        raise


def _store_block(
    vol: Volume, piece: np.ndarray, y0: int, index: tuple[int, int, int], sync: ThreadPoolExecutor
) -> Future[None]:
    """Store one block from ``piece`` (rows ``y0 ..`` of a band); its done record follows on disk."""
    region = vol.block_region(index)
    vol.array[region] = piece[:, region[1].start - y0 : region[1].stop - y0, region[2]]
    return sync.submit(vol.mark_done, index)


def _wait(futures: Sequence[Future[None]]) -> None:
    for f in futures:
        f.result()


def _rows_at_a_time(stack: Stack, cy: int, nbx: int) -> int:
    """Rows of a band to read at once: whole sections, unless the stack can read rows.

    Then (uncompressed TIFFs) a few rows of chunks suffice, enough to give every writer a block:
    memory falls from a band to a slice of it, which matters for 8k x 8k sections.
    """
    ny = stack.shape[1]
    if not stack.reads_rows:
        return ny
    return min(ny, cy * -(-_writers() // nbx))


_SYNCERS = 4  # fsyncs in flight: they wait on the disk, not on a core


def _writers() -> int:
    """Threads that compress and store blocks: one per core, and one more.

    A writer spends part of each block in Python (zarr's bookkeeping, under the GIL) and part in
    the codec (without it); the extra one keeps the cores busy meanwhile. Measured on 2 cores
    (1.07 GB): 2 writers 7.8 s, 3 writers 7.0 s, 4 writers 7.1 s; each writer adds ~4 MiB.
    """
    return available_cores(_MAX_CORES) + 1


_MAX_CORES = 16  # compression threads beyond this gain nothing: the disk is the limit


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl has none
    except (OSError, AttributeError):
        return None


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS after a band.

    The codecs allocate and free chunk-sized buffers in every writer thread; glibc keeps
    those pages in per-thread arenas, which would grow the resident size band after band.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
