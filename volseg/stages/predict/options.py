"""The settings of a prediction run (:class:`PredictOptions`) and their checks.

Every value is checked when the options are made, so that a bad value is refused (one line naming the
``volseg predict`` option) before any model is loaded or output written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from volseg.cluster import ClusterSpec, is_address, load_cluster
from volseg.errors import OptionError

__all__ = ["DTYPES", "SCHEDULERS", "PredictOptions", "is_address"]

DTYPES = ("uint8", "float16", "float32")
SCHEDULERS = ("threads", "processes", "synchronous")


@dataclass(frozen=True)
class PredictOptions:
    """Settings of a prediction run; each one mirrors a ``volseg predict`` option.

    Parameters
    ----------
    tile
        Inner tile edge (px), a multiple of the model's divisor; ``None``: chosen. With speeds measured
        on this machine (:mod:`volseg.nn.speeds`: ``volseg doctor --tune``, or a first large run), the
        tile of the highest output rate: speed at the tile / pixels computed per output pixel (the halo
        costs ``(T + 2h)^2 / T^2`` between tiles); without, the block's edge up to 1024. A resumed run
        keeps the tile it started with.
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
        grouped up to :data:`volseg.stages.predict.plan.BLOCK_TARGET_YX` in y and x and enough
        sections to fill a batch.
    memory_limit
        Bytes the run may use (all tasks in flight together); chooses batch size and block.
    scheduler
        ``threads`` | ``processes`` | ``synchronous`` | ``tcp://HOST:PORT`` (a running
        ``dask scheduler``); ``None``: threads, or a LocalCluster when ``workers`` is set.
    workers
        With no scheduler: start a ``distributed.LocalCluster`` of this many worker processes.
        With ``threads`` or ``processes``: the pool size.
    cluster
        A cluster file (``--cluster FILE.toml``, :mod:`volseg.cluster`): a dask-jobqueue cluster (SLURM, PBS,
        LSF, SGE) started, scaled and closed by this run, or a running scheduler's address; instead of
        ``scheduler`` and ``workers``. Checked when the options are made. Its ``[cluster.worker] retries``,
        when given, replaces ``retries``.
    retries
        Times a failed block is retried before it is reported as failed (tried ``1 + retries`` times).
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
        :func:`volseg.nn.intensity.image_for_model`).
    skip_empty
        Blocks whose whole input window (with its halo and z context) holds a single value (empty resin,
        a black border) are not computed: their output is the background, probability 0 (0 in the mask),
        recorded as done and counted in the result; every other block is computed as without it, bit for
        bit. ``False`` computes them too.
    tissue_mask
        A mask volume (``--mask``; nonzero = compute), of the image's shape or coarser by whole factors
        per axis (e.g. a level of its pyramid): a block with no nonzero mask voxel over its region is
        written as background without a forward pass; every other block is computed whole, as without
        the mask.
    part
        ``"K/N"`` (``--part``): this job computes the K-th of N fixed shares of the blocks (K = 1 .. N;
        block i of the plan belongs to part ``i % N + 1``), so that N independent jobs (a job array)
        together write exactly the output of one run; whichever finishes last marks it complete. Every
        part must be given the same options and N.
    backend
        ``auto`` (default), ``torch``, ``openvino`` or ``onnxruntime``: the runtime of the forward pass on
        the CPU (optional extras, :mod:`volseg.nn.backends`); outputs equal torch's within about 1e-7.
        ``auto`` is torch unless speeds measured on this machine (:mod:`volseg.nn.speeds`) show an
        installed runtime at least :data:`volseg.stages.predict.plan.BACKEND_MARGIN` times faster for
        this run (fp32 only); a resumed run keeps the backend it started with.
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
    cluster: str | os.PathLike[str] | None = None
    retries: int = 2
    overwrite: bool = False
    activation: str = "auto"
    channel: int | None = None
    rescale: bool = False
    backend: str = "auto"
    skip_empty: bool = True
    tissue_mask: str | None = None
    part: str | None = None

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_sizes(self)
        _check_scheduler(self)
        _need(
            not (self.part_of and self.overwrite),
            f"--part {self.part} and --overwrite exclude each other: each job of the array would delete the "
            "others' work; delete the output once before submitting the array",
        )
        if self.cluster is not None:
            object.__setattr__(self, "cluster", os.fspath(self.cluster))  # recorded as text
            spec = self.cluster_spec  # read and checked now, before anything is loaded or written
            object.__setattr__(self, "retries", spec.retries_or(self.retries))

    @property
    def part_of(self) -> tuple[int, int] | None:
        """``(K, N)`` of ``part``, checked; ``None`` without it."""
        if self.part is None:
            return None
        from volseg.storage.shares import parse_part

        return parse_part(self.part)

    @property
    def remote(self) -> bool:
        """True when the blocks run on workers elsewhere: a scheduler address, or a cluster file."""
        return bool(self.cluster) or bool(self.scheduler and "://" in self.scheduler)

    @cached_property
    def cluster_spec(self) -> ClusterSpec | None:
        """The checked cluster file (:func:`volseg.cluster.load_cluster`), ``None`` without ``cluster``."""
        return load_cluster(self.cluster) if self.cluster is not None else None


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise OptionError(message)


