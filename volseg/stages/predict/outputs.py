"""The output volumes of a prediction: resume identity, creation, completion.

A run records its *identity* (the settings that change output values) in the probability volume (and
the mask). A rerun with the same identity resumes: chunks already recorded as done are not computed
again. A rerun with another identity, or an output that predict did not write, is refused unless
``--overwrite``. See docs/resume.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from volseg.errors import InputError, OptionError, OutputError
from volseg.stages.predict.options import PredictOptions
from volseg.stages.predict.plan import Layout, ModelInfo, Plan
from volseg.storage.conventions import Convention
from volseg.storage.files import json_ready
from volseg.storage.locks import creating
from volseg.storage.paths import location
from volseg.storage.volumes import Volume, create_volume, open_volume, provenance

__all__ = ["add_translation", "create_outputs", "existing_done", "finish", "identity", "mask_path"]


def mask_path(out: Path) -> Path:
    """The sibling volume that holds the thresholded mask: ``prob.zarr`` -> ``prob-mask.zarr``."""
    return out.with_name(f"{out.stem}-mask{out.suffix}")


# -------------------------------------------------------------------------- identity
def identity(info: ModelInfo, source: Volume, layout: Layout, options: PredictOptions) -> dict[str, Any]:
    """The settings that change output values: a rerun must match them to resume.

    Device and precision are recorded as asked (``auto`` resolves the same way on the same
    hardware); the batch size, the block grouping and the scheduler do not change values.
    """
    ident = {
        "model_checksum": info.key,
        "source": str(source.path.resolve()),
        "source_shape": list(source.shape),
        "roi": [list(r) for r in layout.roi],
        "chunks": list(layout.chunks),
        "dtype": options.dtype,
        "threshold": options.threshold,
        "tile": layout.tile,
        "halo": layout.halo,
        "edge": layout.edge,
        "precision": options.precision,
        "device": options.device,
        "tta": options.tta,
        "activation": options.activation,
        "channel": options.channel,
        "rescale": options.rescale,
        "skip_empty": options.skip_empty,
    }
    if options.tissue_mask:  # absent without one, as in earlier outputs
        mask = location(options.tissue_mask, "--mask")
        ident["tissue_mask"] = str(mask.resolve())
    if layout.backend != "torch":  # absent for torch, as in the outputs of earlier versions
        ident["backend"] = layout.backend
    return json_ready(ident)


def existing_done(
    out: Path, mask: Path | None, identity: dict[str, Any], overwrite: bool
) -> set[tuple[int, ...]]:
    """Chunks already done by an identical earlier run; refuse an output from another run.

    With a mask, a chunk is done only when both volumes have it.
    """
    if overwrite:
        return set()
    done: set[tuple[int, ...]] | None = None
    for path in [out] + ([mask] if mask else []):
        folder = isinstance(path, Path) and path.is_dir()
        empty = not path.exists() or (folder and not any(path.iterdir()))  # type: ignore[union-attr]
        blocks = set() if empty else _check_identity(path, identity).done_blocks()
        done = blocks if done is None else done & blocks
    return done or set()


def _check_identity(path: Path, identity: dict[str, Any]) -> Volume:
    try:
        vol = open_volume(path, channels=True)
    except InputError:
        raise OutputError(
            f"{path}: exists and is not a volseg prediction; pass --overwrite to replace it, "
            f"or choose another output"
        ) from None
    prior = (vol.meta.get("predict") or {}).get("identity")
    if prior is None:
        raise OutputError(
            f"{path}: exists and was not written by 'volseg predict' (kind {vol.kind}); "
            f"pass --overwrite to replace it, or choose another output"
        )
    if prior != identity:
        diffs = [
            f"{k} {_brief(prior.get(k))} -> {_brief(v)}" for k, v in identity.items() if prior.get(k) != v
        ]
        more = f"; and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise OutputError(
            f"{path}: exists from another run ({'; '.join(diffs[:3])}{more}); pass --overwrite to "
            f"replace it, or choose another output"
        )
    return vol


def _brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 28 else text[:12] + "..." + text[-12:]


# -------------------------------------------------------------------------- creation
def _metadata(plan: Plan, info: ModelInfo) -> dict[str, Any]:
    """The ``volseg`` metadata of the probability volume: the run, the model, what the values mean."""
    values = (
        {"dtype": "uint8", "scale": 1 / 255, "offset": 0.0, "meaning": "probability = value * scale"}
        if plan.dtype == "uint8"
        else {"dtype": plan.dtype, "scale": 1.0, "offset": 0.0, "meaning": "probability"}
    )
    meta: dict[str, Any] = {
        "predict": {
            "identity": plan.identity,
            "settings": plan.settings,
            "model": {"checksum": info.key, "path": info.path, "config": info.config, **info.meta},
            "roi": [list(r) for r in plan.roi],
            **({"parts": int(plan.settings["part"].split("/")[1])} if plan.settings.get("part") else {}),
        },
        "values": values,
    }
    if info.convention is not None:  # the model's meaning, stored as this dtype
        meta["convention"] = Convention.from_dict(info.convention).for_dtype(plan.dtype).to_dict()
    return meta


def create_outputs(plan: Plan, info: ModelInfo, source: Volume, options: PredictOptions) -> None:
    """Create the output (and mask) volumes unless an identical run already did."""
    prov = provenance(
        sources=[plan.image] + ([info.path] if info.path else []),
        config={"stage": "predict", **plan.settings},
    )
    extra = _metadata(plan, info)
    if info.offsets:  # an affinity model: a channel volume that records its offsets
        extra["offsets"] = [list(o) for o in info.offsets]
    kind = "affinity" if info.offsets else "probability"
    targets = [(location(plan.out), plan.dtype, kind, extra)]
    if plan.mask:
        mask_extra = {k: v for k, v in extra.items() if k != "convention"}  # 0 / 1, not probabilities
        mask_extra["values"] = {"dtype": "uint8", "meaning": f"probability >= {options.threshold}"}
        targets.append((location(plan.mask), "uint8", "mask", mask_extra))
    parts = options.part_of[1] if options.part_of else None
    for path, dtype, kind, meta in targets:
        with creating(path):  # the jobs of a job array start at once: one creates, the others wait
            if not options.overwrite and path.exists() and (path / "zarr.json").exists():
                _check_parts(_check_identity(path, plan.identity), parts)  # made meanwhile by another job?
                continue  # an identical run's output: resume it
            channels = len(info.offsets) if info.offsets and kind == "affinity" else None
            _create(plan, source, path, dtype, kind, meta, prov, channels)


def _create(
    plan: Plan, source: Volume, path: Path, dtype: str, kind: str, meta: dict[str, Any], prov: Any,
    channels: int | None = None,
) -> None:  # fmt: skip
    vol = create_volume(
        path,
        plan.out_shape,
        dtype,
        plan.chunks,
        voxel_size=source.voxel_size,
        unit=source.unit,
        kind=kind,
        overwrite=True,
        provenance_block=prov,
        extra=meta,
        channels=channels,
    )
    add_translation(vol, [a for a, _ in plan.roi], source.voxel_size)


def _check_parts(vol: Volume, parts: int | None) -> None:
    """Refuse a ``--part K/N`` job whose N differs from the one the output is being written in."""
    recorded = (vol.meta.get("predict") or {}).get("parts")
    if parts is not None and recorded is not None and int(recorded) != parts:
        raise OptionError(
            f"--part .../{parts}: {vol.path} is being written in {recorded} parts; use --part K/{recorded}"
        )


def add_translation(vol: Volume, start: Sequence[int], voxel_size: Sequence[float]) -> None:
    """Place a ROI output where it lies in the source (OME translation), for viewers."""
    if not any(start):
        return
    ome = dict(vol.group.attrs["ome"])
    for dataset in ome["multiscales"][0]["datasets"]:
        dataset["coordinateTransformations"].append(
            {
                "type": "translation",
                "translation": [float(a * v) for a, v in zip(start, voxel_size, strict=True)],
            }
        )
    vol.group.attrs.update({"ome": ome})


def finish(plan: Plan) -> str:
    """Mark the outputs complete when every chunk is done; return the status."""
    outputs = [open_volume(plan.out, mode="r+", channels=True)] + (
        [open_volume(plan.mask, mode="r+")] if plan.mask else []
    )
    if all(len(v.done_blocks()) == v.n_blocks for v in outputs):
        for v in outputs:
            if not v.complete:
                v.mark_complete()
        return "complete"
    return "incomplete"
