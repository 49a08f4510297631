"""OME-Zarr (NGFF 0.5) volumes: create, open, describe, and record completion.

A volume is a Zarr v3 group holding array ``0`` with axes ``(z, y, x)``, the voxel
size as an OME ``scale`` transform, optional pyramid levels ``1``, ``2``, ..., and a
``volseg`` attribute block with provenance and the run's status.

Completion record
-----------------
Stages write a volume block by block (a block is a chunk, or a shard when the
array is sharded, so that no two writers ever touch the same stored object). After
a block's data is stored (and fsynced), an empty marker file
``<volume>/.volseg/done/<iz>.<iy>.<ix>`` is created. A resumed run skips exactly
the blocks with a marker; a block without one is rewritten whole. When every block
is done the stage sets ``volseg.status = "complete"``; until then it is
``"incomplete"``, so a half-written volume never looks complete.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import functools
import itertools
import json
import math
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec
from zarr.storage import LocalStore, WrapperStore

from volseg.errors import InputError, OptionError, OutputError, VolsegError

if TYPE_CHECKING:  # dask.array costs ~20 MB and 0.3 s to import: only when a dask view is asked for
    import dask.array as da

__all__ = [
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

NGFF_VERSION = "0.5"
FORMAT_VERSION = 1
AXES = ("z", "y", "x")
DONE_DIR = ".volseg/done"
CODECS = ("blosc-zstd", "blosc-lz4", "zstd", "gzip", "none")
DEFAULT_CODEC = "blosc-zstd"
KINDS = ("image", "label", "probability", "mask")
#: Larger than any stack (a side of 2**40 voxels, 2**40 chunks): metadata that says so is damaged.
_MAX_SIDE, _MAX_CHUNKS = 2**40, 2**40
#: zstd's own range of compression levels (numcodecs / zarr refuse others).
ZSTD_LEVELS = (-131072, 22)
#: Recorded in every volume volseg creates: each chunk of each array is stored (write_empty_chunks),
#: so a chunk missing from the store is damage, not the fill value (see :class:`CheckedStore`).
EVERY_CHUNK = "every_chunk_stored"


# --------------------------------------------------------------------------- codecs
def parse_codec(spec: str | None) -> list[Any] | None:
    """Turn ``NAME[:LEVEL]`` into Zarr v3 compressors.

    Parameters
    ----------
    spec
        One of ``blosc-zstd`` (default), ``blosc-lz4``, ``zstd``, ``gzip``, ``none``,
        optionally followed by ``:LEVEL`` (for example ``zstd:3``).

    Returns
    -------
    list or None
        Compressors for :func:`zarr.create_array`; ``None`` means uncompressed.
    """
    spec = (spec or DEFAULT_CODEC).strip().lower()
    name, _, level_text = spec.partition(":")
    if name not in CODECS:
        raise OptionError(
            f"--codec {spec!r}: unknown codec; use one of {', '.join(CODECS)} (optionally :LEVEL)"
        )
    level: int | None = None
    if level_text:
        try:
            level = int(level_text)
        except ValueError:
            raise OptionError(
                f"--codec {spec!r}: level {level_text!r} is not an integer; write e.g. zstd:3"
            ) from None
    if name == "none":
        return None
    if name.startswith("blosc"):
        clevel = 5 if level is None else level
        if not 0 <= clevel <= 9:
            raise OptionError(f"--codec {spec!r}: blosc level must be 0..9 (5 default); write e.g. {name}:5")
        return [BloscCodec(cname=name.split("-")[1], clevel=clevel, shuffle="bitshuffle")]
    if name == "zstd":
        zlevel = 3 if level is None else level
        if not ZSTD_LEVELS[0] <= zlevel <= ZSTD_LEVELS[1]:
            raise OptionError(
                f"--codec {spec!r}: zstd level must be {ZSTD_LEVELS[0]}..{ZSTD_LEVELS[1]} "
                "(1..19 usual, 3 default, negative: faster); write e.g. zstd:3"
            )
        return [ZstdCodec(level=zlevel)]
    glevel = 5 if level is None else level
    if not 0 <= glevel <= 9:
        raise OptionError(f"--codec {spec!r}: gzip level must be 0..9 (5 default); write e.g. gzip:5")
    return [GzipCodec(level=glevel)]


def _codec_name(array: zarr.Array) -> str:
    names = []
    for c in array.compressors:
        if isinstance(c, BloscCodec):
            names.append(f"blosc-{c.cname.value}:{c.clevel}")
        elif isinstance(c, ZstdCodec):
            names.append(f"zstd:{c.level}")
        elif isinstance(c, GzipCodec):
            names.append(f"gzip:{c.level}")
        else:
            names.append(type(c).__name__)
    return "+".join(names) or "none"


# ------------------------------------------------------------------- checked reads
class MissingChunkError(InputError):
    """A chunk of a volume that stores every chunk is absent: the volume is damaged."""


class _CheckedStore(WrapperStore):
    """A read-only local store on which, once ``strict``, a missing level-0 chunk is an error, not zeros.

    volseg writes every chunk of level ``0`` (:data:`EVERY_CHUNK`), so in its volumes a chunk
    that is not there was lost (deleted, a failed copy, a damaged disk). The Zarr spec reads a
    missing chunk as the fill value, which would turn damage into silent zeros; here the read
    fails with one line naming the chunk. The check costs nothing: zarr asks the store for the
    chunk anyway, and the store answers "absent" instead of bytes. ``strict`` is set once the
    volume's metadata is read (volumes from other writers stay lenient).
    """

    def __init__(self, path: Path) -> None:
        super().__init__(LocalStore(str(path), read_only=True))
        self._root, self.strict = str(path), False

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self._store, "root": self._root, "strict": self.strict}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._store, self._root, self.strict = state["store"], state["root"], state["strict"]

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        value = await self._store.get(key, prototype, byte_range)
        if value is None and self.strict and key.startswith("0/c/"):
            raise MissingChunkError(
                f"{self._root}: chunk {key} is missing; volseg stores every chunk, so the volume is "
                "damaged: restore it from a copy, or write it again with the command that made it"
            )
        return value


# ----------------------------------------------------------------------- provenance
def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import tifffile

    from volseg.version import __version__

    return {
        "volseg": __version__,
        "zarr": zarr.__version__,
        "dask": version("dask"),
        "tifffile": tifffile.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance(
    sources: Iterable[str | os.PathLike] = (),
    config: dict[str, Any] | None = None,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Describe where a volume came from.

    Each source file is recorded with its absolute path, size and modification
    time, so a later reader can tell whether the source changed since.
    """
    records = []
    for src in sources:
        p = Path(src)
        entry: dict[str, Any] = {"path": str(p.resolve())}
        if p.exists():
            st = p.stat()
            entry["size"] = st.st_size
            entry["mtime"] = _dt.datetime.fromtimestamp(st.st_mtime, _dt.timezone.utc).isoformat(
                timespec="seconds"
            )
        records.append(entry)
    return {
        "sources": records,
        "command": list(sys.argv if command is None else command),
        "versions": _versions(),
        "created": _now(),
        "config": config or {},
    }


