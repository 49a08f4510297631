"""OME-Zarr (NGFF 0.5) volumes: create, open, describe, and record completion.

A volume is a Zarr v3 group holding array ``0`` with axes ``(z, y, x)``, the voxel
size as an OME ``scale`` transform, optional pyramid levels ``1``, ``2``, ..., and a
``volseg`` attribute block with provenance and the run's status.

A *channel volume* (affinities: several values per voxel) has axes ``(c, z, y, x)``, the channel
axis first (OME type ``channel``) and whole in every chunk. Its :attr:`Volume.shape`, chunks and
blocks are the spatial ones, :attr:`Volume.channels` is C; a block is all channels of a spatial block.
Only the stages that read channels open one (``open_volume(..., channels=True)``); the others refuse
it with one line.

Completion record
-----------------
Stages write a volume block by block (a block is a chunk, or a shard when the
array is sharded, so that no two writers ever touch the same stored object). After
a block's data is stored (and fsynced), an empty marker file
``<volume>/.volseg/done/<iz>.<iy>.<ix>`` is created (on object storage: an empty object,
written with one PUT after the block's chunks, see :mod:`volseg.storage.locations`). A resumed
run skips exactly the blocks with a marker; a block without one is rewritten whole. When every block
is done the stage sets ``volseg.status = "complete"``; until then it is
``"incomplete"``, so a half-written volume never looks complete.

This module is a little over 500 lines on purpose: :class:`Volume`, :func:`create_volume` and
:func:`open_volume` (with the checks it makes on open) keep one set of invariants (the metadata
block, the completion record, the checked store) and read best side by side. Codecs, OME
metadata, provenance, the checked store and pyramids live in their own modules beside it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from volseg.errors import InputError, OptionError, OutputError, VolsegError
from volseg.storage import ome
from volseg.storage.codecs import CODECS, DEFAULT_CODEC, codec_name, parse_codec, resolve_shards, zarr_dtype
from volseg.storage.locations import Location
from volseg.storage.ome import AXES, CHANNEL_AXES, channel_axis, check_multiscales, ome_attrs, overlap_region
from volseg.storage.paths import location, prepare_output
from volseg.storage.provenance import now, provenance
from volseg.storage.stores import EVERY_CHUNK, CheckedStore

if TYPE_CHECKING:  # dask.array costs ~20 MB and 0.3 s to import: only when a dask view is asked for
    import dask.array as da

__all__ = [
    "ALL_KINDS",
    "CODECS",
    "Volume",
    "block_slices",
    "create_volume",
    "overlap_region",
    "open_volume",
    "parse_codec",
    "provenance",
    "volume_info",
    "voxel_offset",
]

FORMAT_VERSION = 1
DONE_DIR = ".volseg/done"
#: The kinds of (z, y, x) volumes (what ``convert --kind`` makes).
KINDS = ("image", "label", "probability", "mask")
#: Every kind a volume may record: also ``affinity``, a channel volume (c, z, y, x).
ALL_KINDS = (*KINDS, "affinity")
#: Larger than any stack (a side of 2**40 voxels, 2**40 chunks): metadata that says so is damaged.
_MAX_SIDE, _MAX_CHUNKS = 2**40, 2**40


# ---------------------------------------------------------------------- block grid
def block_slices(shape: Sequence[int], block: Sequence[int], index: Sequence[int]) -> tuple[slice, ...]:
    """Slices of block ``index`` in a grid of ``block``-shaped blocks over ``shape``."""
    return tuple(slice(i * b, min((i + 1) * b, s)) for s, b, i in zip(shape, block, index, strict=True))


def _grid(shape: Sequence[int], block: Sequence[int]) -> tuple[int, ...]:
    return tuple(-(-s // b) for s, b in zip(shape, block, strict=True))


# ---------------------------------------------------------------------- placement
def voxel_offset(vol: Volume, level: int = 0) -> tuple[int, ...]:
    """Where ``vol`` lies in the frame of its source (:func:`volseg.storage.ome.voxel_offset`)."""
    return ome.voxel_offset(vol.group.attrs["ome"], len(vol.shape), level, vol.path)


# -------------------------------------------------------------------------- volume
@dataclass
class Volume:
    """An open OME-Zarr volume.

    Attributes
    ----------
    path
        The volume's folder (a :class:`~volseg.storage.locations.Location` on object storage).
    group
        The Zarr v3 group.
    """

    path: Path | Location
    group: zarr.Group

    # ---- arrays and metadata
    @functools.cached_property
    def array(self) -> zarr.Array:
        """Full-resolution array ``0``, shape ``(Z, Y, X)``."""
        # Cached: opening reads its metadata from the store, and every block write asks for it.
        # write_empty_chunks: store every chunk as given. Otherwise zarr compares each chunk with
        # the fill value before writing it (measured: 15 % of a conversion's CPU time), and a
        # chunk that happens to be all zeros would have no file to fsync.
        return self.group["0"].with_config({"write_empty_chunks": True})

    def level(self, n: int) -> zarr.Array:
        """Pyramid level ``n`` (0 is full resolution)."""
        try:
            return self.group[str(n)]
        except KeyError:
            raise InputError(f"{self.path}: has no pyramid level {n}; levels are {self.levels}") from None

    @property
    def levels(self) -> list[str]:
        return [d["path"] for d in self._multiscale["datasets"]]

    @property
    def data(self) -> da.Array:
        """Lazy dask view of level 0, chunked like the stored array."""
        import dask.array as da

        return da.from_zarr(self.array)

    def to_dask(self, level: int = 0, chunks: Any = None) -> da.Array:
        import dask.array as da

        arr = self.level(level)
        return da.from_zarr(arr, chunks=chunks or arr.chunks)

    @functools.cached_property
    def channels(self) -> int | None:
        """The number of channels of a ``(c, z, y, x)`` volume; None for a ``(z, y, x)`` one."""
        return int(self.array.shape[0]) if self.array.ndim == 4 else None

    @property
    def _space(self) -> int:
        return 1 if self.channels is not None else 0

    @property
    def shape(self) -> tuple[int, ...]:
        """``(Z, Y, X)``: the spatial shape (a channel volume's channel axis is :attr:`channels`)."""
        return tuple(self.array.shape[self._space :])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(
            self.array.dtype.to_native_dtype()
            if hasattr(self.array.dtype, "to_native_dtype")
            else self.array.dtype
        )

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array.chunks[self._space :])

    @property
    def shards(self) -> tuple[int, ...] | None:
        s = self.array.shards
        return tuple(s[self._space :]) if s else None

    @property
    def block_shape(self) -> tuple[int, ...]:
        """The unit of independent writes: the shard if sharded, else the chunk."""
        return self.shards or self.chunks

    @property
    def block_grid(self) -> tuple[int, ...]:
        return _grid(self.shape, self.block_shape)

    @property
    def _multiscale(self) -> dict[str, Any]:
        return self.group.attrs["ome"]["multiscales"][0]

    @property
    def voxel_size(self) -> tuple[float, ...]:
        """Voxel size ``(z, y, x)`` in :attr:`unit`."""
        for t in self._multiscale["datasets"][0]["coordinateTransformations"]:
            if t["type"] == "scale":
                return tuple(float(v) for v in t["scale"][self._space :])
        return (1.0, 1.0, 1.0)

    @property
    def unit(self) -> str:
        return self._multiscale["axes"][self._space].get("unit", "")

    @property
    def meta(self) -> dict[str, Any]:
        """The ``volseg`` attribute block (kind, provenance, status, stage attributes)."""
        return dict(self.group.attrs.get("volseg", {}))

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "image")

    @property
    def provenance(self) -> dict[str, Any]:
        return self.meta.get("provenance", {})

    def update_meta(self, **values: Any) -> None:
        """Merge ``values`` into the ``volseg`` attribute block."""
        meta = self.meta
        meta.update(values)
        self.group.attrs.update({"volseg": meta})

    # ---- completion record
    @property
    def _done_dir(self) -> Path | Location:
        return self.path / DONE_DIR

    @property
    def listing_blind(self) -> bool:
        """Read over http(s), whose servers need not list folders: the record and chunks cannot be counted,
        so the status is taken as written (a missing chunk still fails when it is read)."""
        return isinstance(self.path, Location) and self.path.read_only

    @property
    def remote(self) -> bool:
        """The volume lies on object storage (its record is objects, not files)."""
        return isinstance(self.path, Location)

    def block_ids(self) -> Iterator[tuple[int, ...]]:
        """All block indices in C order."""
        return itertools.product(*(range(n) for n in self.block_grid))

    def block_region(self, index: Sequence[int]) -> tuple[slice, ...]:
        return block_slices(self.shape, self.block_shape, index)

    def done_blocks(self) -> set[tuple[int, ...]]:
        """Indices of blocks whose data is durably stored."""
        if self.remote:
            names = self._done_dir.listdir()
        elif self._done_dir.is_dir():
            names = os.listdir(self._done_dir)
        else:
            return set()
        done = set()
        ndim = len(self.shape)
        for name in names:
            parts = name.split(".")
            if len(parts) == ndim and all(p.isdigit() for p in parts):
                done.add(tuple(int(p) for p in parts))
        return done

    def is_done(self, index: Sequence[int]) -> bool:
        return (self._done_dir / ".".join(map(str, index))).exists()

    def write_block(self, index: Sequence[int], data: np.ndarray, *, fsync: bool = True) -> None:
        """Store one whole block, make it durable, then record it as done.

        Parameters
        ----------
        index
            Block index in :attr:`block_grid`.
        data
            Array of the block's exact shape (smaller at the volume's far edges); a channel volume's
        block is ``(C, z, y, x)``.
        """
        region = self.block_region(index)
        expected = tuple(s.stop - s.start for s in region)
        if self.channels is not None:
            region, expected = (slice(None), *region), (self.channels, *expected)
        if tuple(data.shape) != expected:
            raise ValueError(f"block {tuple(index)} needs shape {expected}, got {data.shape}")
        self.array[region] = data
        self.mark_done(index, fsync=fsync)

    def mark_done(self, index: Sequence[int], *, fsync: bool = True) -> None:
        """Record block ``index`` as done (after its data has been written)."""
        if self.remote:  # the chunks' PUTs have returned: they are durable; one more PUT records it
            from volseg.storage.locations import write_bytes

            write_bytes(self._done_dir / ".".join(map(str, index)), b"")
            return
        if fsync:
            self._fsync_block(index)
        self._done_dir.mkdir(parents=True, exist_ok=True)
        marker = self._done_dir / ".".join(map(str, index))
        fd = os.open(marker, os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _fsync_block(self, index: Sequence[int]) -> None:
        # The chunk files of this block: fsync them so that "done" survives a power cut,
        # not only a kill -9 (the page cache already survives that).
        region = self.block_region(index)
        first = [s.start // c for s, c in zip(region, self.block_shape, strict=False)]
        root = self.path / "0" / "c"
        if self.channels is not None:  # the channel axis is one chunk: its index is 0
            root = root / "0"
        if self.shards:
            files = [root.joinpath(*map(str, first))]
        else:
            ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(region, self.chunks, strict=False)]
            files = [root.joinpath(*map(str, ix)) for ix in itertools.product(*ranges)]
        for f in files:
            try:
                fd = os.open(f, os.O_RDONLY)
            except FileNotFoundError:
                continue  # a volume written by another tool may skip all-fill-value chunks
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @property
    def complete(self) -> bool:
        return self.meta.get("status") == "complete"

    def mark_complete(self) -> None:
        """Set status ``complete``; only call once every block is done."""
        missing = self.n_blocks - len(self.done_blocks())
        if missing:
            raise RuntimeError(f"{self.path}: {missing} blocks are not done; refusing to mark complete")
        self.update_meta(status="complete", completed=now())

    @property
    def n_blocks(self) -> int:
        return int(np.prod(self.block_grid))

    def completion(self) -> dict[str, Any]:
        """Summary of the completion record."""
        done = self.done_blocks()
        info: dict[str, Any] = {
            "status": self.meta.get("status", "unknown"),
            "blocks_done": len(done),
            "blocks_total": self.n_blocks,
            "block_shape": list(self.block_shape),
        }
        # Sections fully written: every block of a z-band is done.
        per_band = int(np.prod(self.block_grid[1:]))
        per_z = collections.Counter(d[0] for d in done)  # one pass: O(done), not O(bands x done)
        bands = sorted(b for b, n in per_z.items() if n == per_band and b < self.block_grid[0])
        bz = self.block_shape[0]
        info["sections_done"] = sum(min(bz, self.shape[0] - b * bz) for b in bands)
        info["sections_total"] = self.shape[0]
        if self.meta.get(EVERY_CHUNK) and not self.listing_blind:
            missing, examples = self.missing_chunks()
            info["chunks_missing"] = missing
            if missing:
                info["missing_examples"] = examples
                if info["status"] == "complete":  # the record says complete, the store disagrees
                    info["status"] = "damaged"
        return info

    def missing_chunks(self, examples: int = 3) -> tuple[int, list[str]]:
        """Level-0 chunk (or shard) files absent from the store of a volume that stores every one.

        Only blocks recorded as done are expected (an unfinished run has not written the rest).
        Returns the count and the keys of the first few, e.g. ``["0/c/3/0/1"]``; lists the
        store's folders once, so the cost is one directory walk.
        """
        root = self.path / "0" / "c"
        if self.channels is not None:  # the channel axis is one chunk: its index is 0
            root = root / "0"
        found: set[tuple[int, ...]] = set()
        if isinstance(root, Location):
            for key in root.find():
                parts = tuple(key.split("/"))
                if all(p.isdigit() for p in parts):
                    found.add(tuple(int(p) for p in parts))
        elif root.is_dir():
            for dirpath, _dirs, files in os.walk(root):
                rel = Path(dirpath).relative_to(root).parts
                for name in files:
                    parts = (*rel, name)
                    if all(p.isdigit() for p in parts):
                        found.add(tuple(int(p) for p in parts))
        grid = _grid(self.shape, self.block_shape)
        # The completion record is kept per block (chunk, or shard when sharded): the unit here too.
        every = itertools.product(*(range(n) for n in grid))
        expected = every if self.complete else sorted(self.done_blocks())
        missing = [ix for ix in expected if ix not in found]
        lead = "0/c/0/" if self.channels is not None else "0/c/"
        return len(missing), [lead + "/".join(map(str, ix)) for ix in missing[:examples]]

    # ---- pyramid
    def add_pyramid(self, levels: int, *, method: str = "mean") -> None:
        """Write 2-D (y, x) downsampled levels ``1..levels`` (factor 2 each), chunk by chunk."""
        from volseg.storage.pyramids import write_levels

        if self.channels is not None:
            raise OptionError(f"{self.path}: a channel volume has no pyramid levels (they are 2-D (y, x))")
        write_levels(self.group, levels, method=method)


def _check_path(path: str | os.PathLike | Location) -> Path | Location:
    return location(path, "the volume")


def create_volume(
    path: str | os.PathLike,
    shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int],
    *,
    codec: str | None = DEFAULT_CODEC,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    unit: str | None = "nanometer",
    shards: Sequence[int] | None = None,
    kind: str = "image",
    overwrite: bool = False,
    fill_value: Any = 0,
    provenance_block: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    channels: int | None = None,
) -> Volume:
    """Create an empty volume whose status is ``incomplete``.

    Parameters
    ----------
    path
        Folder to create (conventionally ending in ``.zarr``).
    shape, chunks
        ``(Z, Y, X)`` sizes; chunks are clipped to the shape.
    dtype
        Any numpy dtype.
    codec
        See :func:`parse_codec`.
    voxel_size, unit
        Physical size of a voxel ``(z, y, x)``; ``unit=None`` writes no unit (physical size unknown).
    shards
        Optional shard shape (a multiple of ``chunks``), for volumes with very many chunks.
    kind
        ``image``, ``label``, ``probability`` or ``mask``; labels get OME ``image-label`` metadata.
    overwrite
        Replace an existing volume; otherwise an existing path is refused.
    channels
        A channel volume ``(C, Z, Y, X)`` of C channels (e.g. affinities, ``kind="affinity"``): ``shape``,
        ``chunks`` and ``shards`` stay spatial, and each chunk holds every channel.
    """
    path = _check_path(path)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise OptionError(f"{path}: volume shape must be three positive sizes (Z, Y, X), got {shape}")
    chunks = tuple(max(1, min(int(c), s)) for c, s in zip(chunks, shape, strict=False))
    if shards is not None:
        shards = resolve_shards(shards, chunks, shape)
    if len(voxel_size) != 3 or any(float(v) <= 0 for v in voxel_size):
        raise OptionError(f"voxel size must be three positive numbers (z, y, x), got {tuple(voxel_size)}")
    if kind not in ALL_KINDS:
        raise OptionError(f"kind {kind!r} is not one of {ALL_KINDS}")
    if channels is not None and not 1 <= int(channels) <= 4096:
        raise OptionError(f"{path}: channels {channels!r} must be 1 to 4096")
    lead = () if channels is None else (int(channels),)
    compressors = parse_codec(codec)
    dtype = zarr_dtype(dtype)
    prepare_output(path, overwrite)
    try:
        store = path.zarr_store(read_only=False) if isinstance(path, Location) else str(path)
        group = zarr.open_group(store, mode="w", zarr_format=3)
        group.create_array(
            "0",
            shape=lead + shape,
            dtype=dtype,
            chunks=lead + chunks,
            shards=lead + shards if shards is not None else None,
            compressors=compressors,
            fill_value=fill_value,
            dimension_names=CHANNEL_AXES if lead else AXES,
        )
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot write the output ({exc.strerror or exc}); choose a writable location"
        ) from exc
    attrs = ome_attrs(path.stem, unit, [("0", voxel_size)], kind, channels=bool(lead))
    attrs["volseg"] = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "status": "incomplete",
        EVERY_CHUNK: True,
        "provenance": provenance_block or provenance(),
        **(extra or {}),
    }
    group.attrs.update(attrs)
    return Volume(path, group)