def _check_choices(o: PredictOptions) -> None:
    """Values from a fixed list, and the threshold."""
    from volseg.nn.inference import ACTIVATIONS
    from volseg.nn.runtime import PRECISIONS

    _need(o.dtype in DTYPES, f"--dtype {o.dtype!r}: use one of {', '.join(DTYPES)}")
    _need(o.precision in PRECISIONS, f"--precision {o.precision!r}: use one of {', '.join(PRECISIONS)}")
    _need(o.activation in ACTIVATIONS, f"activation {o.activation!r}: use one of {', '.join(ACTIVATIONS)}")
    from volseg.nn.speeds import BACKEND_CHOICES

    _need(o.backend in BACKEND_CHOICES, f"--backend {o.backend!r}: use one of {', '.join(BACKEND_CHOICES)}")
    if o.backend not in ("torch", "auto"):
        from volseg.nn.backends import check_backend

        check_backend(o.backend, o.device)
    _need(
        o.threshold is None or 0.0 <= o.threshold <= 1.0,
        f"--threshold {o.threshold}: use a probability between 0 and 1, e.g. 0.5",
    )


def _check_sizes(o: PredictOptions) -> None:
    """Pixel sizes, counts and shapes within their ranges."""
    _need(
        o.tile is None or (isinstance(o.tile, int) and o.tile > 0),
        f"--tile {o.tile!r}: use a positive multiple of the model's divisor, e.g. 512",
    )
    _need(
        o.halo is None or (isinstance(o.halo, int) and o.halo >= 0),
        f"--halo {o.halo!r}: use a non-negative number of pixels (or leave it out for the model's)",
    )
    _need(
        o.edge is None or (isinstance(o.edge, int) and o.edge >= 0),
        f"--edge {o.edge!r}: use a non-negative number of pixels, e.g. 0 (or the halo to mirror it)",
    )
    _need(o.batch_size is None or o.batch_size >= 1, f"--batch-size {o.batch_size}: use 1 or more")
    _need(0 <= o.retries <= 100, f"--retries {o.retries}: use 0 to 100")
    _need(o.workers is None or 1 <= o.workers <= 1024, f"--workers {o.workers}: use 1 to 1024")
    _need(o.tile is None or o.tile <= 16384, f"--tile {o.tile}: use at most 16384 px (1024 is usual)")
    _need(o.halo is None or o.halo <= 4096, f"--halo {o.halo}: use at most 4096 px")
    _need(o.edge is None or o.edge <= 4096, f"--edge {o.edge}: use at most 4096 px")
    _need(o.batch_size is None or o.batch_size <= 1024, f"--batch-size {o.batch_size}: use 1 to 1024")
    _need(o.memory_limit is None or o.memory_limit > 0, f"--memory-limit {o.memory_limit}: use e.g. 4GiB")
    for name in ("chunks", "block"):
        value = getattr(o, name)
        _need(
            value is None or (len(value) == 3 and all(int(v) >= 1 for v in value)),
            f"--{name} {value}: use three positive sizes Z,Y,X",
        )


def _check_scheduler(o: PredictOptions) -> None:
    """A known scheduler or an address, and workers only where they apply."""
    sched = o.scheduler
    _need(
        sched is None or sched in SCHEDULERS or is_address(sched),
        f"--scheduler {sched!r}: use threads, processes, synchronous or a dask scheduler address "
        "tcp://HOST:PORT",
    )
    _need(
        not (o.workers and o.remote and not o.cluster),
        "--workers starts a local cluster; with --scheduler ADDRESS start workers with 'dask worker ADDRESS'",
    )
    if o.cluster is not None:
        _need(
            sched is None,
            f"--cluster and --scheduler {sched} exclude each other: the cluster file says where the "
            'workers are (kind = "address" for a running scheduler)',
        )
        _need(not o.workers, "--cluster and --workers exclude each other: set the jobs in [cluster.scale]")
    _need(not (o.workers and sched == "synchronous"), "--workers does not apply to --scheduler synchronous")