# ---------------------------------------------------------------------- block grid
def block_slices(shape: Sequence[int], block: Sequence[int], index: Sequence[int]) -> tuple[slice, ...]:
    """Slices of block ``index`` in a grid of ``block``-shaped blocks over ``shape``."""
    return tuple(slice(i * b, min((i + 1) * b, s)) for s, b, i in zip(shape, block, index, strict=True))


def _grid(shape: Sequence[int], block: Sequence[int]) -> tuple[int, ...]:
    return tuple(-(-s // b) for s, b in zip(shape, block, strict=True))


# ---------------------------------------------------------------------- placement
#: A translation within this many voxels of a whole number counts as whole (float rounding).
_WHOLE_VOXEL = 1e-3


def voxel_offset(vol: Volume, level: int = 0) -> tuple[int, ...]:
    """Where ``vol`` lies: the ``(z, y, x)`` voxel index of its first voxel in the frame of its source.

    Read from the OME ``translation`` of the level's dataset (after its ``scale``, in physical
    units: offset = translation / scale), which ``volseg predict --roi`` and ``volseg segment``
    record; a volume without one lies at ``(0, 0, 0)``. Refused (one line) when the transforms
    are malformed or the translation is not a whole number of voxels.
    """
    ndim = len(vol.shape)
    transforms = _transforms(vol, level)
    scale = _vector(vol, "scale", [t for t in transforms if t.get("type") == "scale"][:1], ndim)
    if scale is None:
        scale = np.ones(ndim)
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise InputError(
            f"{vol.path}: its OME scale {scale.tolist()} is not {ndim} positive numbers; fix the volume's "
            "metadata (zarr.json) or convert it again"
        )
    shift = _vector(vol, "translation", [t for t in transforms if t.get("type") == "translation"], ndim)
    if shift is None:
        return (0,) * ndim
    voxels = shift / scale
    whole = np.rint(voxels)
    if np.abs(voxels - whole).max(initial=0.0) > _WHOLE_VOXEL:
        raise InputError(
            f"{vol.path}: its OME translation {shift.tolist()} is not a whole number of voxels of size "
            f"{scale.tolist()} ({voxels.round(3).tolist()} voxels); volseg places volumes on the voxel "
            "grid: crop it on whole voxels (as 'volseg predict --roi' does)"
        )
    return tuple(int(v) for v in whole)


def _transforms(vol: Volume, level: int) -> list[dict[str, Any]]:
    """The coordinate transformations of dataset ``level`` (one line when the metadata is malformed)."""
    try:
        datasets = vol.group.attrs["ome"]["multiscales"][0]["datasets"]
        transforms = datasets[level].get("coordinateTransformations") or []
        if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
            raise TypeError
        return transforms
    except (KeyError, IndexError, TypeError, AttributeError):
        raise InputError(
            f"{vol.path}: its OME metadata has no readable dataset {level} (multiscales/datasets/"
            "coordinateTransformations); fix the volume's metadata (zarr.json) or convert it again"
        ) from None


def _vector(vol: Volume, name: str, transforms: list[dict[str, Any]], ndim: int) -> np.ndarray | None:
    """The sum of the ``name`` vectors of ``transforms`` (float, length ``ndim``); None if there are none."""
    if not transforms:
        return None
    total = np.zeros(ndim)
    for t in transforms:
        value = t.get(name)
        try:
            vector = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            vector = None
        if vector is None or vector.shape != (ndim,) or not np.all(np.isfinite(vector)):
            raise InputError(
                f"{vol.path}: its OME {name} {value!r} is not {ndim} finite numbers (z, y, x); fix the "
                "volume's metadata (zarr.json) or convert it again"
            )
        total += vector
    return total


def overlap_region(
    a_offset: Sequence[int], a_shape: Sequence[int], b_offset: Sequence[int], b_shape: Sequence[int]
) -> tuple[tuple[int, int], ...] | None:
    """``[start, stop)`` per axis, in the common frame, where two placed boxes overlap; None if nowhere."""
    region = tuple(
        (max(ao, bo), min(ao + an, bo + bn))
        for ao, an, bo, bn in zip(a_offset, a_shape, b_offset, b_shape, strict=True)
    )
    return region if all(lo < hi for lo, hi in region) else None


def _ome_attrs(
    name: str, unit: str | None, levels: Sequence[tuple[str, Sequence[float]]], kind: str
) -> dict[str, Any]:
    ome: dict[str, Any] = {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                # No unit at all (NGFF allows that) when the physical size is unknown.
                "axes": [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in AXES],
                "datasets": [
                    {
                        "path": path,
                        "coordinateTransformations": [{"type": "scale", "scale": [float(v) for v in scale]}],
                    }
                    for path, scale in levels
                ],
            }
        ],
    }
    if kind == "label":
        ome["image-label"] = {"version": NGFF_VERSION}
    return {"ome": ome}


