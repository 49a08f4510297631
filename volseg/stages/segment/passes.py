"""segment's two passes over blocks: label every unit (pass 1), then number the labels (pass 2).

A unit is the independent task of pass 1: one output block in 3-D, a band of whole sections (one block
deep) in 2-D. Pass 1 writes 2-D sparse ids straight into the output; otherwise it writes local ids to a
scratch volume inside the output, with per-unit label counts (2-D) or block faces and sizes (3-D) as
small ``.npz`` files. Pass 2 merges the labels that touch across block faces (3-D) or numbers them in
order (2-D ``relabel``), caches that lookup, and rewrites every block with final ids. Every file a
resumed run trusts is written atomically, and a block is marked done only after its data is stored.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.ndimage as ndi

from volseg.core import preempt
from volseg.core.progress import Tracker
from volseg.core.segmentation import halo, label_dtype, segment_section, smooth
from volseg.errors import IncompleteRunError
from volseg.stages.segment.inputs import Converter
from volseg.stages.segment.options import SegmentOptions
from volseg.storage.files import atomic_writer
from volseg.storage.volumes import Volume, block_slices, create_volume, open_volume

if TYPE_CHECKING:
    from dask.delayed import Delayed

__all__ = ["Run", "scratch_volume"]

_WORK = ".volseg/segment"  # scratch of an unfinished run, inside the output volume


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``path`` atomically: it exists whole or not at all (a resumed run trusts what it finds)."""
    with atomic_writer(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)  # block faces are long runs of few ids: they compress well


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


def _unit_file(out: Volume, unit: _Unit) -> Path:
    return out.path / _WORK / "units" / (".".join(map(str, unit.index)) + ".npz")


def _pass1_done(out: Volume, unit: _Unit, opts: SegmentOptions, sparse: bool) -> bool:
    if sparse:
        return all(out.is_done(b) for b in _blocks_of(out, unit, opts.mode))
    return _unit_file(out, unit).exists()


def _run(tasks: list[Delayed], scheduler: str | None, workers: int | None, what: str, path: Path) -> None:
    """Compute independent delayed tasks; a failed task fails the run, after the others finished."""
    import dask

    if not tasks:
        return
    kwargs: dict[str, str | int] = {}
    if scheduler:
        kwargs["scheduler"] = scheduler
    if workers:
        kwargs["num_workers"] = workers
    results = dask.compute(*tasks, **kwargs)
    stopped = sum(r is _STOPPED for r in results)
    failures = [r for r in results if r is not None and r is not _STOPPED]
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


#: What a task returns when a stop was requested before it started (:mod:`volseg.core.preempt`).
_STOPPED = "stopped before it started"


def _guard(fn: Callable[..., None], *args: object) -> str | None:
    if preempt.requested():  # a batch system's notice: no new unit; those in flight finish and are recorded
        return _STOPPED
    try:
        fn(*args)
    except Exception as exc:  # reported after the other blocks finished
        return f"{type(exc).__name__}: {exc}"
    return None


# ----------------------------------------------------------------- merge (pass 2)
def _unit_starts(out: Volume, units: list[_Unit], opts: SegmentOptions) -> tuple[dict, np.ndarray]:
    """Per unit (3-D) or section (2-D), the global index of its first label; and every label's size.

    2-D units record only their label counts, so their sizes come back as zeros.
    """
    starts, sizes, total = {}, [], 0
    for u in units:
        with np.load(_unit_file(out, u)) as f:
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
        with np.load(_unit_file(out, u)) as f:
            mine = {k: f[f"hi{k}"] for k in range(3)}
        for axis in range(3):
            nb = list(u.index)
            nb[axis] += 1
            if nb[axis] >= grid[axis]:
                continue
            with np.load(_unit_file(out, _Unit(tuple(nb), ()))) as f:
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


def _lookup(out: Volume, units: list[_Unit], opts: SegmentOptions) -> tuple[dict, np.ndarray]:
    """Global node index -> final id, computed once and cached so a resumed run reuses it."""
    cache = out.path / _WORK / "lookup.npz"
    if cache.exists():
        with np.load(cache) as f:
            keys, values, lut = f["keys"], f["values"], f["lut"]
        return {tuple(int(v) for v in k): int(s) for k, s in zip(keys, values, strict=True)}, lut
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
    straight into the output).
    """

    src: Volume
    convert: Converter
    vol: Volume
    scratch: Volume | None
    opts: SegmentOptions
    scheduler: str | None
    workers: int | None
    tracker: Tracker

    def label(self) -> None:
        """Pass 1: label every unit not done yet (into the output, or into the scratch volume)."""
        import dask

        vol, opts = self.vol, self.opts
        units = _units(vol, opts.mode)
        todo = [u for u in units if not _pass1_done(vol, u, opts, self.scratch is None)]
        what = "sections bands" if opts.mode == "2d" else "blocks"
        self.tracker.note(f"labelling {len(todo)} of {len(units)} {what}")
        task = dask.delayed(_guard)
        tasks = [task(_pass1_task, self.src, self.convert, vol, self.scratch, u, opts) for u in todo]
        _run(tasks, self.scheduler, self.workers, what, vol.path)
        self.tracker.update(len(vol.done_blocks()))  # sparse ids: the output blocks are written now

    def number(self) -> None:
        """Pass 2: the final ids (3-D: merged across block faces), written block by block."""
        import dask

        vol, opts, scratch = self.vol, self.opts, self.scratch
        if scratch is None:
            vol.update_meta(labels=int(np.prod(vol.shape)))
            return
        self.tracker.note("merging labels" if opts.mode == "3d" else "numbering labels")
        starts, lut = _lookup(vol, _units(vol, opts.mode), opts)
        vol.update_meta(labels=int(lut.max()) if lut.size else 0)
        todo = [b for b in vol.block_ids() if not vol.is_done(b)]
        self.tracker.note(f"writing {len(todo)} blocks")
        tasks = [dask.delayed(_guard)(_pass2_task, vol, scratch, b, starts, lut, opts.mode) for b in todo]
        _run(tasks, self.scheduler, self.workers, "blocks", vol.path)
        self.tracker.update(len(vol.done_blocks()))
        shutil.rmtree(vol.path / _WORK, ignore_errors=True)
