"""Pure planning of a prediction run: how the output is cut into chunks and blocks, and what it costs.

No I/O and no torch (``import volseg.stages.predict.plan`` loads neither): the facts about the model
(:class:`ModelInfo`) and the image come in as values, and the arithmetic is
:mod:`volseg.core.tiling`'s. :func:`volseg.stages.predict.plan_prediction` gathers those facts (it
loads the model and opens the volumes) and calls the steps here:

1. :func:`check_tile_halo` and :func:`resolve_roi`: the tile, halo, mirrored edge and ROI, checked;
2. :func:`lay_out`: output chunks, chunks per block (:func:`grouping`), tile and batch size within the
   memory limit (:func:`size_blocks`, :func:`estimate_memory`);
3. :func:`make_plan`: the :class:`Plan`, given the chunks an earlier identical run has done.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from volseg.core import tiling
from volseg.core.resources import available_cores
from volseg.core.units import clock, human_bytes
from volseg.errors import OptionError
from volseg.nn.speeds import Candidate
from volseg.stages.predict.options import PredictOptions
from volseg.storage.files import json_ready

if TYPE_CHECKING:
    from volseg.nn.inference import InferOptions

__all__ = [
    "BACKEND_MARGIN",
    "BASE_MEMORY",
    "BLOCK_TARGET_YX",
    "DEFAULT_PARALLEL",
    "Job",
    "Layout",
    "ModelInfo",
    "Plan",
    "check_tile_halo",
    "choices_open",
    "choose",
    "estimate_memory",
    "grouping",
    "lay_out",
    "make_plan",
    "notes",
    "parallelism",
    "resolve_roi",
    "settings",
    "size_blocks",
]

#: Blocks are grouped from output chunks until their y and x extents reach this (px), so that
#: a task covers whole tiles; the halo is read once per block instead of once per chunk.
BLOCK_TARGET_YX = 1024
#: Full-resolution feature maps of ``base_channels`` counted per window pixel (see :func:`estimate_memory`).
ACTIVATION_MAPS = 10
#: Memory (bytes) of a worker process before any block: interpreter, torch, the model.
BASE_MEMORY = 400 * 2**20
#: Tasks in flight on one machine by default (threads or processes), each with cores / 2 torch threads.
DEFAULT_PARALLEL = 2
#: ``--backend auto`` leaves torch for another runtime only when that one's best output rate is at least
#: this much higher (their outputs differ by about 1e-7: a change of runtime should buy a real gain).
BACKEND_MARGIN = 1.1

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class ModelInfo:
    """What planning and the tasks need to know of the model, and its name (a checksum)."""

    key: str
    path: str | None
    config: dict[str, Any]
    divisor: int
    halo: int
    context: int
    channels: int
    normalization: dict[str, Any] | None
    #: Copied into the output's metadata: foreground, label_convention, normalization.
    meta: dict[str, Any]
    #: What the model's output means (:meth:`volseg.storage.conventions.Convention.to_dict`).
    convention: dict[str, Any] | None = None
    #: An affinity model's offsets (one per output channel): the output is an affinity volume.
    offsets: tuple[tuple[int, int, int], ...] | None = None


@dataclass(frozen=True)
class Job:
    """What every task needs, small and picklable (paths, numbers, the inference options)."""

    run_id: str
    image: str
    out: str
    mask: str | None
    model_key: str
    model_path: str | None
    roi_start: Shape
    out_shape: Shape
    chunks: Shape
    halo: int
    edge: int
    divisor: int
    context: int
    infer: InferOptions
    normalization: dict[str, Any] | None
    dtype: str
    threshold: float | None
    channel: int | None
    pad_mode: str
    torch_threads: int | dict[str, int] | None = None
    attempts: int = 1
    catch: bool = True
    backend: str = "torch"
    #: Forward passes one at a time in the process (on all its threads), the other tasks reading and writing.
    #: Storage options per URL protocol (volseg.storage.locations.snapshot): URLs open alike everywhere.
    storage: dict[str, dict[str, Any]] | None = None
    serial: bool = False
    #: A block whose input window holds one value is written as background without a forward pass.
    skip_empty: bool = False
    #: The tissue mask (nonzero = compute) and the image voxels per mask voxel along (z, y, x).
    tissue_mask: str | None = None
    mask_factors: tuple[int, int, int] = (1, 1, 1)
    #: An affinity model's channels (0: not one): every channel is written (a channel volume), not one class.
    affinities: int = 0


@dataclass(frozen=True)
class Layout:
    """How the output is stored and computed: chunks, blocks, tile, batch, device (no resume yet)."""

    roi: tiling.Roi
    out_shape: Shape
    chunks: Shape
    chunks_per_block: Shape
    tile: int
    halo: int
    edge: int
    batch_size: int
    device: str
    precision: str
    memory_per_block: int
    #: The runtime of the forward passes (``--backend auto`` resolved).
    backend: str
    #: Forward passes at once in a process: 1 (one at a time on all cores) or the tasks in flight.
    streams: int
    #: How tile, backend and streams were chosen: ``source`` (given / default / cache / probe) and, when
    #: measured speeds were used, each candidate's speed, compute overhead and output rate.
    choice: dict[str, Any]

    @property
    def block_shape(self) -> Shape:
        return _block_shape(self.chunks, self.chunks_per_block, self.out_shape)


def _block_shape(chunks: Sequence[int], cpb: Sequence[int], out_shape: Sequence[int]) -> Shape:
    return tuple(min(c * k, s) for c, k, s in zip(chunks, cpb, out_shape, strict=True))  # type: ignore[return-value]


@dataclass(frozen=True)
class Plan(Layout):
    """A resolved run: what ``--dry-run`` prints and what :func:`volseg.stages.predict.predict` executes.

    The :class:`Layout` it was made from, with the paths, the scheduler and the blocks still to run.
    """

    model_path: str | None
    image: str
    out: str
    mask: str | None
    source_shape: Shape
    divisor: int
    context: int
    dtype: str
    scheduler: str
    parallel: int
    torch_threads: int
    #: Forward passes one at a time (a lock in the process), each on all ``torch_threads``.
    serial: bool
    n_blocks: int
    n_chunks: int
    blocks_done: int
    halo_overhead: float
    compute_overhead: float
    memory_total: int
    identity: dict[str, Any]
    settings: dict[str, Any]
    pending: list[tiling.Block] = field(default_factory=list, repr=False)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Seconds the pending blocks' forward passes take here, from a short probe (``--dry-run``).
    estimate_seconds: float | None = None
    probe: dict[str, Any] | None = None
    #: Image voxels per voxel of the tissue mask (``--mask``) along (z, y, x).
    mask_factors: tuple[int, int, int] = (1, 1, 1)

    def describe(self) -> list[str]:
        """The plan in a few lines (``--dry-run``)."""
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
            self._scheduler_line(),
            *self._choice_lines(),
            *self._estimate_lines(),
            *(f"note       {n}" for n in self.notes),
            *(f"warning    {w}" for w in self.warnings),
        ]

    def _scheduler_line(self) -> str:
        runtime = f"{self.backend} backend"
        if self.serial:
            return (
                f"scheduler  {self.scheduler}, {self.parallel} tasks in flight, forward passes one at a time "
                f"on {self.torch_threads} thread(s) ({runtime})"
            )
        return (
            f"scheduler  {self.scheduler}, {self.parallel} parallel task(s) x {self.torch_threads} thread(s) "
            f"({runtime})"
        )

    def _choice_lines(self) -> list[str]:
        c = self.choice
        if c.get("source") not in ("cache", "probe"):
            return []
        others = sorted((r for r in c["candidates"] if r.get("rate") is not None), key=lambda r: -r["rate"])[
            :4
        ]
        ranked = ", ".join(f"{r['candidate']} {r['rate']:.2f}" for r in others)
        return [
            f"choice     {c['chosen']} (backend/tile/forwards at once): {c['rate']:.2f} output Mvox/s "
            f"by the speeds measured here ({c['source']}); best: {ranked}"
        ]

    def _estimate_lines(self) -> list[str]:
        if self.estimate_seconds is None or self.probe is None:
            return []
        p = self.probe
        return [
            f"estimate   ~{clock(self.estimate_seconds)} of forward passes for {len(self.pending)} block(s) "
            f"(probe: {p['mvox_per_s']:.2f} Mvox/s on {p['batch']} x {p['tile']}^2 windows, {p['precision']} "
            f"on {p['device']}; reading and writing come on top)"
        ]

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "pending"}
        d["blocks_to_run"] = len(self.pending)
        d["block_shape"] = list(self.block_shape)
        return d


# ----------------------------------------------------------------- tile, halo, ROI
def resolve_roi(roi: str | Sequence[Sequence[int | None]] | None, shape: Sequence[int]) -> tiling.Roi:
    """The ROI option (text or ranges, ``None``: everything) as checked ``(start, stop)`` per axis."""
    if isinstance(roi, str):
        roi = tiling.parse_roi(roi)
    return tiling.resolve_roi(roi, shape)


def check_tile_halo(
    options: PredictOptions, info: ModelInfo, default_edge: int
) -> tuple[int | None, int, int]:
    """Tile (None: chosen with the block), halo and mirrored edge, checked against the model.

    ``default_edge`` is the edge without ``--edge`` (:data:`volseg.nn.inference.DEFAULT_EDGE`).
    """
    if options.tile is not None:
        tiling.check_size(options.tile, info.divisor, "--tile")  # names the nearest valid tiles
    if options.halo is not None:  # windows start on the pooling grid only for such halos
        tiling.check_size(options.halo, info.divisor, "--halo", allow_zero=True)
    halo = info.halo if options.halo is None else options.halo
    edge = default_edge if options.edge is None else options.edge
    tiling.check_size(edge, info.divisor, "--edge", allow_zero=True)  # the frame starts on the grid too
    return options.tile, halo, min(edge, halo)


# ------------------------------------------------------------------- blocks, memory
def grouping(
    out_shape: Sequence[int], chunks: Sequence[int], block: Sequence[int] | None, tile: int, tiles_wanted: int
) -> Shape:
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
    info: ModelInfo,
    precision: str,
    itemsize: int,
) -> int:
    """Bytes one block in flight needs: its window, float output, batch windows and activations.

    The U-Net's peak activations are about 8 feature maps of ``base_channels`` at full
    resolution per window (skips kept for the decoder), 4 bytes a value in fp32 and 2 in
    bf16 / fp16: measured 30 and 16 bytes per pixel and base channel (base 16, depth 4, CPU,
    1216 x 1216 windows). 10 maps are counted: with 9, ``benchmarks/predict.py --large`` measured a
    peak RSS of 2155 MiB against 2099 stated (torch fp32, tile 1024, two blocks in flight, AVX2).
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
    batch_mem = batch * w2 * ((2 * c + 1) * 4 + ACTIVATION_MAPS * base * act_bytes)
    return int(window + out + batch_mem)


