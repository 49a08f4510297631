"""segment's two passes over blocks: label every unit (pass 1), then number the labels (pass 2).

A unit is the independent task of pass 1: one output block in 3-D, a band of whole sections (one block
deep) in 2-D. Pass 1 writes 2-D sparse ids straight into the output; otherwise it writes local ids to a
scratch volume inside the output, with per-unit label counts (2-D) or block faces and sizes (3-D) as
small ``.npz`` files. Pass 2 merges the labels that touch across block faces (3-D) or numbers them in
order (2-D ``relabel``), caches that lookup, and rewrites every block with final ids. Every file a
resumed run trusts is written atomically, and a block is marked done only after its data is stored.
With ``--part K/N`` a run does its share of the units in both passes (:mod:`~volseg.stages.segment.parts`).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.ndimage as ndi

from volseg.cluster import Outcome, run_tasks
from volseg.core import preempt
from volseg.core.progress import Tracker
from volseg.core.segmentation import halo, label_dtype, segment_section, smooth
from volseg.errors import IncompleteRunError
from volseg.stages.segment.inputs import Converter
from volseg.stages.segment.options import SegmentOptions
from volseg.stages.segment.parts import Part, wait_for_others
from volseg.storage import locations
from volseg.storage.files import atomic_writer
from volseg.storage.locations import Location
from volseg.storage.locks import exclusive
from volseg.storage.shares import SEGMENT_UNITS, unit_file_name
from volseg.storage.volumes import Volume, block_slices, create_volume, open_volume

if TYPE_CHECKING:
    from dask.delayed import Delayed
    from distributed import Client

__all__ = ["Run", "own_blocks", "scratch_volume"]

_WORK = ".volseg/segment"  # scratch of an unfinished run, inside the output volume


# The side files of an unfinished run (per-unit sizes, faces and counts; the lookup) are read and written
# only through these helpers: local files, or objects when the output is on object storage.
def _save_npz(path: Path | Location, **arrays: np.ndarray) -> None:
    """Write ``path`` whole or not at all (a resumed run trusts what it finds): locally a temporary file
    renamed into place, on object storage one PUT."""
    if isinstance(path, Location):
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        locations.write_bytes(path, buffer.getvalue())
        return
    with atomic_writer(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)  # block faces are long runs of few ids: they compress well


def _load_npz(path: Path | Location) -> contextlib.AbstractContextManager[Any]:
    """The arrays of a side file written by :func:`_save_npz` (a context manager, like ``np.load``)."""
    if isinstance(path, Location):
        return np.load(io.BytesIO(locations.read_bytes(path)))
    return np.load(path)


def _side_exists(path: Path | Location) -> bool:
    return path.exists()


def _side_names(folder: Path | Location) -> set[str]:
    """The names of the side files stored in ``folder`` so far (one listing, not one look per file)."""
    if isinstance(folder, Location):
        return set(folder.listdir())
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def _remove_work(out: Volume) -> None:
    """Delete the scratch of a finished run (pass 1's volume and the side files)."""
    locations.remove_tree(out.path / _WORK)


def scratch_volume(out: Volume, mode: str) -> Volume:
    """The pass-1 volume (per-unit local ids), resumable in its own right."""
    path = out.path / _WORK / "pass1.zarr"
    if (path / "zarr.json").exists():
        return open_volume(path, mode="r+")
    unit_voxels = (
        int(np.prod(out.block_shape)) if mode == "3d" else int(np.prod((out.block_shape[0], *out.shape[1:])))
    )
    return create_volume(
        path,
        out.shape,
        label_dtype(unit_voxels),
        out.chunks,
        shards=out.shards,
        codec="blosc-lz4",
        kind="label",
        overwrite=True,
    )


# ------------------------------------------------------------------ units (pass 1)
@dataclass(frozen=True)
class _Unit:
    """One independent task: an index and its region ``(z, y, x)`` slices."""

    index: tuple[int, ...]
    region: tuple[slice, ...]


def _units(out: Volume, mode: str) -> list[_Unit]:
    if mode == "3d":
        return [_Unit(b, out.block_region(b)) for b in out.block_ids()]
    bz = out.block_shape[0]
    return [
        _Unit((i,), block_slices(out.shape, (bz, *out.shape[1:]), (i, 0, 0)))
        for i in range(out.block_grid[0])
    ]


def _blocks_of(out: Volume, unit: _Unit, mode: str) -> list[tuple[int, ...]]:
    if mode == "3d":
        return [unit.index]
    return [(unit.index[0], *rest) for rest in itertools.product(*(range(n) for n in out.block_grid[1:]))]


def _own_units(out: Volume, mode: str, part: Part | None) -> list[_Unit]:
    """The units of ``part`` (every N-th from unit K - 1), or all of them."""
    units = _units(out, mode)
    return units if part is None else [u for i, u in enumerate(units) if part.owns(i)]


def own_blocks(out: Volume, mode: str, part: Part | None) -> list[tuple[int, ...]]:
    """The output blocks that ``part`` writes (those of its units), or all of them."""
    return [b for u in _own_units(out, mode, part) for b in _blocks_of(out, u, mode)]


def _read_boundary(
    prob: Volume, convert: Converter, region: tuple[slice, ...], halo: int
) -> tuple[np.ndarray, tuple]:
    """The region grown by ``halo`` in (y, x) (clipped to the volume), and the crop back."""
    grown, crop = [region[0]], [slice(None)]
    for s, n in zip(region[1:], prob.shape[1:], strict=True):
        lo, hi = max(0, s.start - halo), min(n, s.stop + halo)
        grown.append(slice(lo, hi))
        crop.append(slice(s.start - lo, s.start - lo + s.stop - s.start))
    return convert(np.asarray(prob.array[tuple(grown)])), tuple(crop)


def _label_unit(prob: Volume, convert: Converter, unit: _Unit, opts: SegmentOptions) -> np.ndarray:
    """Local labels of one unit: 2-D ids 1..n per section, or 3-D ids 1..n per block."""
    if opts.mode == "2d":
        boundary, _ = _read_boundary(prob, convert, unit.region, 0)
        return np.stack([segment_section(sec, opts) for sec in boundary])
    boundary, crop = _read_boundary(prob, convert, unit.region, halo(opts.sigma))
    interior = smooth(boundary, opts.sigma)[crop] < opts.threshold
    return ndi.label(interior)[0].astype(np.uint32)


def _faces(labels: np.ndarray) -> dict[str, np.ndarray]:
    faces = {}
    for axis in range(3):
        faces[f"lo{axis}"] = np.take(labels, 0, axis=axis)
        faces[f"hi{axis}"] = np.take(labels, -1, axis=axis)
    return faces


def _write_blocks(vol: Volume, blocks: Iterable[tuple[int, ...]], unit: _Unit, data: np.ndarray) -> None:
    origin = [s.start for s in unit.region]
    for b in blocks:
        region = vol.block_region(b)
        vol.write_block(
            b, data[tuple(slice(r.start - o, r.stop - o) for r, o in zip(region, origin, strict=True))]
        )


def _pass1_task(
    prob: Volume, convert: Converter, out: Volume, scratch: Volume | None, unit: _Unit, opts: SegmentOptions
) -> None:
    """Label one unit and store it: sparse ids straight into the output, or local ids + sizes to scratch."""
    local = _label_unit(prob, convert, unit, opts)
    blocks = _blocks_of(out, unit, opts.mode)
    if scratch is None:  # 2-D sparse ids: section z owns z*Y*X + 1 ...
        plane = out.shape[1] * out.shape[2]
        z = np.arange(unit.region[0].start, unit.region[0].stop, dtype=out.dtype)[:, None, None]
        ids = np.where(local > 0, local.astype(out.dtype) + z * out.dtype.type(plane), 0).astype(out.dtype)
        _write_blocks(out, blocks, unit, ids)
        return
    _write_blocks(scratch, blocks, unit, local)
    if opts.mode == "3d":
        extra = _faces(local)
        extra["sizes"] = np.bincount(local.ravel())[1:].astype(np.int64)
    else:
        extra = {"counts": local.reshape(local.shape[0], -1).max(axis=1).astype(np.int64)}
    _save_npz(_unit_file(out, unit), **extra)


def _unit_file(out: Volume, unit: _Unit) -> Path | Location:
    return out.path / SEGMENT_UNITS / _unit_name(unit)


def _unit_name(unit: _Unit) -> str:
    return unit_file_name(unit.index)


def _unit_files(out: Volume) -> set[str]:
    """The names of the unit files stored so far."""
    return _side_names(out.path / SEGMENT_UNITS)


def _pass1_done(out: Volume, unit: _Unit, opts: SegmentOptions, sparse: bool) -> bool:
    if sparse:
        return all(out.is_done(b) for b in _blocks_of(out, unit, opts.mode))
    return _side_exists(_unit_file(out, unit))


def _run(
    tasks: list[Delayed],
    scheduler: str | None,
    workers: int | None,
    what: str,
    path: Path,
    client: Client | None = None,
    retries: int = 0,
) -> None:
    """Compute independent delayed tasks; a failed task fails the run, after the others finished.

    On a distributed ``client`` (a ``--cluster``, or the active default client) a task that raises is
    tried ``1 + retries`` times in all, one whose worker died at most the scheduler's ``allowed-failures``
    times more, then it counts as failed; at a stop signal the tasks not started are cancelled.
    """
    import dask

    if not tasks:
        return
    client = client or _active_client(scheduler)
    if client is not None:
        results = [_outcome(o) for o in run_tasks(client, tasks, retries, stop=preempt.requested)]
    else:
        kwargs: dict[str, str | int] = {}
        if scheduler:
            kwargs["scheduler"] = scheduler
        if workers:
            kwargs["num_workers"] = workers
        results = list(dask.compute(*tasks, **kwargs))
    stopped = sum(r == _STOPPED for r in results)  # equal, not identical: a worker's result is a copy
    failures = [r for r in results if r is not None and r != _STOPPED]
    if stopped and not failures:
        raise preempt.Preempted(
            f"{path}: stopped by {preempt.stop_signal()}: {len(tasks) - stopped} of {len(tasks)} {what} done "
            "and recorded; rerun the same command with --resume to finish"
        )
    if failures:
        raise IncompleteRunError(
            f"{path}: {len(failures)} of {len(tasks)} {what} failed (first: {failures[0]}); "
            "they are not marked done, rerun the same command to retry them"
        )


def _shared(*values: object) -> tuple[Delayed, ...]:
    """Arguments that every task of a pass takes, each as one graph key that the tasks refer to.

    Given to each task as they are, dask would walk through them once per task (a volume holds its zarr
    metadata, the lookup an entry per unit): seconds for a few thousand blocks.
    """
    import dask

    return tuple(dask.delayed(v, traverse=False) for v in values)


#: What a task returns when a stop was requested before it started (:mod:`volseg.core.preempt`).
_STOPPED = "stopped before it started"


def _guard(fn: Callable[..., None], *args: object) -> str | None:
    if preempt.requested():  # a batch system's notice: no new unit; those in flight finish and are recorded
        return _STOPPED
    if _on_dask_worker():  # a cluster's bounded retries apply, then the error is reported (_run)
        fn(*args)
        return None
    try:
        fn(*args)
    except Exception as exc:  # reported after the other blocks finished
        return f"{type(exc).__name__}: {exc}"
    return None


def _on_dask_worker() -> bool:
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def _active_client(scheduler: str | None) -> Client | None:
    """The distributed client ``dask.compute`` would use here (a default ``Client``), else ``None``."""
    if scheduler or "distributed" not in sys.modules:
        return None
    import dask.base

    get = dask.base.get_scheduler()
    owner = getattr(get, "__self__", None)
    from distributed import Client

    return owner if isinstance(owner, Client) else None


def _outcome(outcome: Outcome) -> str | None:
    if outcome.stopped:
        return _STOPPED
    if outcome.error is not None:
        return f"{type(outcome.error).__name__}: {outcome.error}".splitlines()[0][:300]
    return outcome.value


# ----------------------------------------------------------------- merge (pass 2)
def _unit_starts(out: Volume, units: list[_Unit], opts: SegmentOptions) -> tuple[dict, np.ndarray]:
    """Per unit (3-D) or section (2-D), the global index of its first label; and every label's size.

    2-D units record only their label counts, so their sizes come back as zeros.
    """
    starts, sizes, total = {}, [], 0
    for u in units:
        with _load_npz(_unit_file(out, u)) as f:
            if opts.mode == "3d":
                starts[u.index] = total
                sizes.append(f["sizes"])
                total += len(f["sizes"])
                continue
            for k, c in enumerate(f["counts"]):
                starts[(u.region[0].start + k,)] = total
                total += int(c)
    return starts, (np.concatenate(sizes) if opts.mode == "3d" and sizes else np.zeros(total, np.int64))


def _face_edges(out: Volume, units: list[_Unit], starts: dict) -> np.ndarray:
    """Pairs of global node indices of labels touching across a block face."""
    edges = []
    grid = out.block_grid
    for u in units:
        with _load_npz(_unit_file(out, u)) as f:
            mine = {k: f[f"hi{k}"] for k in range(3)}
        for axis in range(3):
            nb = list(u.index)
            nb[axis] += 1
            if nb[axis] >= grid[axis]:
                continue
            with _load_npz(_unit_file(out, _Unit(tuple(nb), ()))) as f:
                theirs = f[f"lo{axis}"]
            a, b = mine[axis].ravel().astype(np.int64), theirs.ravel().astype(np.int64)
            both = (a > 0) & (b > 0)
            if both.any():
                pairs = np.unique(np.stack([a[both], b[both]], axis=1), axis=0)
                edges.append(
                    np.stack([pairs[:, 0] - 1 + starts[u.index], pairs[:, 1] - 1 + starts[tuple(nb)]], 1)
                )
    return np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)