# -------------------------------------------------------------------------- volume
@dataclass
class Volume:
    """An open OME-Zarr volume.

    Attributes
    ----------
    path
        The volume's folder.
    group
        The Zarr v3 group.
    """

    path: Path
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

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(
            self.array.dtype.to_native_dtype()
            if hasattr(self.array.dtype, "to_native_dtype")
            else self.array.dtype
        )

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array.chunks)

    @property
    def shards(self) -> tuple[int, ...] | None:
        s = self.array.shards
        return tuple(s) if s else None

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
                return tuple(float(v) for v in t["scale"])
        return (1.0, 1.0, 1.0)

    @property
    def unit(self) -> str:
        return self._multiscale["axes"][0].get("unit", "")

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
    def _done_dir(self) -> Path:
        return self.path / DONE_DIR

    def block_ids(self) -> Iterator[tuple[int, ...]]:
        """All block indices in C order."""
        return itertools.product(*(range(n) for n in self.block_grid))

    def block_region(self, index: Sequence[int]) -> tuple[slice, ...]:
        return block_slices(self.shape, self.block_shape, index)

    def done_blocks(self) -> set[tuple[int, ...]]:
        """Indices of blocks whose data is durably stored."""
        if not self._done_dir.is_dir():
            return set()
        done = set()
        ndim = len(self.shape)
        for name in os.listdir(self._done_dir):
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
            Array of the block's exact shape (smaller at the volume's far edges).
        """
        region = self.block_region(index)
        expected = tuple(s.stop - s.start for s in region)
        if tuple(data.shape) != expected:
            raise ValueError(f"block {tuple(index)} needs shape {expected}, got {data.shape}")
        self.array[region] = data
        self.mark_done(index, fsync=fsync)

    def mark_done(self, index: Sequence[int], *, fsync: bool = True) -> None:
        """Record block ``index`` as done (after its data has been written)."""
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
        self.update_meta(status="complete", completed=_now())

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
        if self.meta.get(EVERY_CHUNK):
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
        found: set[tuple[int, ...]] = set()
        if root.is_dir():
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
        return len(missing), ["0/c/" + "/".join(map(str, ix)) for ix in missing[:examples]]

    # ---- pyramid
    def add_pyramid(self, levels: int, *, method: str = "mean") -> None:
        """Write 2-D (y, x) downsampled levels ``1..levels`` (factor 2 each), chunk by chunk."""
        from volseg.storage.pyramids import write_levels

        write_levels(self, levels, method=method)


def _check_local(path: str | os.PathLike) -> Path:
    from volseg.storage.paths import local_path

    return local_path(path, "the volume")


def resolve_shards(
    shards: Sequence[int], chunks: Sequence[int], shape: Sequence[int], name: str = "shards"
) -> tuple[int, ...]:
    """Shards clipped to the volume (rounded up to whole chunks); refused unless whole chunks.

    ``chunks`` are already clipped to ``shape``; ``name`` is the option the message names.
    """
    clipped = tuple(
        max(c, min(int(s), -(-n // c) * c)) for s, c, n in zip(shards, chunks, shape, strict=True)
    )
    if any(s % c for s, c in zip(clipped, chunks, strict=True)):
        example = ",".join(str(c * 4 if i else c) for i, c in enumerate(chunks))
        raise OptionError(
            f"{name} {','.join(map(str, shards))}: each side must be a multiple of the chunks "
            f"{','.join(map(str, chunks))}, e.g. {example}"
        )
    return clipped


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
    """
    path = _check_local(path)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise OptionError(f"{path}: volume shape must be three positive sizes (Z, Y, X), got {shape}")
    chunks = tuple(max(1, min(int(c), s)) for c, s in zip(chunks, shape, strict=False))
    if shards is not None:
        shards = resolve_shards(shards, chunks, shape)
    if len(voxel_size) != 3 or any(float(v) <= 0 for v in voxel_size):
        raise OptionError(f"voxel size must be three positive numbers (z, y, x), got {tuple(voxel_size)}")
    if kind not in KINDS:
        raise OptionError(f"kind {kind!r} is not one of {KINDS}")
    compressors = parse_codec(codec)
    dtype = _zarr_dtype(dtype)
    _prepare_output(path, overwrite)
    try:
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        group.create_array(
            "0",
            shape=shape,
            dtype=dtype,
            chunks=chunks,
            shards=shards,
            compressors=compressors,
            fill_value=fill_value,
            dimension_names=AXES,
        )
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot write the output ({exc.strerror or exc}); choose a writable location"
        ) from exc
    attrs = _ome_attrs(path.stem, unit, [("0", voxel_size)], kind)
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


def _zarr_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as zarr v3 knows it: native byte order, canonical numpy type (``longlong`` -> ``int64``)."""
    try:
        dt = np.dtype(np.dtype(dtype).newbyteorder("=").str)
    except TypeError:
        raise OptionError(f"dtype {dtype!r} is not a numpy dtype") from None
    if dt.kind not in "biuf":
        raise InputError(
            f"dtype {dt}: volseg volumes hold integers, floats or booleans; convert the data to one of those"
        )
    return dt


def _prepare_output(path: Path, overwrite: bool) -> None:
    if path.exists():
        if not overwrite:
            raise OutputError(
                f"{path}: output already exists; pass --overwrite to replace it (or --resume to continue it)"
            )
        # --overwrite replaces volumes only: never delete a user's file or a folder of other things.
        if not path.is_dir() or (not (path / "zarr.json").exists() and any(path.iterdir())):
            raise OutputError(
                f"{path}: exists and is not a Zarr volume; refusing to delete it, choose another output"
            )
        shutil.rmtree(path)
    parent = path.parent if str(path.parent) else Path(".")
    blocker = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"{path}: {blocker} is a file, not a folder; choose an output path in a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot create the output folder ({exc.strerror or exc}); choose a writable location"
        ) from exc
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: folder {parent} is not writable; choose a writable location")


def open_volume(path: str | os.PathLike, mode: str = "r") -> Volume:
    """Open a volume lazily.

    Parameters
    ----------
    path
        A volume folder written by volseg, or any OME-Zarr v3 image with ``(z, y, x)``
        level ``0``, or a bare Zarr v3 array folder.
    mode
        ``"r"`` to read, ``"r+"`` to resume writing.

    Returns
    -------
    Volume
        ``.data`` is a dask array ``(Z, Y, X)``; metadata via ``.voxel_size``, ``.meta``.
    """
    path = _check_local(path)
    if not path.exists():
        raise InputError(
            f"{path}: no such volume; check the path (volumes are folders written by 'volseg convert')"
        )
    if not (path / "zarr.json").is_file():
        raise InputError(
            f"{path}: not a Zarr v3 volume (no zarr.json); convert images first with 'volseg convert'"
        )
    store = _CheckedStore(path) if mode == "r" else str(path)
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
        if isinstance(store, _CheckedStore):
            store.strict = bool(vol.meta.get(EVERY_CHUNK))
        _check_metadata(vol)
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
    if array.ndim != 3:
        raise InputError(f"{path}: array '0' has {array.ndim} dimensions; volseg needs (z, y, x)")
    if max(array.shape) > _MAX_SIDE or math.prod(_grid(array.shape, array.chunks)) > _MAX_CHUNKS:
        raise InputError(
            f"{path}: array '0' has shape {array.shape} in chunks {array.chunks}, more than any stack holds; "
            "its metadata is damaged, write it again"
        )
    if min(array.shape) < 1 or min(array.chunks) < 1:
        raise InputError(
            f"{path}: array '0' has shape {array.shape} and chunks {array.chunks}; both must be positive"
        )
    ms = vol.group.attrs["ome"].get("multiscales") if isinstance(vol.group.attrs["ome"], dict) else None
    ok = isinstance(ms, list) and ms and isinstance(ms[0], dict)
    datasets = ms[0].get("datasets") if ok else None
    axes = ms[0].get("axes") if ok else None
    ok = (
        ok
        and isinstance(datasets, list)
        and datasets
        and all(isinstance(d, dict) and "path" in d for d in datasets)
    )
    ok = ok and isinstance(axes, list) and len(axes) == 3 and all(isinstance(a, dict) for a in axes)
    if ok:
        transforms = datasets[0].get("coordinateTransformations")
        scales = (
            [t.get("scale") for t in transforms if isinstance(t, dict) and t.get("type") == "scale"]
            if isinstance(transforms, list)
            else []
        )
        ok = len(scales) == 1 and isinstance(scales[0], list) and len(scales[0]) == 3
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in scales[0])
        ok = ok and datasets[0]["path"] == "0"
    if not ok:
        raise InputError(
            f"{path}: its OME multiscales metadata is damaged (level 0 with a scale of 3 positive numbers "
            "and 3 axes is needed); write it again with the command that made it"
        )
    meta = vol.group.attrs.get("volseg", {})
    if not isinstance(meta, dict):
        raise InputError(f"{path}: its 'volseg' metadata block is not an object; the volume is damaged")
    if "kind" in meta and meta["kind"] not in KINDS:
        raise InputError(
            f"{path}: its recorded kind {meta['kind']!r} is not one of {', '.join(KINDS)}; "
            "the metadata is damaged"
        )
    if vol.complete and meta.get(EVERY_CHUNK):
        done = len(vol.done_blocks())
        if done != vol.n_blocks:
            raise InputError(
                f"{path}: says complete, but its completion record holds {done} of {vol.n_blocks} blocks: "
                "its metadata or record is damaged (shape or chunks changed?); write it again"
            )
    if vol.complete:
        first = tuple(slice(0, c) for c in array.chunks)
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


def _stored_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return total


def volume_info(path: str | os.PathLike) -> dict[str, Any]:
    """Everything ``volseg info`` shows, as a JSON-ready dict."""
    vol = open_volume(path)
    raw = int(np.prod(vol.shape)) * vol.dtype.itemsize
    stored = _stored_bytes(vol.path)
    meta = vol.meta
    return {
        "path": str(vol.path),
        "kind": vol.kind,
        "shape": list(vol.shape),
        "dtype": str(vol.dtype),
        "chunks": list(vol.chunks),
        "shards": list(vol.shards) if vol.shards else None,
        "codec": _codec_name(vol.array),
        "raw_bytes": raw,
        "stored_bytes": stored,
        "ratio": round(raw / stored, 2) if stored else None,
        "voxel_size": list(vol.voxel_size),
        "unit": vol.unit,
        "levels": vol.levels,
        "completion": vol.completion(),
        "provenance": meta.get("provenance", {}),
        "attributes": {k: v for k, v in meta.items() if k not in {"provenance"}},
    }


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
