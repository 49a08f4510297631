"""What segment reads and where it writes: the input's values as membrane probabilities, the output volume.

The input's recorded kind and convention (:mod:`volseg.storage.conventions`) decide how its values are
read; the output is a label volume placed where the input lies, created anew or reopened to resume.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volseg.core.segmentation import label_dtype
from volseg.errors import InputError, OptionError, OutputError
from volseg.stages.segment.options import INPUT_KINDS, SegmentOptions
from volseg.storage.conventions import (
    recorded_convention,
    recorded_kind,
    require_kind,
    to_probability,
    value_scale,
)
from volseg.storage.locations import Location
from volseg.storage.volumes import Volume, create_volume, open_volume, provenance

__all__ = ["Converter", "boundary_from_volume", "input_kind_of", "open_output"]

Converter = Callable[[np.ndarray], np.ndarray]
"""Raw stored block -> membrane probability 0..1 (float32)."""


def boundary_from_volume(vol: Volume, invert: bool | None = None, kind: str | None = None) -> Converter:
    """A function that turns raw blocks of ``vol`` into membrane probabilities 0..1 (float32).

    ``invert``: ``True`` when the values are cell (interior) probabilities, ``False`` when
    they are membrane probabilities, ``None`` to read it from the metadata
    (:func:`volseg.storage.conventions.recorded_convention`; membrane when nothing is recorded).
    ``kind``: what the values are (``probability`` or ``mask``), default the recorded kind. A
    ``mask`` volume (or bool) is on wherever it is non-zero.
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
        invert = not recorded_convention(vol).membrane_is_high

    def convert(block: np.ndarray) -> np.ndarray:
        p = (block != 0).astype(np.float32) if binary else to_probability(block, scale, offset)
        return np.float32(1.0) - p if invert else p

    return convert


_KIND_FIX = (
    "pass the output of 'volseg predict' (membrane probabilities) or a mask, or say what it holds "
    "with --input-kind probability|mask"
)


def input_kind_of(vol: Volume, given: str | None = None) -> str:
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
    if src.channels is not None:  # (c, z, y, x) affinities: the labels have the spatial axes only
        for transforms in found.values():
            for t in transforms:
                for key in ("scale", "translation"):
                    if isinstance(t.get(key), list) and len(t[key]) == 4:
                        t[key] = t[key][1:]
    return found


def _carry_placement(out: Volume, placement: dict[str, Any]) -> None:
    """Give ``out`` the transforms of :func:`_placement`: it lies where its input does."""
    ome = dict(out.group.attrs["ome"])
    multiscale = ome["multiscales"][0]
    multiscale["datasets"][0]["coordinateTransformations"] = placement["dataset"]
    if "multiscale" in placement:
        multiscale["coordinateTransformations"] = placement["multiscale"]
    out.group.attrs.update({"ome": ome})


def open_output(
    prob: Volume,
    out: Path | Location,
    opts: SegmentOptions,
    chunks: Sequence[int] | None,
    overwrite: bool,
    resume: bool,
    codec: str | None,
    given_kind: str | None = None,
    parts: int | None = None,
) -> Volume:
    """The output: created anew, or reopened to resume when it was made from the same input and options.

    ``parts``: the N of ``--part K/N``, recorded in a new output; an output being written in another
    number of parts (or started by a single run) is refused. A run without parts may finish any.
    """
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
        again = "delete it to start again" if parts else "pass --overwrite to start again"
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
        _check_parts(existing, old.get("parts"), parts)
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
        extra={"segment": {**record, "parts": parts} if parts else record},
    )
    _carry_placement(vol, placement)
    return vol


def _check_parts(vol: Volume, recorded: Any, parts: int | None) -> None:
    """Refuse a ``--part K/N`` job for an output that is written in another number of parts, or by one run."""
    if parts is None or recorded == parts:
        return
    if recorded is None:
        raise OptionError(
            f"--part .../{parts}: {vol.path} was started by a single run (no --part); finish it with "
            "--resume and no --part, or delete it and submit the jobs again"
        )
    raise OptionError(
        f"--part .../{parts}: {vol.path} is being written in {recorded} parts; use --part K/{recorded}"
    )
