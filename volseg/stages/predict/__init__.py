"""Predict: a dask graph over output blocks -> model -> probability volume; schedulers; resume.

The composition
---------------
1. **Plan** (:func:`plan_prediction`; the pure arithmetic in :mod:`.plan`, over
   :mod:`volseg.core.tiling`): the output volume has the ROI's shape and is stored in chunks; chunks
   are grouped into *blocks* (the unit of work of one task), each chunk in exactly one block. An
   output from an identical earlier run is resumed (:mod:`.outputs`).
2. **Graph**: one ``dask.delayed`` task per block that still has a chunk without a completion
   marker (done blocks are not in the graph). Each task (:func:`.worker.run_block`) reads its own
   input window straight from the image volume (so no image data travels through the scheduler),
   runs :func:`volseg.nn.inference.infer_padded`, crops, converts and writes each of its chunks once
   with :meth:`volseg.storage.volumes.Volume.write_block`, which records a chunk as done only after its
   data is stored. A task returns a few numbers, never arrays.
3. **Run** (:mod:`.schedulers`) on dask's local schedulers (threads, processes, synchronous) or a
   ``dask.distributed`` cluster (a running scheduler, or a ``LocalCluster`` started here).

Seam-free by construction: a block's window is its inner region extended down to the global
pooling grid, plus the halo on each side, mirrored at the volume's edges exactly as
:func:`volseg.nn.inference.infer_image` pads a whole section (see :mod:`volseg.core.tiling`).

The model is loaded once per worker process (a module-level cache keyed by the model file's
checksum), never pickled into tasks; torch's thread count is set so that dask's parallel
tasks times torch's threads do not exceed the cores.

The modules: :mod:`.options` (:class:`PredictOptions`), :mod:`.plan` (pure, no torch),
:mod:`.worker` (the block task), :mod:`.outputs` (creation, resume identity, completion),
:mod:`.schedulers` (local and distributed runs); this module is the API.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volseg.core import preempt
from volseg.core.progress import Progress
from volseg.errors import IncompleteRunError, InputError, OptionError, VolsegError, VolsegWarning
from volseg.stages.predict.options import DTYPES, SCHEDULERS, PredictOptions
from volseg.stages.predict.outputs import create_outputs, existing_done, finish, identity, mask_path
from volseg.stages.predict.plan import (
    Job,
    ModelInfo,
    Plan,
    check_tile_halo,
    choices_open,
    estimate_memory,
    lay_out,
    make_plan,
    resolve_roi,
)
from volseg.stages.predict.schedulers import execute
from volseg.stages.predict.worker import (
    BlockStatus,
    model_info,
    predict_block,
    read_window,
    registered,
    run_block,
    worker_device,
)
from volseg.storage.files import json_ready
from volseg.storage.volumes import Volume, open_volume

if TYPE_CHECKING:
    from torch import nn

PathLike = str | os.PathLike[str]

__all__ = [
    "DTYPES",
    "SCHEDULERS",
    "BlockStatus",
    "Job",
    "ModelInfo",
    "Plan",
    "PredictOptions",
    "PredictResult",
    "PredictWarning",
    "estimate_memory",
    "mask_path",
    "plan_prediction",
    "predict",
    "predict_block",
    "read_window",
    "run_block",
    "worker_device",
]


class PredictWarning(VolsegWarning):
    """Something about the inputs the user should know before the run (e.g. a brightness shift)."""


@dataclass(frozen=True)
class PredictResult:
    """Summary of a run (what the CLI prints at the end)."""

    out: str
    mask: str | None
    status: str
    blocks_total: int
    blocks_skipped: int
    blocks_written: int
    blocks_failed: int
    voxels: int
    seconds: float
    compute_seconds: float
    plan: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    #: Of the blocks written, those whose input held one value: background, no forward pass.
    blocks_empty: int = 0

    @property
    def mvox_per_s(self) -> float:
        """Output voxels per second while blocks ran (cluster start-up excluded)."""
        return self.voxels / self.compute_seconds / 1e6 if self.compute_seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.blocks_written} blocks written"
            + (f" ({self.blocks_empty} empty: background, not computed)" if self.blocks_empty else "")
            + f", {self.blocks_skipped} already done, "
            f"{self.blocks_failed} failed of {self.blocks_total}; {self.voxels / 1e6:.1f} Mvox in "
            f"{self.compute_seconds:.1f} s ({self.mvox_per_s:.2f} Mvox/s; {self.seconds:.1f} s in all) "
            f"-> {self.out} ({self.status})"
        )

    def to_dict(self) -> dict[str, Any]:
        return json_ready({**asdict(self), "mvox_per_s": round(self.mvox_per_s, 3)})


# ----------------------------------------------------------------------------- plan
def plan_prediction(
    model: str | os.PathLike[str] | nn.Module,
    image: PathLike,
    out: PathLike,
    options: PredictOptions | None = None,
    **overrides: Any,
) -> Plan:
    """Resolve a run without writing anything: what ``--dry-run`` prints."""
    options = replace(options or PredictOptions(), **overrides)
    return _plan(model, image, out, options)[0]


def _paths(
    model: str | os.PathLike[str] | nn.Module, image: PathLike, out: PathLike, options: PredictOptions
) -> tuple[Path, Path | None, Path]:
    """OUT, the mask and IMAGE, checked (local paths or URLs), and no output that would replace an input."""
    from volseg.storage import paths as checks
    from volseg.storage.paths import location

    out = location(out, "OUT")
    outp = out.resolve()
    mask = mask_path(outp) if options.threshold is not None else None
    model_path = checks.local_path(model, "MODEL") if isinstance(model, (str, os.PathLike)) else None
    image = location(image, "IMAGE")
    inputs = {"input IMAGE": image, "model": model_path}
    if options.tissue_mask:
        inputs["--mask"] = location(options.tissue_mask, "--mask")
    checks.output_not_input({"OUT": out, "mask": mask}, inputs)
    return outp, mask, image


def _open_image(image: Path) -> Volume:
    """The image volume, refused when it records another kind or is unfinished."""
    from volseg.storage import conventions

    source = open_volume(image)  # InputError: missing / not a volume
    conventions.require_kind(
        source,
        ("image",),
        "predict's IMAGE",
        "pass the image volume (from 'volseg convert' or 'volseg synth')",
        unknown_ok=True,
    )
    conventions.require_complete(source, "IMAGE")
    return source


def _device_precision(options: PredictOptions) -> tuple[str, str]:
    """The device type and precision the plan assumes."""
    from volseg.nn.runtime import resolve_device, resolve_precision

    if options.remote and options.device != "auto":
        # a cluster's workers check and resolve their own devices (this machine may have no GPU)
        device = options.device.split(":")[0]
        guess = "fp32" if device == "cpu" else "bf16"
        return device, options.precision if options.precision != "auto" else guess
    device = resolve_device(options.device).type  # as resolved here; workers resolve "auto" themselves
    return device, resolve_precision(device, options.precision)


def _plan(
    model: str | os.PathLike[str] | nn.Module, image: PathLike, out: PathLike, options: PredictOptions
) -> tuple[Plan, ModelInfo, nn.Module, Volume]:
    """Check the inputs, load the model, read what an earlier run did, and plan (nothing written)."""
    from volseg.nn.inference import DEFAULT_EDGE
    from volseg.nn.intensity import image_for_model
    from volseg.nn.runtime import check_device

    if not options.remote:  # a cluster's workers are probed instead
        check_device(options.device)
    outp, mask, image_path = _paths(model, image, out, options)
    info, module = model_info(model)
    if info.offsets:
        _check_affinity_options(options, len(info.offsets))
    source = _open_image(image_path)
    factors = _check_tissue_mask(options.tissue_mask, source.shape) if options.tissue_mask else (1, 1, 1)
    sizes = check_tile_halo(options, info, DEFAULT_EDGE)
    roi = resolve_roi(options.roi, source.shape)
    fit = image_for_model(
        source,
        (getattr(module, "volseg_meta", None) or {}).get("extra") or {},
        info.normalization,
        roi=roi,
        rescale=options.rescale,
        model_name=f"the model {info.path}" if info.path else "the model",
    )
    info = replace(info, normalization=fit.normalization)
    device, precision = _device_precision(options)
    options = _as_resumed(options, outp, mask)
    sizes = (options.tile, *sizes[1:])
    speeds, measured = _speeds(options, info, module, roi, sizes[1], device, precision)
    layout = lay_out(
        options, info, roi, source.chunks, source.dtype.itemsize, sizes, device, precision,
        speeds, source.shape, measured,
    )  # fmt: skip
    ident = identity(info, source, layout, options)
    done = existing_done(outp, mask, ident, options.overwrite)
    names: Mapping[str, str | None] = {
        "image": str(source.path.resolve()),
        "out": str(outp),
        "mask": str(mask) if mask else None,
    }
    plan = make_plan(options, info, names, source.shape, layout, ident, done, fit.warnings)
    plan = replace(plan, mask_factors=factors)
    return plan, info, module, source


def _check_affinity_options(options: PredictOptions, channels: int) -> None:
    """An affinity model writes its channels as they are: no mask, class, TTA or other activation."""
    refused = (
        (options.threshold is not None, "--threshold", "threshold the affinities in 'volseg segment'"),
        (options.channel is not None, "--channel", "every channel is written"),
        (options.tta, "--tta", "flips and rotations would move the offsets"),
        (options.activation not in ("auto", "sigmoid"), f"--activation {options.activation}",
         "affinities are one sigmoid per channel"),
    )  # fmt: skip
    for bad, flag, why in refused:
        if bad:
            raise OptionError(f"{flag}: not with an affinity model ({channels} channels: {why})")


def _check_tissue_mask(path: str, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The ``--mask`` volume checked (complete, the image's shape or coarser by a whole factor per axis);
    the image voxels per mask voxel along (z, y, x)."""
    from volseg.storage import conventions

    mask = open_volume(path)  # InputError: missing / not a volume
    conventions.require_complete(mask, "--mask")
    fix = "pass a mask of the image's shape or a level of its pyramid (coarser by whole factors)"
    if len(mask.shape) != len(image_shape):
        raise InputError(f"--mask {path}: {len(mask.shape)}-D, the image is {len(image_shape)}-D; {fix}")
    factors = tuple(max(1, round(i / m)) for i, m in zip(image_shape, mask.shape, strict=True))
    if any(-(-i // f) != m for i, f, m in zip(image_shape, factors, mask.shape, strict=True)):
        raise InputError(
            f"--mask {path}: shape {' x '.join(map(str, mask.shape))} does not map onto the image's "
            f"{' x '.join(map(str, image_shape))} by whole factors; {fix}"
        )
    return factors  # type: ignore[return-value]


def _as_resumed(options: PredictOptions, out: Path, mask: Path | None) -> PredictOptions:
    """``options`` with the tile and backend of the run that ``out`` comes from, where they were left open.

    An interrupted run resumes with what it chose even when the choice would now differ (speeds measured
    since): its chunks must all come from one tile and runtime.
    """
    if options.overwrite or (options.tile is not None and options.backend != "auto"):
        return options
    for path in [out] + ([mask] if mask else []):
        try:
            prior = (open_volume(path, channels=True).meta.get("predict") or {}).get("identity") or {}
        except VolsegError:
            continue
        if prior.get("tile") is not None:
            tile = options.tile if options.tile is not None else int(prior["tile"])
            backend = prior.get("backend", "torch") if options.backend == "auto" else options.backend
            return replace(options, tile=tile, backend=backend)
    return options


def _speeds(
    options: PredictOptions,
    info: ModelInfo,
    module: nn.Module,
    roi: Any,
    halo: int,
    device: str,
    precision: str,
) -> tuple[dict[Any, float] | None, str]:
    """Speeds measured on this machine for the choices ``options`` leave open, and whence (cache / probe).

    From the cache (:mod:`volseg.nn.speeds`); a run of at least :data:`volseg.nn.speeds.PROBE_MIN_VOXELS`
    output voxels without cached speeds measures them first (about a minute) and caches them.
    """
    import math

    from volseg.nn import speeds as sp

    if not choices_open(options, device):
        return None, "default"
    backends = sp.usable_backends(precision) if options.backend == "auto" else [options.backend]
    tiles = sp.TILES if options.tile is None else (options.tile,)
    wanted = sp.candidates(backends, tiles)
    key = sp.speed_key(info.config, precision)
    found = sp.cached_speeds(key)
    speeds = {c: found[c] for c in wanted if c in found}
    if speeds:
        return speeds, "cache"
    if math.prod(b - a for a, b in roi) < sp.PROBE_MIN_VOXELS:
        return None, "default"
    measured = sp.probe(module, wanted, halo, precision)
    sp.store_speeds(key, measured, {"model": info.path, "architecture": info.config})
    return measured, "probe"


# ------------------------------------------------------------------------------ run
def predict(
    model: str | os.PathLike[str] | nn.Module,
    image: PathLike,
    out: PathLike,
    options: PredictOptions | None = None,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    **overrides: Any,
) -> PredictResult | Plan:
    """Predict a probability volume from an image volume, block by block with a halo.

    Parameters
    ----------
    model
        A model file written by ``volseg train`` (any scheduler), or a loaded model (threads or
        synchronous scheduler only: it cannot be shipped to other processes).
    image
        The image volume (OME-Zarr, ``(Z, Y, X)``).
    out
        The probability volume to write; resumed when it exists from an identical run.
    options
        :class:`PredictOptions`; keyword ``overrides`` replace single fields
        (``volseg.predict(m, img, out, tile=512, scheduler="processes")``).
    dry_run
        Return the :class:`Plan` without writing anything, with a time estimate from a probe of about
        a second (:mod:`volseg.stages.predict.estimate`).
    progress
        Where to report blocks done, Mvox/s and the plan's notes (:mod:`volseg.core.progress`) once
        the blocks start; ``None``: nothing is reported. The plan's warnings are issued as
        :class:`PredictWarning` (:func:`warnings.warn`).

    Returns
    -------
    PredictResult
        Counts, voxels, seconds and status; or the :class:`Plan` with ``dry_run``.

    Raises
    ------
    VolsegError
        Bad input (exit 2 in the CLI): model, image, tile / halo, ROI, an output from another run,
        a scheduler that does not answer.
    IncompleteRunError
        Some blocks failed after their retries; they are not recorded as done (exit 1).
    """
    options = replace(options or PredictOptions(), **overrides)
    plan, info, module, source = _plan(model, image, out, options)
    if dry_run:
        from volseg.stages.predict.estimate import with_estimate

        return with_estimate(plan, module) if plan.pending else plan
    for warning in plan.warnings:
        warnings.warn(warning, PredictWarning, stacklevel=2)
    if info.path is None and plan.scheduler not in ("threads", "synchronous"):
        raise OptionError(
            "an in-memory model runs only with --scheduler threads or synchronous; "
            "pass the model file to use processes or a cluster"
        )
    create_outputs(plan, info, source, options)
    started = time.perf_counter()
    with registered(info, module), preempt.stop_on_signals():  # SIGTERM / SIGUSR1: stop taking blocks
        results, compute_seconds = execute(plan, info, options, progress)
    return _report(plan, results, time.perf_counter() - started, compute_seconds)


def _report(plan: Plan, results: list[BlockStatus], seconds: float, compute_seconds: float) -> PredictResult:
    """The result; raises :class:`IncompleteRunError` (carrying it) when blocks failed."""
    failed = [r for r in results if r.error]
    stopped = [r for r in results if r.stopped]
    result = PredictResult(
        out=plan.out,
        mask=plan.mask,
        status=finish(plan),
        blocks_total=plan.n_blocks,
        blocks_skipped=plan.blocks_done,
        blocks_written=len(results) - len(failed) - len(stopped),
        blocks_failed=len(failed),
        blocks_empty=sum(r.empty for r in results if not r.error),
        voxels=sum(r.voxels for r in results if not r.error),
        seconds=seconds,
        compute_seconds=compute_seconds,
        plan=plan.to_dict(),
        errors=[f"block {'.'.join(map(str, r.index))}: {r.error}" for r in failed],
    )
    damaged = [r for r in failed if r.bad_input]
    if damaged:
        message = (
            f"{len(damaged)} of {plan.n_blocks} blocks could not read their input and are not marked done "
            f"(block {'.'.join(map(str, damaged[0].index))}: {damaged[0].error}); {plan.out} stays "
            "incomplete, and rerunning resumes it once the input is repaired"
        )
    elif failed:
        message = (
            f"{len(failed)} of {plan.n_blocks} blocks failed after {plan.settings['retries']} retries and "
            f"are not marked done ({result.errors[0]}); {plan.out} stays incomplete, rerun the same "
            f"command to retry them"
        )
    elif stopped:
        left = plan.n_blocks - plan.blocks_done - result.blocks_written
        error: VolsegError = preempt.Preempted(
            f"{plan.out}: stopped by {preempt.stop_signal()}: {result.blocks_written} blocks written and "
            f"recorded, {len(stopped)} not started ({left} left); rerun the same command to resume"
        )
        error.result = result  # type: ignore[attr-defined]
        raise error
    else:
        return result
    error = IncompleteRunError(message)
    error.result = result  # type: ignore[attr-defined]
    raise error
