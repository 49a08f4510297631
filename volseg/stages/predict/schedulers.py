"""Running the blocks: dask's local schedulers (threads, processes, synchronous) or a distributed cluster.

One ``dask.delayed`` task per pending block (:func:`tasks`); done blocks are not in the graph. With a
local scheduler a failed block is retried inside its task and comes back as an error status; on a
cluster dask's own retries apply (:func:`volseg.cluster.run_tasks`: ``1 + retries`` tries, then the
error) and a failure comes back from its future. Either way every finished block is counted by a
:class:`Meter` (voxels and seconds for the result, one progress update each). A cluster from a file
(``--cluster``) is opened, and closed at the end, by :func:`volseg.cluster.open_cluster`.

torch's thread count is set so that dask's parallel tasks times torch's threads do not exceed the
cores (on a cluster: per host, from what the workers report).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volseg.cluster import CONNECT_TIMEOUT_S, open_cluster, run_tasks
from volseg.core import preempt, tiling
from volseg.core.progress import Progress, Tracker
from volseg.core.resources import available_cores
from volseg.errors import OptionError, VolsegError
from volseg.stages.predict.options import SCHEDULERS, PredictOptions
from volseg.stages.predict.plan import Job, ModelInfo, Plan
from volseg.stages.predict.worker import BlockStatus, failure, run_block

if TYPE_CHECKING:
    from dask.delayed import Delayed
    from distributed import Client

__all__ = ["CONNECT_TIMEOUT_S", "Meter", "execute", "make_job", "tasks"]


class Meter:
    """The progress task of the blocks: voxels and seconds for the result, an update per finished block.

    Started (the bar appears, the plan's notes are told) only when the blocks are about to run, so that a
    refused cluster address shows no bar.
    """

    def __init__(self, progress: Progress | None, plan: Plan) -> None:
        self.tracker = Tracker(progress, "predict", len(plan.pending), "blocks")
        for note in plan.notes:
            self.tracker.note(f"note: {note}")
        self.voxels = 0
        self.start = self.end = time.perf_counter()

    def advance(self, status: BlockStatus | None) -> None:
        if status is not None and status.error is None:
            self.voxels += status.voxels
        rate = self.voxels / max(time.perf_counter() - self.start, 1e-9) / 1e6
        self.tracker.advance(1, **{"": f"{rate:.2f} Mvox/s"})  # shown beside the count as it is

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = time.perf_counter()
        self.tracker.close()


# ------------------------------------------------------------------------------ tasks
def make_job(
    plan: Plan, info: ModelInfo, options: PredictOptions, torch_threads: int | dict[str, int], catch: bool
) -> Job:
    """What every task of this run needs (``catch``: retry and report failures inside the task)."""
    from volseg.nn.inference import InferOptions
    from volseg.storage.locations import snapshot

    infer = InferOptions(
        tile=plan.tile,
        halo=plan.halo,
        edge=plan.edge,
        batch_size=plan.batch_size,
        precision=options.precision,
        device=options.device,
        tta=options.tta,
        activation="sigmoid" if info.offsets else options.activation,  # affinities: one per channel
    )
    return Job(
        run_id=uuid.uuid4().hex,
        image=plan.image,
        out=plan.out,
        mask=plan.mask,
        model_key=info.key,
        model_path=info.path,
        roi_start=tuple(a for a, _ in plan.roi),  # type: ignore[arg-type]
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
        pad_mode=tiling.PAD_MODE,
        torch_threads=torch_threads,
        attempts=1 + options.retries if catch else 1,
        catch=catch,
        backend=plan.backend,
        storage=snapshot(),
        serial=plan.serial,
        skip_empty=options.skip_empty,
        tissue_mask=options.tissue_mask,
        mask_factors=plan.mask_factors,
        affinities=len(info.offsets) if info.offsets else 0,
    )


def tasks(job: Job, blocks: list[tiling.Block]) -> list[Delayed]:
    """One delayed :func:`run_block` per block, its key naming the block (``volseg-block-<run>-z.y.x``)."""
    import dask

    task = dask.delayed(run_block, pure=False)
    return [
        task(job, b, dask_key_name=f"volseg-block-{job.run_id[:8]}-{'.'.join(map(str, b.index))}")
        for b in blocks
    ]


def execute(
    plan: Plan, info: ModelInfo, options: PredictOptions, progress: Progress | None = None
) -> tuple[list[BlockStatus], float]:
    """Run the pending blocks; return their statuses and the seconds they took."""
    if not plan.pending:
        return [], 0.0
    if plan.scheduler in SCHEDULERS:
        job = make_job(plan, info, options, plan.torch_threads, catch=True)
        with (
            _torch_threads(plan.torch_threads if plan.scheduler != "processes" else None),
            Meter(progress, plan) as meter,
        ):
            results = _run_local(tasks(job, plan.pending), plan.scheduler, plan.parallel, meter)
        return results, meter.seconds
    with _client(options, options.memory_limit) as client:
        threads = _check_workers(client, plan, options)
        spec = options.cluster_spec
        if spec is not None and spec.torch_threads:  # jobqueue workers are alike, also those joining later
            threads = spec.torch_threads
        job = make_job(plan, info, options, threads, catch=False)
        with Meter(progress, plan) as meter:  # timed once the workers answered (start-up excluded)
            results = _run_distributed(client, tasks(job, plan.pending), options.retries, meter)
        return results, meter.seconds


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


# ------------------------------------------------------------------------------ local
def _run_local(tasks: list[Delayed], scheduler: str, parallel: int, meter: Meter) -> list[BlockStatus]:
    import dask
    from dask.callbacks import Callback

    keys = {t.key for t in tasks}

    class _Blocks(Callback):
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if key in keys:
                meter.advance(result)

    kwargs = {} if scheduler == "synchronous" else {"num_workers": parallel}
    with _Blocks():
        return list(dask.compute(*tasks, scheduler=scheduler, **kwargs))


# ------------------------------------------------------------------------ distributed
@contextlib.contextmanager
def _client(options: PredictOptions, memory_limit: int | None) -> Iterator[Client]:
    """A distributed client: of a cluster file, to a running scheduler (checked within seconds), or of a new
    LocalCluster. What is started here is closed on the way out, whatever the reason."""
    from distributed import Client, LocalCluster

    if options.cluster_spec is not None:
        with open_cluster(options.cluster_spec) as client:
            yield client
        return
    if options.remote:
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
    from volseg.nn.runtime import resolve_device, resolve_precision

    try:
        dev = resolve_device(device).type
    except VolsegError as exc:
        return {"host": socket.gethostname(), "cores": available_cores(), "error": str(exc)}
    return {
        "host": socket.gethostname(),
        "cores": available_cores(),
        "device": dev,
        "precision": resolve_precision(dev, precision),
    }


def _check_workers(client: Client, plan: Plan, options: PredictOptions) -> dict[str, int]:
    """Workers see the shared paths; torch threads per worker so that no host is oversubscribed."""
    probes = client.run(_worker_probe, options.device, options.precision)
    if not probes and options.cluster_spec is not None:
        raise OptionError(f"{options.cluster_spec.source}: the cluster's workers left before the run began")
    if not probes:
        raise OptionError(
            f"--scheduler {options.scheduler}: the scheduler has no workers; start some with "
            f"'dask worker {options.scheduler}'"
        )
    for address, probe in probes.items():
        if probe.get("error"):
            raise OptionError(f"worker {address}: {probe['error']}")
    from volseg.storage.locations import is_url

    # URLs are reached over the network by every worker alike; local paths must be shared storage
    local = [plan.model_path, plan.image, None if is_url(plan.out) else str(Path(plan.out).parent)]
    paths = [p for p in local if p and not is_url(p)]
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


def _run_distributed(client: Client, tasks: list[Delayed], retries: int, meter: Meter) -> list[BlockStatus]:
    """Submit the blocks, then collect their statuses as they finish.

    A block that raises is tried ``1 + retries`` times (dask's retries), then reported failed with its last
    error; one whose worker died is rerun at most the scheduler's ``allowed-failures`` times, then reported
    with ``KilledWorker``. At a stop signal the blocks not started are cancelled and reported stopped.
    """
    index = [_block_index_from_key(t.key) for t in tasks]
    results: list[BlockStatus] = []
    for outcome in run_tasks(client, tasks, retries, stop=preempt.requested):
        block = index[outcome.index]
        if outcome.stopped:
            results.append(BlockStatus(block, 0, 0, 0.0, stopped=True))
            continue
        status = failure(block, outcome.error) if outcome.error is not None else outcome.value
        meter.advance(status)
        results.append(status)
    return results


def _block_index_from_key(key: object) -> tuple[int, ...]:
    text = key if isinstance(key, str) else str(key)
    return tuple(int(p) for p in text.rsplit("-", 1)[-1].split("."))