def open_volume(path: str | os.PathLike, mode: str = "r", *, channels: bool = False) -> Volume:
    """Open a volume lazily.

    Parameters
    ----------
    path
        A volume folder written by volseg, or any OME-Zarr v3 image with ``(z, y, x)``
        level ``0``, or a bare Zarr v3 array folder.
    mode
        ``"r"`` to read, ``"r+"`` to resume writing.
    channels
        Accept a channel volume ``(c, z, y, x)`` (affinities); otherwise one is refused with a line
        that says which command reads it.

    Returns
    -------
    Volume
        ``.data`` is a dask array ``(Z, Y, X)``; metadata via ``.voxel_size``, ``.meta``.
    """
    path = _check_path(path)
    if isinstance(path, Location):
        from volseg.storage.locations import check

        check(path, writing=mode != "r")
    if not path.exists():
        raise InputError(
            f"{path}: no such volume; check the path (volumes are folders written by 'volseg convert')"
        )
    if not (path / "zarr.json").is_file():
        raise InputError(
            f"{path}: not a Zarr v3 volume (no zarr.json); convert images first with 'volseg convert'"
        )
    if isinstance(path, Location):
        inner = path.zarr_store(read_only=mode == "r")
        store = CheckedStore(inner, str(path)) if mode == "r" else inner
    else:
        store = CheckedStore(path) if mode == "r" else str(path)
    try:
        node = zarr.open(store, mode=mode, zarr_format=3)
        if isinstance(node, zarr.Array):
            raise InputError(
                f"{path}: is a bare Zarr array, not an OME-Zarr volume; open its parent group instead"
            )
        if "0" not in node or "ome" not in node.attrs:
            raise InputError(
                f"{path}: is a Zarr group but not an OME-Zarr volume (no 'ome' metadata or array '0')"
            )
        vol = Volume(path, node)
        if isinstance(store, CheckedStore):
            store.strict = bool(vol.meta.get(EVERY_CHUNK))
        _check_metadata(vol)
        if vol.channels is not None and not channels:
            raise InputError(
                f"{path}: holds {vol.channels} channels per voxel ({vol.kind}, axes c, z, y, x); this "
                "command reads (z, y, x) volumes: cut affinities into cells with "
                "'volseg segment --method agglo'"
            )
    except VolsegError:
        raise
    except (Exception, RecursionError) as exc:  # zarr raises many types for corrupt metadata
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise InputError(
            f"{path}: cannot open as an OME-Zarr volume, its metadata is damaged ({reason}); "
            "write it again with the command that made it"
        ) from None
    return vol


