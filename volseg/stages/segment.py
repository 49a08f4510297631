"""Membrane probabilities -> cell instance labels, block by block.

Two modes:

``2d`` (default, for anisotropic ssTEM)
    Every section is segmented on its own: the boundary map is smoothed, seeds are
    placed (h-minima of the boundary map, or the tops of the distance transform of the
    thresholded interior), a seeded watershed floods the section, and segments smaller
    than ``min_size`` pixels are given to their neighbours. ``method="cc"`` takes the
    plain connected components of the interior instead (membranes stay 0). The unit
    of work is a band of whole sections (one output block deep), so a section is
    never cut. Ids are unique over the volume: section ``z`` owns the id range
    ``z * Y * X + 1 ... (z + 1) * Y * X`` ("sparse" ids; ids depend only on the
    section, not on the chunking). ``relabel=True`` makes them consecutive instead,
    with a second streaming pass.

``3d``
    Connected components of the thresholded interior (6-connectivity) that are
    consistent across block borders: each block is labelled on its own, the labels
    touching across block faces are merged (``scipy.sparse.csgraph``), objects smaller
    than ``min_size`` voxels are removed, and every block is rewritten with
    consecutive global ids. Only the block faces and per-block sizes are kept in
    memory during the merge, never the volume.

Both modes run as a dask graph of independent block tasks and are resumable: a block
is recorded as done only after its data is stored, a rerun with the same options
skips the done blocks, a rerun with other options is refused unless ``overwrite``.
The output is an OME-Zarr label volume (``image-label`` metadata) of ``uint32`` ids
(``uint64`` when the volume has 2**32 voxels or more).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from volseg.errors import IncompleteRunError, InputError, OptionError, OutputError
from volseg.storage.conventions import recorded_kind, require_complete, require_kind
from volseg.storage.paths import output_not_input
from volseg.storage.volumes import Volume, block_slices, create_volume, open_volume, provenance

__all__ = [
    "SegmentOptions",
    "boundary_from_volume",
    "label_dtype",
    "recorded_convention",
    "value_scale",
    "segment",
    "segment_array",
    "segment_section",
]

MODES = ("2d", "3d")
METHODS = ("watershed", "cc")
SEEDS = ("distance", "hminima")
SCHEDULERS = ("threads", "processes", "synchronous")
INPUT_KINDS = ("probability", "mask")
_WORK = ".volseg/segment"  # scratch of an unfinished run, inside the output volume


# ------------------------------------------------------------------------- options
@dataclass(frozen=True)
class SegmentOptions:
    """How to turn a boundary (membrane) probability map into cells.

    Attributes
    ----------
    mode
        ``"2d"``: each section on its own (default); ``"3d"``: 3-D connected components
        consistent across blocks.
    method
        2-D only: ``"watershed"`` (seeded, default) or ``"cc"`` (connected components of
        the interior). 3-D always uses connected components.
    seeds
        Watershed seeds: ``"hminima"`` (h-minima of the smoothed boundary map, default) or
        ``"distance"`` (the tops of the distance transform of the interior).
    threshold
        A pixel whose smoothed boundary probability is below this is cell interior.
    sigma
        Gaussian smoothing of the boundary map in y and x, in pixels (0: none).
    min_distance
        Smallest distance in pixels between two distance-transform seeds.
    distance_h
        Distance-transform seeds are the maxima at least this many pixels higher than the
        saddle to a higher maximum (h-maxima of the distance transform).
    h
        Depth of the h-minima, in probability units (0..1).
    min_size
        Segments smaller than this (pixels in 2-D, voxels in 3-D) are dropped; in 2-D
        watershed mode their pixels go to the neighbouring cells.
    keep_boundaries
        2-D watershed: flood only the interior, so membranes stay 0 (default: the
        whole section is flooded and cells tile it).
    relabel
        2-D: consecutive ids over the volume (a second pass) instead of sparse ids.
        3-D ids are always consecutive.
    invert
        ``True``: the input is a cell (interior) probability, ``False``: a membrane
        probability, ``None``: read the convention from the input's metadata.
    """

    mode: str = "2d"
    method: str = "watershed"
    seeds: str = "distance"
    threshold: float = 0.5
    sigma: float = 1.0
    min_distance: int = 8
    distance_h: float = 6.0
    h: float = 0.1
    min_size: int = 20
    keep_boundaries: bool = False
    relabel: bool = False
    invert: bool | None = None

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("method", self.method, METHODS)
        _choice("seeds", self.seeds, SEEDS)
        if not 0.0 < self.threshold < 1.0:
            raise OptionError(f"--threshold {self.threshold}: must lie strictly between 0 and 1, e.g. 0.5")
        if not 0 <= self.sigma <= 100:
            raise OptionError(f"--sigma {self.sigma}: use 0 (no smoothing) to 100 pixels, e.g. 1")
        if not 1 <= self.min_distance <= 10_000:
            raise OptionError(f"--min-distance {self.min_distance}: use 1 to 10000 pixels, e.g. 8")
        if not 0 < self.distance_h <= 10_000:
            raise OptionError(f"--distance-h {self.distance_h}: must be > 0 pixels (up to 10000), e.g. 2")
        if not 0.0 < self.h < 1.0:
            raise OptionError(
                f"--h {self.h}: must lie strictly between 0 and 1 (probability units), e.g. 0.1"
            )
        if not 0 <= self.min_size <= 2**62:
            raise OptionError(f"--min-size {self.min_size}: must be >= 0")

    def record(self) -> dict[str, Any]:
        """The options that decide the output (compared when a run is resumed)."""
        return dataclasses.asdict(self)


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise OptionError(f"--{name} {value!r}: use one of {', '.join(allowed)}")


# ------------------------------------------------------------- pure array functions
def smooth(boundary: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing in (y, x) only, of a ``(Z, Y, X)`` or ``(Y, X)`` map."""
    if sigma <= 0:
        return boundary
    sig = (0.0,) * (boundary.ndim - 2) + (sigma, sigma)
    return ndi.gaussian_filter(boundary, sig, mode="reflect")


