"""``segment --method agglo|mws``: affinities -> cells, block by block, with global ids.

The pure steps are :mod:`volseg.core.blockgraph`.

The input is an affinity volume ``(c, z, y, x)`` whose metadata records its offsets (``volseg.offsets``).
Three steps, each resumable:

1. **fragments**, one dask task per output block: the block's affinities are read with a one-voxel halo,
   its fragments are written to a scratch volume inside the output (``.volseg/segment/fragments.zarr``,
   recorded block by block) after the block's pieces (sizes, first voxels, graph, faces) are stored as one
   side file. A block whose fragments are recorded is not computed again.
2. **graph**: the blocks' pieces, one block at a time, make one region graph of the whole volume (its
   size is the number of fragments, not of voxels), agglomerated by mean affinity; the lookup from each
   block's fragments to the final ids is stored as one side file (``lookup.npz``) and reused by a rerun.
3. **labels**, one task per block: fragments through the lookup into the output, recorded block by block.

``mode="2d"``: each section on its own (in-plane affinities only); ``"3d"``: the 2-D fragments are linked
across sections through the z-affinities (agglomeration on the same graph). The ids are consecutive
(1..n, numbered by each cell's first voxel in C order) and the labels are the same, bit for bit, whatever
the block size (tests/test_segment_graph.py).

``method="mws"``: step 1 takes the mutex watershed of each block instead, read with a halo as long as the
offsets reach and cut to the block; the blocks' cuts stand, and step 2 only agglomerates the segments that
meet across block faces (mean affinity of the face pairs). That is block-wise stitching: the labels depend
on the blocks where a cell's fate differs between a block's view and the whole volume's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volseg.core import blockgraph, preempt
from volseg.core.affinities import check_offsets, offset_reach
from volseg.core.progress import Progress, Tracker
from volseg.errors import InputError, OptionError
from volseg.stages.segment.inputs import open_output
from volseg.stages.segment.options import SegmentOptions, SegmentResult
from volseg.stages.segment.passes import _WORK, _guard, _load_npz, _remove_work, _run, _save_npz, _shared
from volseg.storage.conventions import require_complete
from volseg.storage.locations import Location
from volseg.storage.paths import location
from volseg.storage.volumes import Volume, create_volume, open_volume

__all__ = ["affinity_input", "segment_affinities"]


def affinity_input(path: str | os.PathLike) -> tuple[Volume, tuple]:
    """The affinity volume and its offsets; one line for anything else."""
    src = open_volume(path, channels=True)
    if src.channels is None:
        raise InputError(
            f"{src.path}: is a (z, y, x) {src.kind} volume; --method agglo and mws read affinities "
            "(c, z, y, x), e.g. from a model trained with affinity targets; segment boundaries with "
            "--method watershed"
        )
    recorded = src.meta.get("offsets")
    if recorded is None:
        raise InputError(
            f"{src.path}: records no affinity offsets (volseg.offsets in its zarr.json), so its "
            f"{src.channels} channels cannot be read; add them, one per channel, e.g. "
            "[[0,-1,0],[0,0,-1],[-1,0,0]]"
        )
    try:
        offsets = check_offsets(recorded, "the recorded offsets")
    except OptionError as exc:
        raise InputError(f"{src.path}: {exc}") from None
    if len(offsets) != src.channels:
        raise InputError(
            f"{src.path}: records {len(offsets)} offsets for {src.channels} channels; the volume is damaged "
            "or its offsets are wrong: one offset per channel"
        )
    if src.dtype != np.uint8 and src.dtype.kind != "f":
        raise InputError(
            f"{src.path}: affinities of dtype {src.dtype}; volseg reads uint8 (0..255) or floats in [0, 1]"
        )
    return src, offsets


def segment_affinities(
    prob: str | os.PathLike,
    out: str | os.PathLike,
    opts: SegmentOptions,
    *,
    chunks: Sequence[int] | None,
    overwrite: bool,
    resume: bool,
    codec: str | None,
    scheduler: str | None,
    workers: int | None,
    progress: Progress | None,
) -> SegmentResult:
    """What :func:`volseg.stages.segment.segment` does for ``method="agglo"`` or ``"mws"``."""
    src, offsets = affinity_input(prob)
    require_complete(src, "input")
    blockgraph.pair_channels(offsets, (0, 1, 2) if opts.mode == "3d" else (1, 2))  # refused before writing
    path = location(out, "OUT")
    vol = open_output(src, path, opts, chunks, overwrite, resume, codec)
    blocks = list(vol.block_ids())
    done = vol.done_blocks()
    resumed = len(done)
    with Tracker(progress, "segment", len(blocks), "blocks") as tracker:
        tracker.advance(resumed)
        if vol.complete:
            tracker.note("already complete")
            return _result(vol, opts, len(blocks), resumed, vol.meta.get("labels"))
        with preempt.stop_on_signals():
            scratch = _scratch(vol)
            todo = [b for b in blocks if not scratch.is_done(b)]
            tracker.note(f"fragments of {len(todo)} of {len(blocks)} blocks")
            task = _shared(src, scratch, vol.path, tuple(tuple(o) for o in offsets), opts)
            import dask

            _run(
                [dask.delayed(_guard)(_fragments_task, *task, b) for b in todo],
                scheduler, workers, "blocks", vol.path,
            )  # fmt: skip
            tracker.note("solving the graph")
            solution = _solution(vol, scratch, opts)
            left = [b for b in blocks if not vol.is_done(b)]
            tracker.note(f"writing {len(left)} blocks ({solution['segments']} cells)")
            shared = _shared(vol, scratch, solution["lookup"], solution["bases"])
            _run(
                [dask.delayed(_guard)(_labels_task, *shared, b) for b in left],
                scheduler,
                workers,
                "blocks",
                vol.path,
            )
            tracker.update(len(vol.done_blocks()))
            vol = open_volume(vol.path, mode="r+")
            vol.update_meta(
                labels=int(solution["segments"]),
                graph={k: int(solution[k]) for k in ("fragments", "nodes", "edges")},
                offsets=[list(o) for o in offsets],
            )
            vol.mark_complete()
        _remove_work(vol)
    return _result(vol, opts, len(blocks), resumed, int(solution["segments"]))


def _result(vol: Volume, opts: SegmentOptions, blocks: int, resumed: int, labels: Any) -> SegmentResult:
    return SegmentResult(
        path=str(vol.path), mode=opts.mode, ids="consecutive", labels=labels, dtype=str(vol.dtype),
        blocks=blocks, resumed_blocks=resumed, part=None, complete=True,
    )  # fmt: skip


# ------------------------------------------------------------------------------ step 1
def _scratch(out: Volume) -> Volume:
    """The fragments of each block (ids 1..k of the block), resumable on their own."""
    path = out.path / _WORK / "fragments.zarr"
    if (path / "zarr.json").exists():
        return open_volume(path, mode="r+")
    return create_volume(
        path, out.shape, np.uint32, out.chunks, shards=out.shards, codec="blosc-lz4", kind="label",
        overwrite=True,
    )  # fmt: skip


def _pieces_file(out: Volume | Path | Location, index: Sequence[int]) -> Path | Location:
    root = out.path if isinstance(out, Volume) else out
    return root / _WORK / "pieces" / (".".join(map(str, index)) + ".npz")


def _halo(
    region: tuple[slice, ...], shape: Sequence[int], reach: Sequence[int] = (1, 1, 1)
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The block grown by ``reach`` (at least one voxel) where the volume goes on, and where it lies in it."""
    grown = tuple(
        slice(max(0, s.start - max(1, r)), min(n, s.stop + max(1, r)))
        for s, n, r in zip(region, shape, reach, strict=True)
    )
    inner = tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(region, grown, strict=True))
    return grown, inner