def _check_metadata(vol: Volume) -> None:
    """Refuse metadata the stages cannot use, so that no later accessor fails half-way.

    Array ``0`` is opened and must be 3-D with positive chunks; the OME multiscale must list
    level ``0`` with a ``scale`` of three positive numbers and three axes; the ``volseg``
    block, when present, must be a JSON object. For a complete volume the first chunk is
    read once, which catches a dtype, codec or chunk shape that does not match the stored
    bytes (1 chunk: milliseconds).
    """
    path, array = vol.path, vol.array
    expected = 4 if channel_axis(vol.group.attrs["ome"]) else 3
    if array.ndim != expected:
        raise InputError(
            f"{path}: array '0' has {array.ndim} dimensions; volseg needs (z, y, x)"
            + (" or (c, z, y, x) with a channel axis" if array.ndim == 4 else "")
        )
    if max(array.shape) > _MAX_SIDE or math.prod(_grid(array.shape, array.chunks)) > _MAX_CHUNKS:
        raise InputError(
            f"{path}: array '0' has shape {array.shape} in chunks {array.chunks}, more than any stack holds; "
            "its metadata is damaged, write it again"
        )
    if min(array.shape) < 1 or min(array.chunks) < 1:
        raise InputError(
            f"{path}: array '0' has shape {array.shape} and chunks {array.chunks}; both must be positive"
        )
    check_multiscales(vol.group.attrs["ome"], path)
    meta = vol.group.attrs.get("volseg", {})
    if not isinstance(meta, dict):
        raise InputError(f"{path}: its 'volseg' metadata block is not an object; the volume is damaged")
    if "kind" in meta and meta["kind"] not in ALL_KINDS:
        raise InputError(
            f"{path}: its recorded kind {meta['kind']!r} is not one of {', '.join(ALL_KINDS)}; "
            "the metadata is damaged"
        )
    if vol.complete and meta.get(EVERY_CHUNK) and not vol.listing_blind:
        done = len(vol.done_blocks())
        if done != vol.n_blocks:
            raise InputError(
                f"{path}: says complete, but its completion record holds {done} of {vol.n_blocks} blocks: "
                "its metadata or record is damaged (shape or chunks changed?); write it again"
            )
    if vol.complete:
        first = tuple(slice(0, c) for c in array.chunks)  # every axis, the channel axis too
        try:
            np.asarray(array[first])
        except VolsegError:
            raise
        except Exception as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
            raise InputError(
                f"{path}: cannot decode its first chunk ({reason}): its dtype, codecs or chunk shape do not "
                "match the stored data; the volume is damaged, write it again"
            ) from None