def _halo(sigma: float) -> int:
    # scipy's gaussian_filter reaches int(4 * sigma + 0.5) pixels (truncate=4)
    return int(4.0 * sigma + 0.5) if sigma > 0 else 0


def _seeds(smoothed: np.ndarray, interior: np.ndarray, opts: SegmentOptions) -> np.ndarray:
    """Watershed markers ``(Y, X)``: one id per seed, and at least one seed per interior component."""
    components = ndi.label(interior)[0]
    found = (
        _hminima_seeds(smoothed, interior, opts)
        if opts.seeds == "hminima"
        else _distance_seeds(interior, components, opts)
    )
    markers = ndi.label(found, np.ones((3, 3), bool))[0]
    # A component without a seed (e.g. a flat section, which has no h-minimum) becomes one.
    seeded = np.zeros(components.max() + 1, bool)
    seeded[components[found]] = True
    seedless = ~seeded[components] & interior
    if seedless.any():
        extra = ndi.label(seedless)[0]
        markers = np.where(seedless, extra + markers.max() * (extra > 0), markers)
    return markers


def _hminima_seeds(smoothed: np.ndarray, interior: np.ndarray, opts: SegmentOptions) -> np.ndarray:
    from skimage.morphology import h_minima

    return h_minima(smoothed, opts.h).astype(bool) & interior


def _distance_seeds(interior: np.ndarray, components: np.ndarray, opts: SegmentOptions) -> np.ndarray:
    """The tops of the distance transform at least ``distance_h`` px high that hold a peak.

    An elongated cell has one ridge and a cell with a bulge one top, not a row of maxima;
    of the tops, those holding a peak at least ``min_distance`` px from any higher peak are kept.
    """
    from skimage.feature import peak_local_max
    from skimage.morphology import h_maxima

    dist = ndi.distance_transform_edt(interior)
    tops = ndi.label(h_maxima(dist, opts.distance_h).astype(bool) & interior, np.ones((3, 3), bool))[0]
    peaks = peak_local_max(dist, min_distance=opts.min_distance, labels=components, exclude_border=False)
    keep = np.zeros(tops.max() + 1, bool)
    keep[tops[tuple(peaks.T)]] = True
    keep[0] = False
    return keep[tops]


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 1 or labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if small.any():
        labels = np.where(small[labels], 0, labels)
    return labels