def parallelism(options: PredictOptions, n_pending: int) -> tuple[str, int, int]:
    """(scheduler label, tasks in flight, torch threads per task) on this machine.

    By default :data:`DEFAULT_PARALLEL` tasks run at once (one reads or writes while another
    computes) and share the cores between their torch threads. With a running cluster the
    count is known only once connected (1 here, for the estimates).
    """
    cores = available_cores()
    spec = options.cluster_spec
    sched = options.scheduler or (spec.label if spec else "local-cluster" if options.workers else "threads")
    if sched == "synchronous" or options.remote:
        parallel = 1
    else:
        parallel = options.workers or min(cores, DEFAULT_PARALLEL)
    parallel = max(1, min(parallel, n_pending))
    return sched, parallel, max(1, cores // parallel)


@dataclass(frozen=True)
class _Sizing:
    """What :func:`size_blocks` works with: the fixed facts and the memory budget of one block."""

    options: PredictOptions
    info: ModelInfo
    out_shape: Sequence[int]
    chunks: Sequence[int]
    tile: int | None
    halo: int
    precision: str
    itemsize: int
    budget: float


def size_blocks(
    options: PredictOptions,
    info: ModelInfo,
    out_shape: Sequence[int],
    chunks: Sequence[int],
    tile: int | None,
    halo: int,
    precision: str,
    itemsize: int,
    parallel: int,
    device: str,
) -> tuple[int, int, Shape, int]:
    """Tile, batch size, chunks per block and memory per block in flight.

    Without ``--memory-limit``: the given (or default) tile and batch, chunks grouped up to
    :data:`BLOCK_TARGET_YX`. The default batch is 1 on CPU (larger batches are no faster there
    and multiply the activations' memory) and 4 on a GPU. With a limit: the largest that fit,
    shrinking the block's depth, then its extent, then (unless ``--tile``) the tile, then
    (on a GPU, unless ``--batch-size``) the batch.
    """
    gpu = device not in ("cpu", "mps")
    batches = [options.batch_size] if options.batch_size else ([8, 4, 2, 1] if gpu else [1])
    if not options.memory_limit:
        batches = [options.batch_size or (4 if gpu else 1)]
    budget = (options.memory_limit - BASE_MEMORY) / parallel if options.memory_limit else math.inf
    sizing = _Sizing(options, info, out_shape, chunks, tile, halo, precision, itemsize, budget)
    smallest = math.inf
    for batch in batches:
        fit, least = _fit_tile(sizing, batch)
        if fit is not None:
            return fit
        smallest = min(smallest, least)
    raise OptionError(
        f"--memory-limit {human_bytes(options.memory_limit or 0)}: too small, the smallest plan needs about "
        f"{human_bytes(smallest * parallel + BASE_MEMORY)} ({parallel} block(s) in flight); raise it, or "
        f"lower --chunks or --workers"
    )


def _fit_tile(s: _Sizing, batch: int) -> tuple[tuple[int, int, Shape, int] | None, float]:
    """The first (tile, batch, chunks per block, memory) within budget at this batch, else the least memory.

    Shrinks the block (unless ``--block``), then halves the tile (unless ``--tile``).
    """
    smallest = math.inf
    t_max = s.tile or BLOCK_TARGET_YX
    while True:
        cpb = grouping(s.out_shape, s.chunks, s.options.block, t_max, batch)
        while True:
            block_shape = _block_shape(s.chunks, cpb, s.out_shape)
            t = s.tile or min(t_max, tiling.round_up(max(block_shape[1:]), s.info.divisor))
            mem = estimate_memory(block_shape, t, s.halo, batch, s.info, s.precision, s.itemsize)
            if mem <= s.budget:
                return (t, batch, cpb, mem), mem
            smallest = min(smallest, mem)
            if s.options.block is not None or cpb == (1, 1, 1):
                break
            cpb = _shrink(cpb)
        if s.tile or t_max <= s.info.divisor:
            return None, smallest
        t_max = max(s.info.divisor, tiling.round_up(t_max // 2, s.info.divisor))


def _shrink(cpb: Shape) -> Shape:
    kz, ky, kx = cpb
    if kz > 1:
        return (kz // 2, ky, kx)
    if ky >= kx and ky > 1:
        return (kz, ky // 2, kx)
    return (kz, ky, max(1, kx // 2))


def lay_out(
    options: PredictOptions,
    info: ModelInfo,
    roi: tiling.Roi,
    source_chunks: Sequence[int],
    itemsize: int,
    sizes: tuple[int | None, int, int],
    device: str,
    precision: str,
    speeds: Mapping[Candidate, float] | None = None,
    source_shape: Sequence[int] | None = None,
    measured: str = "cache",
) -> Layout:
    """Output chunks and blocks, tile, batch, backend and streams for ``options`` over ``roi``.

    ``sizes``: tile, halo and edge from :func:`check_tile_halo`; ``itemsize``: bytes per image value.
    With ``speeds`` (measured here, :mod:`volseg.nn.speeds`; ``measured`` says how: ``cache`` or ``probe``)
    the tile, backend and streams that ``options`` leave open are chosen by :func:`choose`; without, the
    given or default tile, torch (or the given backend), and the default streams.
    """
    tile, halo, edge = sizes
    out_shape = tuple(b - a for a, b in roi)
    chunks = tuple(min(int(c), s) for c, s in zip(options.chunks or source_chunks, out_shape, strict=True))
    _, parallel, _ = parallelism(options, 1 << 30)
    backend = "torch" if options.backend == "auto" else options.backend
    open_ = choices_open(options, device)
    if speeds and open_ and source_shape is not None:
        return choose(
            options, info, roi, chunks, itemsize, sizes, device, precision, speeds, source_shape, measured
        )
    plan_tile, batch, cpb, mem = size_blocks(
        options, info, out_shape, chunks, tile, halo, precision, itemsize, parallel, device
    )
    streams = 1 if backend != "torch" else parallel
    source = "given" if options.tile is not None and options.backend != "auto" else "default"
    return Layout(
        roi, out_shape, chunks, cpb, plan_tile, halo, edge, batch, device, precision, mem,  # type: ignore[arg-type]
        backend, streams, {"source": source},
    )  # fmt: skip


def choices_open(options: PredictOptions, device: str) -> bool:
    """Whether predict may choose the tile or the backend: one of them left open, on this machine's CPU.

    Never for a ``--part`` job: the parts of one output may run on machines that would choose differently,
    and they must all compute with one tile and runtime (the static default, or what is given).
    """
    local = (options.scheduler or "threads") == "threads" and not options.workers and not options.remote
    open_ = options.tile is None or options.backend == "auto"
    return local and device == "cpu" and open_ and options.part is None


def choose(
    options: PredictOptions,
    info: ModelInfo,
    roi: tiling.Roi,
    chunks: Sequence[int],
    itemsize: int,
    sizes: tuple[int | None, int, int],
    device: str,
    precision: str,
    speeds: Mapping[Candidate, float],
    source_shape: Sequence[int],
    measured: str = "cache",
) -> Layout:
    """The layout with the highest output rate: measured speed at a tile / pixels computed per output pixel.

    Candidates are the measured ones that ``options`` allow (``--tile``, ``--backend``), each laid out as
    :func:`lay_out` would with that tile (within ``--memory-limit``; one that does not fit is left out). A
    tile larger than the sections' extent runs as that extent, at the speed measured for it. With
    ``--backend auto`` another runtime is chosen over torch only when its best rate is at least
    :data:`BACKEND_MARGIN` times torch's best.
    """
    _, halo, edge = sizes
    out_shape = tuple(b - a for a, b in roi)
    _, parallel, _ = parallelism(options, 1 << 30)
    extent = tiling.round_up(max(out_shape[1:]), info.divisor)
    rows: list[dict[str, Any]] = []
    best: dict[str, tuple[float, Layout, Candidate]] = {}
    for cand, speed in sorted(speeds.items()):
        if options.tile is not None and cand.tile != options.tile:
            continue
        if options.backend != "auto" and cand.backend != options.backend:
            continue
        if cand.streams not in (1, parallel) or (cand.tile > extent and _smaller_fits(speeds, cand, extent)):
            continue  # a layout this run cannot have, or a tile no larger in effect than a smaller one
        try:
            plan_tile, batch, cpb, mem = size_blocks(
                options, info, out_shape, chunks, cand.tile, halo, precision, itemsize, parallel, device
            )
        except OptionError:
            rows.append({"candidate": cand.label, "speed": speed, "fits": False})
            continue
        block = _block_shape(chunks, cpb, out_shape)
        runs_at = min(plan_tile, tiling.round_up(max(block[1:]), info.divisor))  # tiles never exceed blocks
        if runs_at < min(cand.tile, extent):  # smaller blocks than the tile (to fit): not this speed
            rows.append({"candidate": cand.label, "speed": speed, "fits": False})
            continue
        plan_tile = runs_at
        overhead = tiling.plan_overhead(
            out_shape[1:], block[1:], [a for a, _ in roi[1:]], plan_tile, halo, info.divisor,
            source_shape[1:], edge,
        )  # fmt: skip
        rate = speed / overhead
        rows.append({"candidate": cand.label, "speed": speed, "overhead": round(overhead, 4), "rate": rate})
        layout = Layout(
            roi, out_shape, tuple(chunks), cpb, plan_tile, halo, edge, batch, device, precision, mem,  # type: ignore[arg-type]
            cand.backend, cand.streams, {},
        )  # fmt: skip
        if cand.backend not in best or rate > best[cand.backend][0]:
            best[cand.backend] = (rate, layout, cand)
    if not best:  # nothing measured that this run allows: the static default
        fallback = replace(options, backend="torch" if options.backend == "auto" else options.backend)
        return lay_out(fallback, info, roi, chunks, itemsize, sizes, device, precision)
    torch_rate = best["torch"][0] if "torch" in best else 0.0
    winner = max(best.values(), key=lambda r: r[0])
    if options.backend == "auto" and "torch" in best and winner[0] < BACKEND_MARGIN * torch_rate:
        winner = best["torch"]
    rate, layout, cand = winner
    for row in rows:
        row.update({k: round(v, 3) for k, v in row.items() if isinstance(v, float)})
    choice = {"source": measured, "chosen": cand.label, "rate": round(rate, 3), "candidates": rows}
    return replace(layout, choice=choice)


def _smaller_fits(speeds: Mapping[Candidate, float], cand: Candidate, extent: int) -> bool:
    """Whether a smaller measured tile of the same backend and streams also covers ``extent``."""
    same = [c for c in speeds if c.backend == cand.backend and c.streams == cand.streams]
    return any(extent <= c.tile < cand.tile for c in same)


# --------------------------------------------------------------------------- the plan
def settings(options: PredictOptions, layout: Layout) -> dict[str, Any]:
    """The options as run (tile, halo, edge, batch and grouping resolved): recorded in the output."""
    out = asdict(options)
    out.update(
        tile=layout.tile,
        halo=layout.halo,
        edge=layout.edge,
        batch_size=layout.batch_size,
        chunks_per_block=list(layout.chunks_per_block),
        backend=layout.backend,
        streams=layout.streams,
        chosen_by=layout.choice.get("source"),
    )
    return json_ready(out)


def notes(info: ModelInfo, out_shape: Sequence[int], block: Sequence[int], tile: int) -> list[str]:
    """What the user should know about this plan's results (told before the run)."""
    norm = info.config.get("norm", "batch")
    tiled = any(b < n or tile < b for b, n in zip(block[1:], out_shape[1:], strict=True))
    if norm in ("group", "instance") and tiled:
        return [
            f"the model's {norm} norm computes statistics over each tile's window, so tiles meet with "
            "seams; for seam-free output use --tile and --block covering whole sections"
        ]
    return []


def _part_note(options: PredictOptions, share: int) -> list[str]:
    if options.part_of is None:
        return []
    k, n = options.part_of
    return [f"part {k} of {n}: {share} blocks (every {n}th from block {k - 1}); the other parts do the rest"]


def make_plan(
    options: PredictOptions,
    info: ModelInfo,
    paths: Mapping[str, str | None],
    source_shape: Shape,
    layout: Layout,
    identity: dict[str, Any],
    done: set[tuple[int, ...]],
    warnings: Sequence[str] = (),
) -> Plan:
    """The plan: ``layout`` with the blocks still to run (a block is done when all its chunks are).

    ``paths``: ``image``, ``out`` and ``mask`` (``None`` without a threshold), resolved.
    """
    lay = layout
    all_blocks = list(tiling.blocks(lay.out_shape, lay.chunks, lay.chunks_per_block))
    if options.part_of is not None:  # a fixed share: block i belongs to part i % N + 1
        k, n = options.part_of
        all_blocks = [b for i, b in enumerate(all_blocks) if i % n == k - 1]
    pending = [b for b in all_blocks if not all(c in done for c in b.chunk_ids)]
    sched, parallel, threads = parallelism(options, len(pending))
    serial = lay.streams == 1 and parallel > 1 and sched == "threads"
    if lay.streams == 1 and sched in ("threads", "synchronous"):
        threads = available_cores()
    overhead = tiling.plan_overhead(
        lay.out_shape[1:],
        lay.block_shape[1:],
        [a for a, _ in lay.roi[1:]],
        lay.tile,
        lay.halo,
        info.divisor,
        source_shape[1:],
        lay.edge,
    )
    return Plan(
        **{f.name: getattr(lay, f.name) for f in fields(Layout)},
        model_path=info.path,
        image=str(paths["image"]),
        out=str(paths["out"]),
        mask=paths["mask"],
        source_shape=source_shape,
        divisor=info.divisor,
        context=info.context,
        dtype=options.dtype,
        scheduler=sched,
        parallel=max(1, parallel),
        torch_threads=threads,
        serial=serial,
        n_blocks=len(all_blocks),
        n_chunks=math.prod(tiling.grid_shape(lay.out_shape, lay.chunks)),
        blocks_done=len(all_blocks) - len(pending),
        halo_overhead=tiling.halo_overhead(lay.tile, lay.halo),
        compute_overhead=overhead,
        memory_total=lay.memory_per_block * max(1, parallel) + BASE_MEMORY,
        identity=identity,
        settings=settings(options, lay),
        pending=pending,
        notes=notes(info, lay.out_shape, lay.block_shape, lay.tile) + _part_note(options, len(all_blocks)),
        warnings=list(warnings),
    )