def _stored_bytes(path: Path | Location) -> int:
    if isinstance(path, Location):
        return path.du()
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return total


def volume_info(path: str | os.PathLike) -> dict[str, Any]:
    """Everything ``volseg info`` shows, as a JSON-ready dict."""
    from volseg.storage.shares import part_rows

    vol = open_volume(path, channels=True)
    raw = int(np.prod(vol.shape)) * (vol.channels or 1) * vol.dtype.itemsize
    stored = _stored_bytes(vol.path)
    meta = vol.meta
    return {
        "path": str(vol.path),
        "kind": vol.kind,
        "shape": list(vol.shape),
        **({"channels": vol.channels} if vol.channels is not None else {}),
        "dtype": str(vol.dtype),
        "chunks": list(vol.chunks),
        "shards": list(vol.shards) if vol.shards else None,
        "codec": codec_name(vol.array),
        "raw_bytes": raw,
        "stored_bytes": stored,
        "ratio": round(raw / stored, 2) if stored else None,
        "voxel_size": list(vol.voxel_size),
        "unit": vol.unit,
        "levels": vol.levels,
        "completion": {**vol.completion(), **part_rows(vol)},
        "provenance": meta.get("provenance", {}),
        "attributes": {k: v for k, v in meta.items() if k not in {"provenance"}},
    }