def segment_section(boundary: np.ndarray, opts: SegmentOptions) -> np.ndarray:
    """Segment one section.

    Parameters
    ----------
    boundary
        ``(Y, X)`` membrane probability in 0..1 (float).
    opts
        See :class:`SegmentOptions`.

    Returns
    -------
    numpy.ndarray
        ``(Y, X)`` uint32 labels 1..n, 0 for background (membranes in ``cc`` mode or
        with ``keep_boundaries``).
    """
    from skimage.segmentation import relabel_sequential, watershed

    smoothed = smooth(boundary.astype(np.float32, copy=False), opts.sigma)
    interior = smoothed < opts.threshold
    if opts.method == "cc":
        labels = _drop_small(ndi.label(interior)[0], opts.min_size)
    else:
        mask = interior if opts.keep_boundaries else None
        labels = watershed(smoothed, _seeds(smoothed, interior, opts), mask=mask)
        kept = _drop_small(labels, opts.min_size)
        if kept is not labels:
            labels = _refill(smoothed, labels, kept, mask)
    return relabel_sequential(labels.astype(np.uint32, copy=False))[0].astype(np.uint32, copy=False)


def _refill(
    smoothed: np.ndarray, labels: np.ndarray, kept: np.ndarray, mask: np.ndarray | None
) -> np.ndarray:
    """Give the pixels of dropped segments to their neighbours.

    A watershed from the kept segments, restricted to the dropped pixels and the ring of
    kept pixels around them: the same result as flooding the whole section again from
    ``kept``, at the cost of the dropped pixels only.
    """
    from skimage.segmentation import watershed

    holes = (kept == 0) & (labels != 0)
    region = ndi.binary_dilation(holes, np.ones((3, 3), bool))
    if mask is not None:
        region &= mask
    filled = watershed(smoothed, np.where(region, kept, 0), mask=region)
    return np.where(holes, filled, kept)


def label_dtype(n_voxels: int) -> np.dtype:
    """``uint32`` unless ids may reach 2**32 (then ``uint64``)."""
    return np.dtype(np.uint32) if n_voxels < 2**32 - 1 else np.dtype(np.uint64)


def segment_array(boundary: np.ndarray, options: SegmentOptions | None = None) -> np.ndarray:
    """Segment a whole in-memory ``(Z, Y, X)`` boundary map: the reference for the blockwise run.

    Gives the same ids as :func:`segment` with any chunking (2-D mode), or the same
    partition up to a renumbering (3-D mode).
    """
    opts = options or SegmentOptions()
    boundary = np.asarray(boundary, np.float32)
    dtype = label_dtype(boundary.size)
    if opts.mode == "3d":
        labels, _ = ndi.label(smooth(boundary, opts.sigma) < opts.threshold)
        labels = _drop_small(labels, opts.min_size)
        from skimage.segmentation import relabel_sequential

        return relabel_sequential(labels)[0].astype(dtype)
    out = np.zeros(boundary.shape, dtype)
    plane = boundary.shape[1] * boundary.shape[2]
    start = 0
    for z in range(boundary.shape[0]):
        local = segment_section(boundary[z], opts).astype(dtype)
        offset = start if opts.relabel else z * plane
        out[z] = np.where(local > 0, local + dtype.type(offset), 0)
        start += int(local.max())
    return out


# ------------------------------------------------------------------ input handling
_BOUNDARY_WORDS = ("boundary", "boundaries", "membrane", "membranes")
_OBJECT_WORDS = ("object", "objects", "interior", "cell", "cells", "cell interior")


