"""The whole chain on an embedded synthetic stack (or on TIFF stacks given with ``data``).

synth -> TIFF stacks -> convert -> train -> predict -> segment -> evaluate -> preview,
everything under one output folder, with the time each stage took and the scores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from volseg.core.progress import Progress, Tracker
from volseg.errors import InputError, OptionError, OutputError
from volseg.storage.files import atomic_write_json
from volseg.storage.paths import local_path, make_folder, output_not_input

__all__ = ["DemoOptions", "DemoResult", "demo"]


@dataclass(frozen=True)
class DemoOptions:
    """Settings of ``volseg demo``.

    Parameters
    ----------
    shape
        Synthetic stack ``(Z, Y, X)``; the last ``val_sections`` sections are held out.
    seed
        Seed of the synthetic stack and of training.
    steps
        Training steps: the budget is work, not time, so the same command and seed give the same model
        on any machine of a CPU class (800 steps of 8 x 128^2: about 2 minutes on 2 AVX2 cores).
    minutes
        Optional wall-clock cap on training (whichever ends first); with it the model depends on the
        machine's speed.
    val_sections
        Sections held out for validation and scored at the end.
    base_channels, depth, patch_size, batch_size
        Model and training patch settings.
    data
        ``(image.tif, labels.tif)``: use these stacks (ISBI convention: 0 = membrane) instead.
    """

    shape: tuple[int, int, int] = (12, 512, 512)
    seed: int = 0
    steps: int = 800
    minutes: float | None = None
    val_sections: int = 2
    base_channels: int = 8
    depth: int = 3
    patch_size: int = 128
    batch_size: int = 8
    data: tuple[str, str] | None = None

    @classmethod
    def quick(cls) -> DemoOptions:
        """A reduced run (well under a minute on 2 cores) for tests and smoke checks."""
        return cls(
            shape=(4, 128, 128),
            steps=40,
            val_sections=1,
            base_channels=8,
            depth=3,
            patch_size=64,
            batch_size=4,
        )


@dataclass
class DemoResult:
    """Where everything went, how long each stage took, and the scores."""

    out: str
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    #: Whether the model beat the trivial answer by the margin of :func:`learned` (None: not scored).
    learned: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _write_tiff_stack(volume_path: Path, tif: Path) -> None:
    """Write a volume to a multi-page TIFF section by section (bounded memory)."""
    import tifffile

    from volseg.storage.volumes import open_volume

    vol = open_volume(volume_path)
    with tifffile.TiffWriter(tif, bigtiff=vol.array.nbytes > 2**31) as writer:
        for z in range(vol.shape[0]):
            writer.write(np.asarray(vol.array[z]), contiguous=True, metadata=None)


class _Stages:
    """Runs named stages, timing each and reporting progress lines."""

    def __init__(self, result: DemoResult, progress: Progress | None):
        self.result, self.progress = result, progress
        self.tracker = Tracker(progress, "demo", None, "stages")

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.tracker.note(f"[{name}] ...")
        t0 = time.perf_counter()
        value = fn()
        self.result.seconds[name] = round(time.perf_counter() - t0, 2)
        self.tracker.note(f"[{name}] done in {self.result.seconds[name]:.1f} s")
        self.tracker.advance()
        return value


def _check_options(opts: DemoOptions) -> None:
    if len(opts.shape) != 3 or min(opts.shape) < 1:
        raise OptionError(f"--shape {opts.shape}: expected three positive sizes Z,Y,X")
    if opts.data is None and opts.shape[0] <= opts.val_sections:
        raise OptionError(
            f"--shape {','.join(map(str, opts.shape))}: needs more than {opts.val_sections} sections "
            "(the last ones are held out for validation)"
        )
    if opts.minutes is not None and not 0 < opts.minutes <= 7 * 24 * 60:
        raise OptionError(f"--minutes {opts.minutes}: use a positive number of minutes (up to a week)")
    if not 1 <= opts.steps <= 10**9:
        raise OptionError(f"--steps {opts.steps}: use 1 or more training steps")
    if not 0 <= opts.seed < 2**32:
        raise OptionError(f"--seed {opts.seed}: use 0 to 2**32 - 1")
    if opts.data is None and (max(opts.shape) > 65536 or min(opts.shape[1:]) < opts.patch_size):
        raise OptionError(
            f"--shape {','.join(map(str, opts.shape))}: sections must be {opts.patch_size} to 65536 px on "
            f"each side (the training patch is {opts.patch_size} px), e.g. 12,512,512"
        )
    _train_config(Path("demo-out"), opts, "0:1")  # the training options, checked before anything runs
    if opts.data is not None:
        for p in opts.data:
            if not Path(p).is_file():
                raise InputError(f"--data {p}: no such file; give an image and a label TIFF stack")


def demo(
    out: str | os.PathLike = "demo-out",
    options: DemoOptions | None = None,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> DemoResult:
    """Run the whole chain and write every output under ``out``.

    Parameters
    ----------
    out
        Output folder; refused when it holds an earlier demo unless ``overwrite``.
    options
        :class:`DemoOptions` (default: a 12 x 512 x 512 synthetic stack, 800 training steps).
    overwrite
        Replace an existing demo folder.
    progress
        Receives an update per stage started and finished (:mod:`volseg.core.progress`); the CLI
        prints their messages, ``[train] ...`` and ``[train] done in 61.2 s``.

    Returns
    -------
    DemoResult
        Output paths, seconds per stage, scores; also written to ``out/summary.json``.
    """
    opts = options or DemoOptions()
    _check_options(opts)
    out = local_path(out, "--out")
    data = [("--data image", opts.data[0]), ("--data labels", opts.data[1])] if opts.data else []
    output_not_input({"--out": out}, data)  # --overwrite empties --out: never over the data
    _prepare(out, overwrite)
    result = DemoResult(out=str(out))
    stages = _Stages(result, progress)
    image_tif, labels_tif, cells_truth = _source(out, opts, stages, result)
    _convert(out, image_tif, labels_tif, stages, result)
    z = _zsize(out)
    val = f"{z - opts.val_sections}:{z}" if opts.data is None else f"{max(z - opts.val_sections, 1)}:{z}"
    _train(out, opts, val, stages, result)
    _predict_segment(out, stages, result)
    _evaluate(out, val, cells_truth, stages, result)
    _preview(out, val, stages, result)
    atomic_write_json(out / "summary.json", result.to_dict())
    result.outputs["summary"] = str(out / "summary.json")
    return result


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(
                f"{out}: already exists and is not empty; pass --overwrite or choose another --out"
            )
        if not (out / "summary.json").exists() and not (out / "image.zarr").exists():
            raise OutputError(
                f"{out}: is not a volseg demo folder; refusing to delete it, choose another --out"
            )
        import shutil

        shutil.rmtree(out)
    make_folder(out)


def _source(
    out: Path, opts: DemoOptions, stages: _Stages, result: DemoResult
) -> tuple[Path, Path, Path | None]:
    if opts.data is not None:
        return Path(opts.data[0]), Path(opts.data[1]), None
    from volseg.stages.synth import synth

    stages.run("synth", lambda: synth(out / "synth", shape=opts.shape, seed=opts.seed))
    image_tif, labels_tif = out / "synth" / "image.tif", out / "synth" / "labels.tif"
    stages.run(
        "tiff",
        lambda: (
            _write_tiff_stack(out / "synth" / "image.zarr", image_tif),
            _write_tiff_stack(out / "synth" / "membranes.zarr", labels_tif),
        ),
    )
    result.outputs.update(
        image_tif=str(image_tif), labels_tif=str(labels_tif), cells_truth=str(out / "synth" / "cells.zarr")
    )
    return image_tif, labels_tif, out / "synth" / "cells.zarr"


def _convert(out: Path, image_tif: Path, labels_tif: Path, stages: _Stages, result: DemoResult) -> None:
    from volseg.stages.convert import convert

    stages.run(
        "convert",
        lambda: (
            convert(image_tif, out / "image.zarr"),
            convert(labels_tif, out / "labels.zarr", kind="label"),
        ),
    )
    result.outputs.update(image=str(out / "image.zarr"), labels=str(out / "labels.zarr"))


def _zsize(out: Path) -> int:
    from volseg.storage.volumes import open_volume

    return open_volume(out / "image.zarr").shape[0]


def _train(out: Path, opts: DemoOptions, val: str, stages: _Stages, result: DemoResult) -> None:
    from volseg.stages.train import train

    cfg = _train_config(out, opts, val)
    res = stages.run("train", lambda: train(config=cfg, progress=stages.progress))
    result.train = {"steps": res.steps, "seconds": round(res.seconds, 1), "best": _plain(res.metrics)}
    result.outputs.update(
        model=str(res.model), train_log=str(out / "model.log.jsonl"), curves=str(out / "model.curves.png")
    )


def _train_config(out: Path, opts: DemoOptions, val: str) -> Any:
    """The training run of the demo (its options are checked when it is made)."""
    from volseg.stages.train import resolve_config

    return resolve_config(
        image=str(out / "image.zarr"),
        labels=str(out / "labels.zarr"),
        output=str(out / "model.pt"),
        foreground=(0,),
        val_slices=val,
        time_limit=None if opts.minutes is None else f"{opts.minutes * 60:.0f}",
        steps=opts.steps,
        base_channels=opts.base_channels,
        depth=opts.depth,
        patch_size=opts.patch_size,
        batch_size=opts.batch_size,
        seed=opts.seed,
        warmup_steps=min(50, opts.steps // 5 + 1),
        val_every=max(25, opts.steps // 4),
    )


def _predict_segment(out: Path, stages: _Stages, result: DemoResult) -> None:
    from volseg.stages.predict import predict
    from volseg.stages.segment import segment

    stages.run("predict", lambda: predict(str(out / "model.pt"), out / "image.zarr", out / "prob.zarr"))
    stages.run("segment", lambda: segment(out / "prob.zarr", out / "cells.zarr"))
    result.outputs.update(prob=str(out / "prob.zarr"), cells=str(out / "cells.zarr"))


def _evaluate(out: Path, val: str, cells_truth: Path | None, stages: _Stages, result: DemoResult) -> None:
    from volseg.stages.evaluate import evaluate

    def run() -> None:
        prob = evaluate(
            out / "prob.zarr", out / "labels.zarr", sections=val, json_path=out / "report_prob.json"
        )
        truth = cells_truth or out / "labels.zarr"
        cells = evaluate(out / "cells.zarr", truth, sections=val, json_path=out / "report_cells.json")
        result.scores = {
            "sections": val,
            "probabilities": _plain(prob.overall),
            "cells": _plain(cells.overall),
            "trivial": trivial_scores(_plain(prob.overall)),
        }
        result.learned = learned(result.scores["probabilities"], result.scores["trivial"])

    stages.run("evaluate", run)
    result.outputs.update(
        report_prob=str(out / "report_prob.json"), report_cells=str(out / "report_cells.json")
    )


#: The demo's model learned when its pixel error is at most this share of the trivial answer's.
LEARNED_MARGIN = 0.75


def trivial_scores(prob: dict[str, Any]) -> dict[str, float]:
    """The scores of the trivial answer "everything is cell" (membrane probability 0 everywhere).

    Its pixel error is the membrane fraction of the scored truth (``(tp + fn) / all``), its
    membrane Dice 0 and its ISBI pixel error (1 - F) 1.
    """
    counts = [prob.get(k) for k in ("tp", "fp", "fn", "tn")]
    if not all(isinstance(c, int) for c in counts) or not sum(counts):
        return {}
    tp, fp, fn, tn = counts
    return {"pixel_error": (tp + fn) / (tp + fp + fn + tn), "pixel_error_isbi": 1.0, "dice": 0.0}


def learned(prob: dict[str, Any], trivial: dict[str, float]) -> bool | None:
    """True when the model's pixel error is at most :data:`LEARNED_MARGIN` of the trivial answer's and
    its membrane Dice at least 0.5; None when either is unknown."""
    error, dice, base = prob.get("pixel_error"), prob.get("dice"), trivial.get("pixel_error")
    if not all(isinstance(v, (int, float)) for v in (error, dice, base)):
        return None
    return bool(error <= LEARNED_MARGIN * base and dice >= 0.5)


def _preview(out: Path, val: str, stages: _Stages, result: DemoResult) -> None:
    from volseg.stages.preview import PreviewOptions, preview

    a, b = (int(v) for v in val.split(":"))
    sections: Sequence[int] = list(range(a, b))[:3]

    def run() -> None:
        opts = PreviewOptions(sections=tuple(sections))
        preview(out / "image.zarr", out / "preview_prob.png", overlay=out / "prob.zarr", options=opts)
        preview(out / "image.zarr", out / "preview_cells.png", overlay=out / "cells.zarr", options=opts)

    stages.run("preview", run)
    result.outputs.update(
        preview_prob=str(out / "preview_prob.png"), preview_cells=str(out / "preview_cells.png")
    )


def _plain(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, nested dicts kept, long lists dropped."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if not (isinstance(v, list) and len(v) > 12)}
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj
