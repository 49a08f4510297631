"""The synth stage: a synthetic serial-section EM stack with exact labels, written chunk by chunk.

The kernels (parameters, geometry, rendering, :func:`~volseg.core.synth.synth_block`) live in
:mod:`volseg.core.synth`; this stage checks the volume's arguments, creates the three volumes and maps
``synth_block`` over their chunks. :class:`SynthParams`, :func:`synth_block`, :data:`MEMBRANE` and
:data:`INTERIOR` are re-exported here for callers of the stage.

Label convention of ``membranes.zarr`` (that of the ISBI 2012 labels): 255 = cell
interior, 0 = membrane. ``cells.zarr`` holds uint32 cell ids (a complete partition,
no background), stable across sections so that a cell keeps its id in 3-D.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from volseg.core.progress import Progress, Tracker
from volseg.core.synth import INTERIOR, MEMBRANE, SynthParams, as_shape, check_seed, synth_block
from volseg.errors import OptionError, OutputError
from volseg.storage.codecs import DEFAULT_CODEC
from volseg.storage.conventions import Convention
from volseg.storage.files import json_ready
from volseg.storage.provenance import provenance
from volseg.storage.volumes import Volume, create_volume

__all__ = ["INTERIOR", "MEMBRANE", "SynthParams", "SynthResult", "synth", "synth_block"]

NAMES = ("image.zarr", "cells.zarr", "membranes.zarr")
LABEL_CONVENTION = {"255": "cell interior", "0": "membrane"}
#: What the values of ``membranes.zarr`` mean, as data: the membrane value is the positive class, and
#: uint8 values span 0..255 (the scale that readers assumed before the record existed).
CONVENTION = Convention(foreground=(MEMBRANE,), foreground_kind="boundary").for_dtype(np.uint8)


@dataclass(frozen=True)
class SynthResult:
    """What :func:`synth` wrote."""

    out: Path
    image: Path
    cells: Path
    membranes: Path
    shape: tuple[int, int, int]
    seed: int
    seconds: float
    membrane_fraction: float

    @property
    def mvox_per_s(self) -> float:
        return float(np.prod(self.shape)) / max(self.seconds, 1e-9) / 1e6

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: the paths as strings, and ``mvox_per_s``."""
        return json_ready({**asdict(self), "mvox_per_s": self.mvox_per_s})


def _check_volume_args(shape: Any, seed: Any, chunks: Any) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
    shape = as_shape(shape, "shape")
    if min(shape) < 1:
        raise OptionError(f"synth shape {shape}: every size must be at least 1")
    if int(np.prod(shape, dtype=np.float64)) > 2**40:
        raise OptionError(f"synth shape {shape}: more than 2**40 voxels; generate a smaller volume")
    seed = check_seed(seed)
    if chunks is None:
        chunks = (1, min(shape[1], 1024), min(shape[2], 1024))
    chunks = as_shape(chunks, "chunks")
    if min(chunks) < 1:
        raise OptionError(f"synth chunks {chunks}: every size must be at least 1")
    return shape, seed, tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))


def _create(
    out: Path,
    shape: Sequence[int],
    chunks: Sequence[int],
    voxel_size: Sequence[float],
    codec: str,
    overwrite: bool,
    config: dict[str, Any],
) -> list[Volume]:
    existing = [out / n for n in NAMES if (out / n).exists()]
    if existing and not overwrite:
        raise OutputError(f"{existing[0]}: output already exists; pass --overwrite to replace it")
    prov = provenance(config=config)
    common = {"voxel_size": voxel_size, "codec": codec, "overwrite": overwrite, "provenance_block": prov}
    labels = {"synth": config, "label_convention": LABEL_CONVENTION, "convention": CONVENTION.to_dict()}
    return [
        create_volume(
            out / NAMES[0], shape, np.uint8, chunks, kind="image", extra={"synth": config}, **common
        ),
        create_volume(
            out / NAMES[1], shape, np.uint32, chunks, kind="label", extra={"synth": config}, **common
        ),
        create_volume(
            out / NAMES[2], shape, np.uint8, chunks, kind="mask", fill_value=INTERIOR, extra=labels, **common
        ),
    ]


def _write(
    vols: list[Volume],
    shape: tuple[int, ...],
    seed: int,
    params: SynthParams,
    workers: int,
    progress: Progress | None,
) -> int:
    """Generate and store every chunk; the number of membrane voxels."""
    blocks = list(vols[0].block_ids())

    def one(index: tuple[int, ...]) -> int:
        region = vols[0].block_region(index)
        data = synth_block(
            tuple(r.stop - r.start for r in region), seed, tuple(r.start for r in region), shape, params
        )
        for vol, block in zip(vols, data, strict=True):
            vol.write_block(index, block)
        return int(np.count_nonzero(data[2] == MEMBRANE))

    membrane = 0
    with Tracker(progress, "synth", len(blocks), "chunks") as tracker, ThreadPoolExecutor(workers) as pool:
        for count in pool.map(one, blocks):
            membrane += count
            tracker.advance()
    return membrane


def synth(
    out: str | Path,
    params: SynthParams | None = None,
    *,
    shape: Sequence[int] = (30, 512, 512),
    seed: int = 0,
    chunks: Sequence[int] | None = None,
    overwrite: bool = False,
    voxel_size: Sequence[float] = (50.0, 4.0, 4.0),
    codec: str = DEFAULT_CODEC,
    workers: int = 1,
    progress: Progress | None = None,
) -> SynthResult:
    """Write a synthetic ssTEM-like stack with exact labels, chunk by chunk.

    Parameters
    ----------
    out
        Folder to write ``image.zarr``, ``cells.zarr`` and ``membranes.zarr`` into.
    params
        Appearance and dynamics (the stage's options); defaults mimic ISBI 2012.
    shape
        Volume size ``(Z, Y, X)`` in voxels.
    seed
        Selects the volume; the same seed and shape give the same bytes on any chunking.
    chunks
        Chunk shape ``(Z, Y, X)``, also the unit of generation (memory is bounded by it);
        default ``(1, min(Y, 1024), min(X, 1024))``.
    overwrite
        Replace existing volumes of the same names.
    voxel_size
        Physical voxel size ``(z, y, x)`` in nanometres, recorded in the metadata.
    codec
        Compression (see :func:`volseg.storage.codecs.parse_codec`).
    workers
        Threads generating and writing chunks at once (numpy, compression and I/O release
        the GIL); the bytes do not depend on it. Memory is about ``workers`` chunks.
    progress
        Receives the count of chunks written (:mod:`volseg.core.progress`), from the first chunk on.

    Returns
    -------
    SynthResult
        Paths, shape, seed, time taken and the membrane fraction.

    Notes
    -----
    ``membranes.zarr`` follows the ISBI 2012 convention, 255 = cell interior and
    0 = membrane, so a command that trains on ISBI labels trains on it unchanged.
    """
    shape, seed, chunks = _check_volume_args(shape, seed, chunks)
    params = params or SynthParams()
    params.validate()
    out = Path(out)
    config = {"shape": list(shape), "seed": seed, "params": asdict(params)}
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise OptionError(f"synth workers {workers!r}: expected a positive integer")
    vols = _create(out, shape, chunks, voxel_size, codec or DEFAULT_CODEC, overwrite, config)
    start = time.perf_counter()
    fraction = _write(vols, shape, seed, params, workers, progress) / float(np.prod(shape))
    for vol in vols:
        vol.update_meta(membrane_fraction=round(fraction, 5))
        vol.mark_complete()
    seconds = time.perf_counter() - start
    return SynthResult(out, *(v.path for v in vols), shape, seed, seconds, fraction)  # type: ignore[arg-type]