def recorded_convention(vol: Volume) -> dict[str, Any]:
    """What a volume's metadata says its values mean.

    Looks in the ``volseg`` block and in the model record that ``volseg predict`` copies
    there (``predict.model``: ``foreground``, ``foreground_kind`` or the training's
    ``label_convention`` text).

    Returns
    -------
    dict
        ``foreground``: the label values of the positive class (or ``None``);
        ``foreground_kind``: ``"boundary"`` when high values mean membrane, ``"object"``
        when they mean cells, ``None`` when nothing is recorded.
    """
    meta = vol.meta
    model = ((meta.get("predict") or {}).get("model") or {}) if isinstance(meta.get("predict"), dict) else {}
    found: dict[str, Any] = {"foreground": None, "foreground_kind": None}
    for block in (meta, model):
        if found["foreground"] is None and isinstance(block.get("foreground"), (list, tuple)):
            found["foreground"] = [int(v) for v in block["foreground"]]
        if found["foreground_kind"] is None:
            found["foreground_kind"] = _kind_from(block)
    return found


def _kind_from(block: dict[str, Any]) -> str | None:
    for key in ("foreground_kind", "positive"):
        value = str(block.get(key, "")).lower()
        if value in _BOUNDARY_WORDS:
            return "boundary"
        if value in _OBJECT_WORDS:
            return "object"
    convention = block.get("label_convention")
    if isinstance(
        convention, dict
    ):  # value -> meaning, e.g. synth's {"255": "cell interior", "0": "membrane"}
        meanings = {str(v).lower() for k, v in convention.items() if str(k) not in ("0", "0.0")}
        if meanings & set(_OBJECT_WORDS):
            return "object"
        if meanings & set(_BOUNDARY_WORDS):
            return "boundary"
        return None
    # training writes e.g. "probability of labels in [255] (objects: membrane probability = 1 - p)"
    text = str(convention or "").lower()
    if "(objects" in text:
        return "object"
    if "(boundaries" in text:
        return "boundary"
    return None


def value_scale(vol: Volume) -> tuple[float, float]:
    """``(scale, offset)`` with ``probability = value * scale + offset``.

    From the ``values`` record that ``volseg predict`` writes; else integers span
    ``0..max`` of their dtype (uint8: ``1 / 255``) and floats are probabilities already.
    """
    values = vol.meta.get("values")
    if isinstance(values, dict) and isinstance(values.get("scale"), (int, float)):
        return float(values["scale"]), float(values.get("offset") or 0.0)
    if np.issubdtype(vol.dtype, np.integer) and vol.dtype != np.bool_:
        return 1.0 / float(np.iinfo(vol.dtype).max), 0.0
    return 1.0, 0.0