def _lookup_3d(out: Volume, units: list[_Unit], opts: SegmentOptions) -> tuple[dict, np.ndarray]:
    """Node -> final id: components over the face edges, small ones dropped, numbered in order."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    starts, sizes = _unit_starts(out, units, opts)
    n = len(sizes)
    edges = _face_edges(out, units, starts)
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    comp_sizes = np.bincount(comp, weights=sizes, minlength=comp.max() + 1 if n else 0)
    # number the kept components by their first node, so ids follow block order
    first = np.full(len(comp_sizes), n, np.int64)
    np.minimum.at(first, comp, np.arange(n))
    kept = np.flatnonzero(comp_sizes >= max(opts.min_size, 1))
    final = np.zeros(len(comp_sizes), out.dtype)
    final[kept[np.argsort(first[kept])]] = np.arange(1, len(kept) + 1, dtype=out.dtype)
    return starts, final[comp]


def _lookup(
    out: Volume, units: list[_Unit], opts: SegmentOptions, lock: Callable[[], Any] = contextlib.nullcontext
) -> tuple[dict, np.ndarray]:
    """Global node index -> final id, computed once and cached so a resumed run (or another part) reuses it.

    ``lock``: held while the lookup is computed, so that of the parts of a job array one computes it
    and the others wait, then read it.
    """
    cache = out.path / _WORK / "lookup.npz"
    if not _side_exists(cache):
        with lock():
            if not _side_exists(cache):
                return _compute_lookup(out, units, opts, cache)
    with _load_npz(cache) as f:
        keys, values, lut = f["keys"], f["values"], f["lut"]
    return {tuple(int(v) for v in k): int(s) for k, s in zip(keys, values, strict=True)}, lut


def _compute_lookup(
    out: Volume, units: list[_Unit], opts: SegmentOptions, cache: Path
) -> tuple[dict, np.ndarray]:
    if opts.mode == "3d":
        starts, lut = _lookup_3d(out, units, opts)
    else:
        starts, sizes = _unit_starts(out, units, opts)
        lut = np.arange(1, len(sizes) + 1, dtype=out.dtype)
    keys = np.array(list(starts), np.int64).reshape(len(starts), -1)
    _save_npz(cache, keys=keys, values=np.array(list(starts.values()), np.int64), lut=lut)
    return starts, lut


def _pass2_task(
    out: Volume, scratch: Volume, block: tuple[int, ...], starts: dict, lut: np.ndarray, mode: str
) -> None:
    """Rewrite one output block from scratch local ids to final ids."""
    region = out.block_region(block)
    local = np.asarray(scratch.array[region]).astype(np.int64)
    if mode == "3d":
        base = np.int64(starts[block])
    else:  # one start per section
        sections = range(region[0].start, region[0].stop)
        base = np.array([starts[(z,)] for z in sections], np.int64)[:, None, None]
    ids = np.where(local > 0, lut[np.maximum(local - 1 + base, 0)] if lut.size else 0, 0)
    out.write_block(block, ids.astype(out.dtype))


@dataclass(frozen=True)
class Run:
    """One run's inputs and settings: pass 1 labels the units, pass 2 (if any) numbers the labels.

    ``scratch`` holds pass 1's local ids when a second pass numbers them (``None``: 2-D sparse ids go
    straight into the output). ``part``: this run does only that share of the units and blocks
    (``--part K/N``), and shares the lookup and the completion with the other parts through locks.
    """

    src: Volume
    convert: Converter
    vol: Volume
    scratch: Volume | None
    opts: SegmentOptions
    scheduler: str | None
    workers: int | None
    tracker: Tracker
    part: Part | None = None
    #: A distributed client (``--cluster``): failing tasks are tried ``1 + retries`` times there.
    client: Client | None = None
    retries: int = 0

    def label(self) -> None:
        """Pass 1: label every unit (of this part) not done yet (into the output, or into the scratch volume).

        A part that needs a second pass then waits for the other parts' pass 1
        (:func:`~volseg.stages.segment.parts.wait_for_others`).
        """
        import dask

        vol, opts, part = self.vol, self.opts, self.part
        units = _units(vol, opts.mode)
        mine = _own_units(vol, opts.mode, part)
        todo = [u for u in mine if not _pass1_done(vol, u, opts, self.scratch is None)]
        what = "sections bands" if opts.mode == "2d" else "blocks"
        if part is None:
            self.tracker.note(f"labelling {len(todo)} of {len(units)} {what}")
        else:
            self.tracker.note(
                f"part {part.name}: labelling {len(todo)} of its {len(mine)} {what} ({len(units)} in all)"
            )
        task, shared = dask.delayed(_guard), _shared(self.src, self.convert, vol, self.scratch)
        tasks = [task(_pass1_task, *shared, u, opts) for u in todo]
        _run(tasks, self.scheduler, self.workers, what, vol.path, self.client, self.retries)
        self.tracker.update(self.done())  # sparse ids: the output blocks are written now
        if part is not None and self.scratch is not None:
            wait_for_others(lambda: self._pass1_left(units), part, what, self.tracker.note, vol.path)

    def _pass1_left(self, units: list[_Unit]) -> dict[int, int]:
        """Part number -> its units of pass 1 not stored yet."""
        stored, n = _unit_files(self.vol), self.part.n if self.part else 1
        left: dict[int, int] = {}
        for i, u in enumerate(units):
            if _unit_name(u) not in stored:
                left[i % n + 1] = left.get(i % n + 1, 0) + 1
        return left

    def done(self) -> int:
        """Output blocks done, of this part's share (or of the whole volume)."""
        if self.part is None:
            return len(self.vol.done_blocks())
        done = self.vol.done_blocks()
        return sum(b in done for b in own_blocks(self.vol, self.opts.mode, self.part))

    def number(self) -> int:
        """Pass 2: the final ids (3-D: merged across block faces), written block by block (of this part).

        Returns the number of ids (the upper end of the sparse id range without a second pass).
        """
        import dask

        vol, opts, scratch = self.vol, self.opts, self.scratch
        if scratch is None:
            return int(np.prod(vol.shape))
        self.tracker.note("merging labels" if opts.mode == "3d" else "numbering labels")
        starts, lut = _lookup(
            vol, _units(vol, opts.mode), opts, lambda: self._lock("segment-lookup.lock", "the lookup")
        )
        todo = [b for b in own_blocks(vol, opts.mode, self.part) if not vol.is_done(b)]
        self.tracker.note(f"writing {len(todo)} blocks")
        (out, scratch_in), lookup = _shared(vol, scratch), _shared(starts, lut)
        tasks = [dask.delayed(_guard)(_pass2_task, out, scratch_in, b, *lookup, opts.mode) for b in todo]
        _run(tasks, self.scheduler, self.workers, "blocks", vol.path, self.client, self.retries)
        self.tracker.update(self.done())
        return int(lut.max()) if lut.size else 0

    def finish(self, labels: Callable[[], int]) -> bool:
        """Mark the output complete once every block is done (in parts: the part that gets here last).

        ``labels()`` gives the number of ids to record. Returns whether the output is complete. The
        volume's metadata is read afresh under a lock: the other parts write it too.
        """
        with self._lock("segment-finishing.lock", "marking the output complete"):
            vol = open_volume(self.vol.path, mode="r+")
            if not vol.complete:
                if len(vol.done_blocks()) < vol.n_blocks:
                    return False  # another part's share is not done yet: it completes the output
                vol.update_meta(labels=labels())
                vol.mark_complete()
        _remove_work(self.vol)
        return True

    def _lock(self, name: str, what: str) -> contextlib.AbstractContextManager[None]:
        """A lock inside the output's ``.volseg`` folder, for parts; nothing to hold for a single run."""
        if self.part is None:
            return contextlib.nullcontext()
        return exclusive(self.vol.path / ".volseg" / name, what)