def _fragments_task(
    src: Volume, scratch: Volume, out: Path | Location, offsets: tuple, opts: SegmentOptions, index: tuple
) -> None:
    region = scratch.block_region(index)
    reach = offset_reach(offsets) if opts.method == "mws" else (1, 1, 1)  # mws: context the offsets see
    grown, inner = _halo(region, scratch.shape, reach)
    affs = np.asarray(src.array[(slice(None), *grown)])
    pieces = blockgraph.block_pieces(
        affs, offsets, inner, [s.start for s in region], scratch.shape,
        fragment_threshold=opts.fragment_threshold, merge_threshold=opts.merge_threshold,
        link_z=opts.mode == "3d", method="mws" if opts.method == "mws" else "cc",
    )  # fmt: skip
    target = _pieces_file(out, index)
    if not isinstance(target, Location):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    _save_npz(target, **pieces.arrays())  # the pieces first: a recorded block always has them
    scratch.write_block(index, pieces.fragments)


# ------------------------------------------------------------------------------ step 2
def _solution(vol: Volume, scratch: Volume, opts: SegmentOptions) -> dict[str, Any]:
    """The lookup of every block's fragments: stored once, then read back by a rerun."""
    target = vol.path / _WORK / "lookup.npz"
    if target.exists():
        with _load_npz(target) as f:
            return _unpack(dict(f))
    blocks = list(vol.block_ids())
    counts: dict[tuple[int, ...], int] = {}
    cache: dict[tuple[int, ...], blockgraph.BlockPieces] = {}

    def load(index: tuple[int, ...]) -> blockgraph.BlockPieces:
        if index not in cache:
            if len(cache) > 8:  # a block and its neighbours ahead: memory of a few blocks' faces
                cache.pop(next(iter(cache)))
            with _load_npz(_pieces_file(vol, index)) as f:
                cache[index] = blockgraph.BlockPieces.from_arrays(np.zeros(0, np.uint32), dict(f))
        return cache[index]

    for b in blocks:
        with _load_npz(_pieces_file(vol, b)) as f:
            counts[b] = int(f["first"].size)
    sol = blockgraph.solve(
        counts, load, vol.block_grid,
        fragment_threshold=opts.fragment_threshold, merge_threshold=opts.merge_threshold,
        min_size=opts.min_size, link_z=opts.mode == "3d", join_faces=opts.method != "mws",
    )  # fmt: skip
    keys = np.array(list(sol.bases), np.int64).reshape(-1, 3)
    packed = {
        "lookup": sol.lookup,
        "keys": keys,
        "bases": np.array([sol.bases[tuple(k)] for k in keys.tolist()], np.int64),
        "stats": np.array([sol.segments, sol.fragments, sol.nodes, sol.edges], np.int64),
    }
    _save_npz(target, **packed)
    return _unpack(packed)


def _unpack(f: dict[str, np.ndarray]) -> dict[str, Any]:
    segments, fragments, nodes, edges = (int(v) for v in f["stats"])
    bases = {tuple(k): int(b) for k, b in zip(f["keys"].tolist(), f["bases"].tolist(), strict=True)}
    return {
        "lookup": np.asarray(f["lookup"]), "bases": bases, "segments": segments,
        "fragments": fragments, "nodes": nodes, "edges": edges,
    }  # fmt: skip


# ------------------------------------------------------------------------------ step 3
def _labels_task(out: Volume, scratch: Volume, lookup: np.ndarray, bases: dict, index: tuple) -> None:
    fragments = np.asarray(scratch.array[scratch.block_region(index)])
    out.write_block(index, blockgraph.relabel(fragments, lookup, bases[tuple(index)], out.dtype))