def boundary_from_volume(
    vol: Volume, invert: bool | None = None, kind: str | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """A function that turns raw blocks of ``vol`` into membrane probabilities 0..1 (float32).

    ``invert``: ``True`` when the values are cell (interior) probabilities, ``False`` when
    they are membrane probabilities, ``None`` to read it from the metadata
    (:func:`recorded_convention`; membrane when nothing is recorded). ``kind``: what the
    values are (``probability`` or ``mask``), default the recorded kind. A ``mask`` volume
    (or bool) is on wherever it is non-zero.
    """
    kind = kind or vol.kind
    if kind == "label":
        raise InputError(f"{vol.path}: is a label volume; segment needs probabilities or a binary mask")
    dtype = vol.dtype
    if not (dtype == np.bool_ or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(
            f"{vol.path}: dtype {dtype} is not a probability or mask; expected uint8, float or bool"
        )
    binary = dtype == np.bool_ or kind == "mask"
    scale, offset = value_scale(vol)
    if invert is None:
        invert = recorded_convention(vol)["foreground_kind"] == "object"

    def convert(block: np.ndarray) -> np.ndarray:
        if binary:
            p = (block != 0).astype(np.float32)
        else:
            p = np.clip(block.astype(np.float32) * np.float32(scale) + np.float32(offset), 0.0, 1.0)
        return np.float32(1.0) - p if invert else p

    return convert


_KIND_FIX = (
    "pass the output of 'volseg predict' (membrane probabilities) or a mask, or say what it holds "
    "with --input-kind probability|mask"
)


def _input_kind(vol: Volume, given: str | None = None) -> str:
    """What segment takes ``vol`` for: ``given`` (``--input-kind``), else its recorded kind.

    A recorded probability or mask volume is accepted (a bool volume of unrecorded or image
    kind is a mask); anything else (raw EM images, labels, volumes of unrecorded kind) is
    refused with one line, unless ``given`` says what it holds.
    """
    if given is not None:
        return given
    recorded = recorded_kind(vol)
    if vol.dtype == np.bool_ and recorded in (None, "image"):
        return "mask"
    kind = require_kind(vol, INPUT_KINDS, "segment's PROB", _KIND_FIX)
    return str(kind)


def _placement(src: Volume) -> dict[str, Any]:
    """The OME transforms that place ``src`` (its scale and any translation), for its labels to carry."""
    import copy

    try:
        multiscale = src.group.attrs["ome"]["multiscales"][0]
        found = {"dataset": copy.deepcopy(list(multiscale["datasets"][0]["coordinateTransformations"]))}
        if not all(isinstance(t, dict) and isinstance(t.get("type"), str) for t in found["dataset"]):
            raise TypeError
    except (KeyError, IndexError, TypeError, AttributeError):
        raise InputError(
            f"{src.path}: its OME metadata has no readable coordinateTransformations of dataset 0; fix "
            "its zarr.json or write it again"
        ) from None
    if isinstance(multiscale.get("coordinateTransformations"), list):
        found["multiscale"] = copy.deepcopy(multiscale["coordinateTransformations"])
    return found


def _carry_placement(out: Volume, placement: dict[str, Any]) -> None:
    """Give ``out`` the transforms of :func:`_placement`: it lies where its input does."""
    ome = dict(out.group.attrs["ome"])
    multiscale = ome["multiscales"][0]
    multiscale["datasets"][0]["coordinateTransformations"] = placement["dataset"]
    if "multiscale" in placement:
        multiscale["coordinateTransformations"] = placement["multiscale"]
    out.group.attrs.update({"ome": ome})


def _open_or_create(
    prob: Volume,
    out: Path,
    opts: SegmentOptions,
    chunks: Sequence[int] | None,
    overwrite: bool,
    resume: bool,
    codec: str | None,
    given_kind: str | None = None,
) -> Volume:
    """The output: created anew, or reopened to resume when it was made from the same input and options."""
    chunks = tuple(int(c) for c in (chunks or prob.block_shape))
    record = {
        "source": str(prob.path.resolve()),
        "source_completed": prob.meta.get("completed"),
        "shape": list(prob.shape),
        "chunks": list(chunks),
        "codec": codec,
        "options": opts.record(),
        "input_kind": given_kind,
    }
    if resume and (out.exists() or out.is_symlink()):
        again = "pass --overwrite to start again"
        try:
            existing = open_volume(out, mode="r+")
        except InputError as exc:
            raise OutputError(f"cannot resume {out}: {exc}; {again}") from None
        old = existing.meta.get("segment")
        if not isinstance(old, dict):
            raise OutputError(f"cannot resume {out}: it was not written by 'volseg segment'; {again}")
        for key, value in record.items():
            if old.get(key) != value:
                raise OutputError(
                    f"cannot resume {out}: it was made with {key} {old.get(key)!r}, this run has "
                    f"{value!r}; rerun with the first run's options, or {again}"
                )
        return existing
    placement = _placement(prob)  # before anything is created
    vol = create_volume(
        out,
        prob.shape,
        label_dtype(int(np.prod(prob.shape))),
        chunks,
        codec=codec,
        voxel_size=prob.voxel_size,
        unit=prob.unit or None,
        kind="label",
        overwrite=overwrite,
        provenance_block=provenance([prob.path], config={"stage": "segment", **record}),
        extra={"segment": record},
    )
    _carry_placement(vol, placement)
    return vol


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``path`` atomically: it exists whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)  # block faces are long runs of few ids: they compress well
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _scratch(out: Volume, mode: str) -> Volume:
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


# ---------------------------------------------------------------------- the run
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
    prob: Volume, convert: Callable, region: tuple[slice, ...], halo: int
) -> tuple[np.ndarray, tuple]:
    """The region grown by ``halo`` in (y, x) (clipped to the volume), and the crop back."""
    grown, crop = [region[0]], [slice(None)]
    for s, n in zip(region[1:], prob.shape[1:], strict=True):
        lo, hi = max(0, s.start - halo), min(n, s.stop + halo)
        grown.append(slice(lo, hi))
        crop.append(slice(s.start - lo, s.start - lo + s.stop - s.start))
    return convert(np.asarray(prob.array[tuple(grown)])), tuple(crop)


def _label_unit(prob: Volume, convert: Callable, unit: _Unit, opts: SegmentOptions) -> np.ndarray:
    """Local labels of one unit: 2-D ids 1..n per section, or 3-D ids 1..n per block."""
    if opts.mode == "2d":
        boundary, _ = _read_boundary(prob, convert, unit.region, 0)
        return np.stack([segment_section(sec, opts) for sec in boundary])
    boundary, crop = _read_boundary(prob, convert, unit.region, _halo(opts.sigma))
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
    prob: Volume, convert: Callable, out: Volume, scratch: Volume | None, unit: _Unit, opts: SegmentOptions
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


def _run(tasks: list, scheduler: str | None, workers: int | None, what: str, path: Path) -> None:
    """Compute independent delayed tasks; a failed task fails the run, after the others finished."""
    import dask

    if not tasks:
        return
    kwargs: dict[str, Any] = {}
    if scheduler:
        kwargs["scheduler"] = scheduler
    if workers:
        kwargs["num_workers"] = workers
    results = dask.compute(*tasks, **kwargs)
    failures = [r for r in results if r is not None]
    if failures:
        raise IncompleteRunError(
            f"{path}: {len(failures)} of {len(tasks)} {what} failed (first: {failures[0]}); "
            "they are not marked done, rerun the same command to retry them"
        )


def _guard(fn: Callable, *args: Any) -> str | None:
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


# ------------------------------------------------------------------------ the API
def segment(
    prob: str | os.PathLike,
    out: str | os.PathLike,
    *,
    options: SegmentOptions | None = None,
    input_kind: str | None = None,
    chunks: Sequence[int] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    codec: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Segment cells in a probability (or mask) volume into an instance label volume.

    Parameters
    ----------
    prob
        Input volume ``(Z, Y, X)`` recorded as a probability or mask volume (what
        ``volseg predict`` writes): uint8 probabilities 0..255 (or with ``scale`` in
        their metadata), float probabilities 0..1, or a binary mask. Raw EM images,
        labels and volumes of unrecorded kind are refused, unless ``input_kind`` says
        what they hold.
    out
        Output label volume (OME-Zarr with ``image-label`` metadata), placed where the
        input lies (the input's OME scale and translation). Never the input, inside it
        or holding it.
    options
        :class:`SegmentOptions`; defaults suit ISBI-like ssTEM at 4 nm/pixel.
    input_kind
        ``"probability"`` or ``"mask"``: what the input holds, whatever its recorded kind
        (e.g. probabilities from another tool converted to Zarr).
    chunks
        Output chunks ``(z, y, x)``; default: the input's blocks.
    overwrite
        Replace an existing output (otherwise an existing output is refused).
    resume
        Continue an interrupted run: the done blocks are kept, the others are written.
        Refused when the output was made from another input or with other options.
    codec
        Output codec (see :func:`volseg.storage.volumes.parse_codec`).
    scheduler, workers
        Dask scheduler (``"threads"``, ``"processes"``, ``"synchronous"``; default: the
        active one, e.g. a ``distributed.Client``) and its number of workers.
    progress
        Called with a short message at each phase.

    Returns
    -------
    dict
        ``path``, ``mode``, ``labels`` (number of ids, or the upper end of the sparse id
        range), ``dtype``, ``blocks``, ``resumed_blocks``.
    """
    opts = options or SegmentOptions()
    say = progress or (lambda _msg: None)
    _check_run_options(chunks, overwrite, resume, scheduler, workers)
    if input_kind is not None and input_kind not in INPUT_KINDS:
        raise OptionError(f"--input-kind {input_kind!r}: use one of {', '.join(INPUT_KINDS)}")
    output_not_input({"OUT": out}, {"PROB": prob})  # before anything is created or deleted
    src = open_volume(prob)
    convert = boundary_from_volume(src, opts.invert, _input_kind(src, input_kind))
    out_path = Path(os.fspath(out))
    require_complete(src, "input")
    vol = _open_or_create(src, out_path, opts, chunks, overwrite, resume, codec, input_kind)
    resumed = len(vol.done_blocks())
    if vol.complete:
        say("already complete")
        return _summary(vol, opts, resumed)
    sparse = opts.mode == "2d" and not opts.relabel
    units = _units(vol, opts.mode)
    scratch = None if sparse else _scratch(vol, opts.mode)
    _pass1(src, convert, vol, scratch, units, opts, sparse, scheduler, workers, say)
    if scratch is not None:
        say("merging labels" if opts.mode == "3d" else "numbering labels")
        starts, lut = _lookup(vol, units, opts)
        vol.update_meta(labels=int(lut.max()) if lut.size else 0)
        import dask

        todo = [b for b in vol.block_ids() if not vol.is_done(b)]
        say(f"writing {len(todo)} blocks")
        tasks = [dask.delayed(_guard)(_pass2_task, vol, scratch, b, starts, lut, opts.mode) for b in todo]
        _run(tasks, scheduler, workers, "blocks", vol.path)
        shutil.rmtree(vol.path / _WORK, ignore_errors=True)
    else:
        vol.update_meta(labels=int(np.prod(vol.shape)))
    vol.mark_complete()
    return _summary(vol, opts, resumed)


def _check_run_options(
    chunks: Sequence[int] | None, overwrite: bool, resume: bool, scheduler: str | None, workers: int | None
) -> None:
    if chunks is not None and (len(chunks) != 3 or min(chunks) < 1):
        raise OptionError(f"--chunks {tuple(chunks)}: expected three positive sizes (z, y, x)")
    if overwrite and resume:
        raise OptionError("--overwrite and --resume exclude each other: choose one")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise OptionError(
            f"--scheduler {scheduler!r}: use one of {', '.join(SCHEDULERS)} (or a distributed.Client)"
        )
    if workers is not None and not 1 <= workers <= 1024:
        raise OptionError(f"--workers {workers}: use 1 to 1024")


def _pass1(
    src: Volume,
    convert: Callable,
    vol: Volume,
    scratch: Volume | None,
    units: list[_Unit],
    opts: SegmentOptions,
    sparse: bool,
    scheduler: str | None,
    workers: int | None,
    say: Callable[[str], None],
) -> None:
    import dask

    todo = [u for u in units if not _pass1_done(vol, u, opts, sparse)]
    what = "sections bands" if opts.mode == "2d" else "blocks"
    say(f"labelling {len(todo)} of {len(units)} {what}")
    tasks = [dask.delayed(_guard)(_pass1_task, src, convert, vol, scratch, u, opts) for u in todo]
    _run(tasks, scheduler, workers, what, vol.path)


def _summary(vol: Volume, opts: SegmentOptions, resumed: int) -> dict[str, Any]:
    return {
        "path": str(vol.path),
        "mode": opts.mode,
        "ids": "consecutive" if (opts.mode == "3d" or opts.relabel) else "sparse",
        "labels": vol.meta.get("labels"),
        "dtype": str(vol.dtype),
        "blocks": vol.n_blocks,
        "resumed_blocks": resumed,
    }
