"""Train a U-Net on random augmented patches, with validation, checkpoints and exact resume.

Outputs (for ``-o MODEL.pt``)
-----------------------------
``MODEL.pt``
    The best model by validation V_rand (the final one when nothing is held out).
``MODEL.last.pt``
    The last checkpoint: weights plus the training state (optimizer, step, RNG states, best
    score, elapsed time) that ``--resume`` continues from.
``MODEL.log.jsonl``
    One JSON object per line: every step (``"kind": "step"``) and every validation
    (``"kind": "val"``).
``MODEL.curves.png``
    Loss and validation metrics against the step, redrawn at each validation.
``MODEL.config.toml``
    The resolved configuration, readable again with ``--config``.

Reproducibility
---------------
Patch ``n = step * batch_size + i`` comes from ``default_rng([seed, n])`` (see
:mod:`volseg.nn.patches`) whatever the number of DataLoader workers, the model starts from
``torch.manual_seed(seed)``, the learning rate is a pure function of the step (or of the used
fraction of the time budget), and a checkpoint holds the optimizer and torch RNG states: on
CPU in fp32, ``N`` steps in one go and ``k`` + resume + ``N - k`` give bitwise equal weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from volseg.core.augment import AugmentConfig
from volseg.errors import InputError, ModelError, OptionError, OutputError
from volseg.nn.inference import PAD_MODE, InferOptions, infer_padded, pad_block
from volseg.nn.model import (
    UNet,
    UNetConfig,
    autocast_context,
    check_size,
    read_model_file,
    resolve_device,
    resolve_precision,
    save_model,
)
from volseg.nn.patches import (
    BatchIndices,
    IntensityStats,
    LabelSummary,
    PatchConfig,
    PatchDataset,
    intensity_stats,
    positive_mask,
    scan_labels,
    split_sections,
)
from volseg.storage.conventions import require_complete, require_kind
from volseg.storage.paths import check_device, local_path, output_not_input
from volseg.storage.volumes import open_volume, provenance

__all__ = [
    "FOREGROUND_KINDS",
    "LOSSES",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "load_config_file",
    "lr_factor",
    "output_paths",
    "parse_duration",
    "resolve_config",
    "train",
]

LOSSES = ("bce_dice", "weighted_bce", "bce", "dice")
FOREGROUND_KINDS = ("boundary", "object")
DEVICES = ("auto", "cpu", "cuda", "mps")
DEFAULT_STEPS = 2000
#: Options a resumed run may change; any other option keeps the checkpoint's value.
RESUME_MAY_CHANGE = frozenset(
    {
        "image",
        "labels",
        "output",
        "steps",
        "time_limit",
        "workers",
        "val_every",
        "device",
        "progress",
        "resume",
        "overwrite",
    }
)


# ============================================================================ config
@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (``volseg train``; the TOML keys of ``--config``).

    Parameters
    ----------
    image, labels
        Image and label volumes ``(Z, Y, X)`` of equal shape (OME-Zarr, as written by ``volseg convert``).
    output
        The model file to write (``MODEL.pt``); the other outputs go beside it.
    foreground
        Label values of the positive class (ISBI 2012 membranes: ``(0,)``).
    foreground_kind
        ``"boundary"`` when the positive class marks membranes / boundaries between cells (the
        ISBI metrics score ``p`` as membrane probability), ``"object"`` when it marks the
        objects themselves (they score ``1 - p``, and objects are the cells).
    label_values
        The values a label volume may hold; any other value is refused. ``None``: not checked.
    val_slices, val_fraction
        Held-out sections, ``"25:30"`` (wins) or the last ``ceil(fraction * Z)`` sections;
        ``val_fraction = 0`` trains on everything without validation.
    patch_size, batch_size
        Square training patch side (a multiple of ``2**depth``) and patches per step.
    steps, time_limit
        Length of the run: a number of steps, a wall-clock budget (``"20m"``, ``"1h30m"``,
        seconds), or both (whichever ends first). Neither: :data:`DEFAULT_STEPS`.
    lr, weight_decay, warmup_steps
        AdamW; linear warm-up (``warmup_steps`` or a tenth of the run), then cosine decay to 0.
    augment, augment_prob
        Preset (``none``, ``light``, ``default``, ``heavy``) and per-transform probabilities
        ``"elastic=0.5,noise=0"`` (see :mod:`volseg.core.augment`).
    loss, w0, sigma
        ``bce_dice`` (default), ``weighted_bce`` (U-Net border weights ``w0``, ``sigma``),
        ``bce`` or ``dice``.
    base_channels, depth, norm, dropout, upsample, context
        The :class:`volseg.nn.model.UNetConfig`; ``context`` > 0 feeds ``2 * context + 1`` sections.
    device, precision
        ``auto`` | ``cpu`` | ``cuda`` | ``mps`` (or ``cuda:1``); ``auto`` | ``bf16`` | ``fp16`` | ``fp32``.
    workers
        DataLoader worker processes; ``-1`` chooses (one or two on CPU, up to 8 with a GPU).
    seed
        Seeds the model initialisation and every patch.
    val_every
        Validate and checkpoint every this many steps (and at the end).
    min_foreground, max_attempts
        Rejection sampler: redraw patches with a smaller positive fraction, at most this many draws.
    cache_gb
        Volumes (and weight maps) up to this size are held in memory (per worker).
    resume, overwrite, progress
        Continue from ``MODEL.last.pt``; replace existing outputs; show a progress bar.
    """

    image: str | None = None
    labels: str | None = None
    output: str | None = None
    foreground: tuple[int, ...] = (0,)
    foreground_kind: str = "boundary"
    label_values: tuple[int, ...] | None = None
    val_slices: str | None = None
    val_fraction: float = 0.1
    patch_size: int = 256
    batch_size: int = 8
    steps: int | None = None
    time_limit: str | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    augment: str = "default"
    augment_prob: str = ""
    loss: str = "bce_dice"
    w0: float = 10.0
    sigma: float = 5.0
    base_channels: int = 16
    depth: int = 4
    norm: str = "batch"
    dropout: float = 0.0
    upsample: str = "transpose"
    context: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int = -1
    seed: int = 0
    val_every: int = 200
    min_foreground: float = 0.0
    max_attempts: int = 10
    cache_gb: float = 2.0
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name)))
        self._check()

    def _check(self) -> None:
        def need(ok: bool, name: str, fix: str) -> None:
            if not ok:
                raise OptionError(f"{_flag(name)} {getattr(self, name)!r}: {fix}")

        need(len(self.foreground) > 0, "foreground", "give at least one label value, e.g. 0 or 1,2")
        need(
            self.foreground_kind in FOREGROUND_KINDS,
            "foreground_kind",
            f"use one of {', '.join(FOREGROUND_KINDS)}",
        )
        need(
            0.0 <= self.val_fraction < 1.0, "val_fraction", "use a fraction from 0 (no validation) to below 1"
        )
        need(0 < self.patch_size <= 8192, "patch_size", "use a positive size up to 8192, such as 256")
        need(0 < self.batch_size <= 4096, "batch_size", "use 1 to 4096")
        need(self.steps is None or 0 < self.steps <= 10**9, "steps", "use 1 or more (up to 10**9)")
        need(0 < self.lr <= 10, "lr", "use a positive learning rate up to 10, such as 0.001")
        need(0 <= self.weight_decay <= 10, "weight_decay", "use 0 to 10 (0.0001 is usual)")
        need(0 <= self.warmup_steps <= 10**9, "warmup_steps", "use 0 or more")
        need(self.loss in LOSSES, "loss", f"use one of {', '.join(LOSSES)}")
        need(0 <= self.w0 <= 1000, "w0", "use a border weight from 0 to 1000 (10 is usual)")
        need(0 < self.sigma <= 1000, "sigma", "use a border width (px) above 0 up to 1000 (5 is usual)")
        need(
            bool(re.fullmatch(r"(auto|cpu|mps|cuda(:\d+)?)", self.device)),
            "device",
            "use auto, cpu, cuda, cuda:N or mps",
        )
        need(self.precision in ("auto", "bf16", "fp16", "fp32"), "precision", "use auto, bf16, fp16 or fp32")
        need(-1 <= self.workers <= 256, "workers", "use 0 to 256 (-1 chooses)")
        need(0 <= self.seed < 2**63, "seed", "use 0 to 2**63 - 1")
        need(0 < self.val_every <= 10**9, "val_every", "use 1 or more steps")
        need(0.0 <= self.min_foreground <= 1.0, "min_foreground", "use a fraction from 0 to 1")
        need(1 <= self.max_attempts <= 10**6, "max_attempts", "use 1 or more (up to 10**6)")
        need(0 <= self.cache_gb <= 2**20, "cache_gb", "use 0 (no cache) or more GiB")
        if self.time_limit is not None:
            parse_duration(self.time_limit)
        self.augment_config()
        self.model_config()

    # ---------------------------------------------------------------- derived
    def model_config(self) -> UNetConfig:
        return UNetConfig(
            context=self.context,
            base_channels=self.base_channels,
            depth=self.depth,
            norm=self.norm,
            dropout=self.dropout,
            upsample=self.upsample,
        )

    def augment_config(self) -> AugmentConfig:
        config = AugmentConfig.preset(self.augment)
        return config.with_probabilities(self.augment_prob) if self.augment_prob else config

    @property
    def time_limit_seconds(self) -> float | None:
        return None if self.time_limit is None else parse_duration(self.time_limit)

    @property
    def total_steps(self) -> int | None:
        """The step budget: ``steps``, or :data:`DEFAULT_STEPS` when no time limit is set either."""
        if self.steps is None and self.time_limit is None:
            return DEFAULT_STEPS
        return self.steps

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples as lists, unset options as None)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_INT_TUPLES = frozenset({"foreground", "label_values"})
_INTS = frozenset(
    {
        "patch_size",
        "batch_size",
        "steps",
        "warmup_steps",
        "base_channels",
        "depth",
        "context",
        "workers",
        "seed",
        "val_every",
        "max_attempts",
    }
)
_FLOATS = frozenset(
    {"val_fraction", "lr", "weight_decay", "w0", "sigma", "dropout", "min_foreground", "cache_gb"}
)
_BOOLS = frozenset({"resume", "overwrite", "progress"})
_OPTIONAL = frozenset({"image", "labels", "output", "label_values", "val_slices", "steps", "time_limit"})


def _coerce(name: str, value: Any) -> Any:
    """Bring a field value from TOML, CLI text or Python to its declared type, or raise OptionError."""
    if value is None:
        if name in _OPTIONAL:
            return None
        raise OptionError(f"{_flag(name)}: a value is required")
    try:
        if name in _INT_TUPLES:
            items = (
                value.split(",")
                if isinstance(value, str)
                else value
                if isinstance(value, (list, tuple))
                else [value]
            )
            return tuple(_as_int(v) for v in items if str(v).strip())
        if name in _INTS:
            return _as_int(value)
        if name in _FLOATS:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if name in _BOOLS:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(value, bool) or not isinstance(value, (str, int, float, os.PathLike)):
            raise TypeError
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    except (TypeError, ValueError):
        kind = (
            "comma-separated integers"
            if name in _INT_TUPLES
            else "an integer"
            if name in _INTS
            else "a number"
            if name in _FLOATS
            else "true or false"
            if name in _BOOLS
            else "text"
        )
        raise OptionError(f"{_flag(name)} {value!r}: expected {kind}") from None


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        return int(value)
    return int(str(value).strip())


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str | float) -> float:
    """``"20m"``, ``"1h30m"``, ``"45s"``, ``"90"`` (seconds) or a number -> seconds (> 0)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        spec = str(text).strip().lower().replace(" ", "")
        try:
            seconds = float(spec)
        except ValueError:
            match = _DURATION.fullmatch(spec)
            if not spec or not match or not any(match.groups()):
                raise OptionError(
                    f"--time-limit {text!r}: write a duration such as 20m, 1h30m, 45s or seconds (3600)"
                ) from None
            h, m, s = (float(g) if g else 0.0 for g in match.groups())
            seconds = 3600 * h + 60 * m + s
    if not seconds > 0 or not math.isfinite(seconds):
        raise OptionError(f"--time-limit {text!r}: must be a positive duration")
    return seconds


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML file of :class:`TrainConfig` fields (top level, or under a ``[train]`` table).

    Unknown keys are refused with the list of known ones; ``-`` may stand for ``_`` in keys.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib

    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"--config {path}: no such file") from None
    except OSError as exc:
        raise InputError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"--config {path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"--config {path}: not a text file (byte {exc.start} is not UTF-8); a config is a TOML text file"
        ) from None
    except RecursionError:
        raise InputError(f"--config {path}: nested too deeply to be a volseg config") from None
    if set(data) == {"train"} and isinstance(data["train"], dict):
        data = data["train"]
    known = {f.name for f in fields(TrainConfig)}
    result = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise OptionError(
                f"--config {path}: unknown key {key!r}; known keys are {', '.join(sorted(known))}"
            )
        result[name] = value
    return result


def write_config_toml(config: TrainConfig, path: Path) -> None:
    """Write ``config`` as TOML that :func:`load_config_file` reads back (unset options omitted)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string

    lines = ["# volseg train: resolved configuration (volseg train --config THIS_FILE)"]
    skip = ("resume", "overwrite", "progress")  # how to run, not what to train
    lines += [f"{k} = {value(v)}" for k, v in config.to_dict().items() if v is not None and k not in skip]
    _atomic_write_text(path, "\n".join(lines) + "\n")


def resolve_config(
    config: TrainConfig | None = None, file: str | os.PathLike | None = None, **overrides: Any
) -> TrainConfig:
    """Merge defaults < ``config`` < ``file`` (TOML) < ``overrides`` (``None`` values are ignored).

    With ``resume``, the checkpoint's own configuration is the base instead of the defaults,
    and only the options in :data:`RESUME_MAY_CHANGE` may differ from it.
    """
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise OptionError(
            f"train: unknown option {unknown[0]!r}; known options are {', '.join(sorted(known))}"
        )
    given: dict[str, Any] = {} if config is None else dataclasses.asdict(config)
    if file is not None:
        given.update(load_config_file(file))
    given.update({k: v for k, v in overrides.items() if v is not None})
    if not given.get("resume"):
        return TrainConfig(**given)
    if not given.get("output"):
        raise OptionError("--resume needs the output model path (-o MODEL) of the run to continue")
    saved = _saved_config(output_paths(given["output"])["last"])
    explicit = TrainConfig(**{**saved, **given}).to_dict()
    for name, old in saved.items():
        new = explicit.get(name)
        if name not in RESUME_MAY_CHANGE and new != old:
            raise OptionError(
                f"{_flag(name)} {new!r} differs from the checkpoint's {old!r}; a resumed run keeps its "
                "options "
                f"(drop {_flag(name)}, or start a new run with --overwrite)"
            )
    return TrainConfig(**{**saved, **{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE}})


def _saved_config(last: Path) -> dict[str, Any]:
    if not last.exists():
        raise InputError(f"--resume: no checkpoint {last} to continue from; start without --resume")
    data = read_model_file(last)
    if not data.get("training_state"):
        raise InputError(f"--resume: {last} holds no training state; start without --resume")
    known = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in data["train_config"].items() if k in known}


def output_paths(output: str | os.PathLike) -> dict[str, Path]:
    """The files a run writes: ``model``, ``last``, ``log``, ``curves``, ``config`` (beside ``output``)."""
    model = Path(output)
    stem = model.name[: -len(model.suffix)] if model.suffix else model.name
    sibling = lambda suffix: model.with_name(stem + suffix)  # noqa: E731
    return {
        "model": model,
        "last": sibling(".last.pt"),
        "log": sibling(".log.jsonl"),
        "curves": sibling(".curves.png"),
        "config": sibling(".config.toml"),
    }


# ============================================================================== data
@dataclass
class TrainData:
    """Opened, validated inputs of a run."""

    image: Any  # zarr.Array (Z, Y, X)
    labels: Any
    train_sections: tuple[int, ...]
    val_sections: tuple[int, ...]
    stats: IntensityStats
    summary: LabelSummary


def prepare_data(config: TrainConfig, stats: IntensityStats | None = None) -> TrainData:
    """Open and check the volumes, split the sections, measure the intensities.

    Every problem is an :class:`~volseg.errors.VolsegError` of one line: a missing volume,
    shapes that differ, a patch size too large or not valid for the depth, a split that leaves
    no training section, an empty label volume, values outside ``label_values``.
    """
    if not config.image or not config.labels:
        raise OptionError("train: give the IMAGE and LABELS volumes (arguments, or image/labels in --config)")
    image_vol, labels_vol = open_volume(config.image), open_volume(config.labels)
    require_kind(image_vol, ("image",), "train's IMAGE", "pass the image volume", unknown_ok=True)
    require_kind(
        labels_vol,
        ("label", "mask", "image"),
        "train's LABELS",
        "pass annotations (e.g. 'volseg convert labels.tif labels.zarr --kind label')",
        unknown_ok=True,
    )
    for role, vol in (("IMAGE", image_vol), ("LABELS", labels_vol)):
        require_complete(vol, role)
    image, labels = image_vol.array, labels_vol.array
    if tuple(image.shape) != tuple(labels.shape):
        raise InputError(
            f"{config.labels}: label shape {tuple(labels.shape)} differs from image shape "
            f"{tuple(image.shape)} "
            f"({config.image}); labels must cover the image section for section"
        )
    nz, ny, nx = image.shape
    divisor = 2**config.depth
    if config.patch_size > min(ny, nx):
        largest = (min(ny, nx) // divisor) * divisor
        fix = (
            f"use --patch-size {largest} or less"
            if largest
            else f"use a smaller --depth (sections are {ny} x {nx})"
        )
        raise OptionError(
            f"--patch-size {config.patch_size} is larger than the sections ({ny} x {nx}); {fix}"
        )
    check_size(config.patch_size, divisor, "--patch-size")
    train_sections, val_sections = split_sections(
        nz, config.val_slices, None if config.val_slices else config.val_fraction
    )
    summary = scan_labels(labels, config.foreground, None, config.label_values, name=str(config.labels))
    if not any(summary.positive_per_section[z] for z in train_sections):
        raise InputError(
            f"{config.labels}: no training section holds a --foreground value {list(config.foreground)}; "
            "check --foreground and --val-slices"
        )
    if stats is None:
        stats = intensity_stats(image, train_sections, seed=config.seed)
    return TrainData(image, labels, train_sections, val_sections, stats, summary)


def _model_path(output: str | os.PathLike) -> Path:
    """``-o``: a local file path with a name (not ``.``, ``..`` or a path ending in ``/``)."""
    path = local_path(output, "-o")
    if path.name in ("", ".", "..") or os.fspath(output).endswith(("/", os.sep)):
        raise OutputError(f"-o {os.fspath(output)!r}: give a model file path such as model.pt")
    return path


def _check_output(config: TrainConfig) -> dict[str, Path]:
    if not config.output:
        raise OptionError("train: give the output model path with -o MODEL.pt")
    paths = output_paths(_model_path(config.output))
    for name in ("image", "labels"):
        if getattr(config, name):
            local_path(getattr(config, name), name.upper())
    model = paths["model"]
    if model.is_dir():
        raise OutputError(f"{model}: is a folder; give a model file path such as {model / 'model.pt'}")
    if not config.resume and not config.overwrite:
        existing = [p for p in (paths["model"], paths["last"]) if p.exists()]
        if existing:
            raise OutputError(
                f"{existing[0]}: already exists; pass --overwrite to replace it or --resume to continue "
                "that run"
            )
    try:
        model.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=model.parent):
            pass
    except OSError as exc:
        raise OutputError(
            f"{model}: cannot write to {model.parent} ({exc.strerror or exc}); choose a writable location"
        ) from None
    return paths


# ============================================================================== loss
def loss_function(kind: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """``(logits, target, weight) -> scalar loss`` for one of :data:`LOSSES`, computed in fp32."""

    def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits)
        inter = (p * target).sum()
        return 1.0 - (2.0 * inter + 1.0) / (p.sum() + target.sum() + 1.0)

    def loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        logits = logits.float()
        if kind == "dice":
            return soft_dice(logits, target)
        if kind == "weighted_bce":
            return (weight * F.binary_cross_entropy_with_logits(logits, target, reduction="none")).mean()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return bce + soft_dice(logits, target) if kind == "bce_dice" else bce

    return loss


def lr_factor(step: int, progress: float, warmup_steps: int) -> float:
    """Learning-rate multiplier: a linear warm-up, then a cosine from 1 to 0 over the run.

    ``progress`` is the fraction of the run done (of its steps, or of its time budget). The
    warm-up ends after ``warmup_steps`` steps or a tenth of the run, whichever comes first, so
    that short runs still spend most of their time at a useful learning rate.
    """
    warm = min(1.0, max((step + 1) / warmup_steps, 10.0 * progress)) if warmup_steps > 0 else 1.0
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


# ======================================================================== validation
def validation_metrics(prob: np.ndarray, positive: np.ndarray, foreground_kind: str) -> dict[str, float]:
    """Pixel error, Dice and the ISBI 2012 V_rand / V_info of probabilities ``(Z, Y, X)``.

    ``pixel_error`` (the share of misclassified pixels) and ``dice`` are taken at 0.5,
    ``pixel_error_best`` at the best of the thresholds 0.1 .. 0.9; ``pixel_error_isbi`` is the
    challenge's pixel error (1 - the best F-score of cell pixels). The ISBI scores take a
    membrane probability and the membrane truth: with ``foreground_kind="boundary"`` those
    are ``prob`` and ``positive``; with ``"object"`` they are ``1 - prob`` and ``~positive``
    (the objects play the cells).
    """
    from volseg.core.metrics import ConfusionCounts, isbi_scores

    if foreground_kind == "boundary":
        membrane, truth_membrane = prob, positive
    else:
        membrane, truth_membrane = 1.0 - prob, ~positive
    isbi = isbi_scores(membrane, truth_membrane)
    at_half = ConfusionCounts.from_arrays(prob, positive, 0.5)
    best = min(ConfusionCounts.from_arrays(prob, positive, t / 10).pixel_error for t in range(1, 10))
    return {
        "pixel_error": float(at_half.pixel_error),
        "pixel_error_best": float(best),
        "pixel_error_isbi": float(isbi["pixel_error_isbi"]),
        "dice": float(at_half.dice),
        "v_rand": float(isbi["v_rand"]),
        "v_info": float(isbi["v_info"]),
        "v_rand_threshold": float(isbi["v_rand_threshold"]),
        "v_info_threshold": float(isbi["v_info_threshold"]),
    }


class Validator:
    """Whole held-out sections through :func:`volseg.nn.inference.infer_padded`, the function predict uses.

    Each run of consecutive held-out sections is read once with ``context`` real neighbours
    (mirrored beyond the stack ends, :data:`volseg.nn.inference.PAD_MODE`) and padded by the
    default mirrored edge in y and x, exactly as a whole-volume prediction would see it.
    """

    def __init__(self, data: TrainData, config: TrainConfig, device: torch.device, precision: str) -> None:
        self.sections = data.val_sections
        self.kind = config.foreground_kind
        self.normalization = data.stats.normalization
        self.options = InferOptions(tile=512, batch_size=4, precision=precision, device=str(device))
        nz = data.image.shape[0]
        c = config.context
        self.blocks: list[np.ndarray] = []  # runs of held-out sections with c real (or mirrored) neighbours
        for z0, z1 in _runs(self.sections):
            lo, hi = max(0, z0 - c), min(nz, z1 + c)
            raw = np.asarray(data.image[lo:hi])
            self.blocks.append(np.pad(raw, ((c - (z0 - lo), c - (hi - z1)), (0, 0), (0, 0)), mode=PAD_MODE))
        self.positive = positive_mask(
            np.stack([np.asarray(data.labels[z]) for z in self.sections]), config.foreground
        )

    def __call__(self, model: UNet) -> dict[str, float]:
        halo, edge = int(model.halo), self.options.edge_for(model)
        margins = ((edge, edge), (edge, edge))
        probs = [
            infer_padded(model, pad_block(raw, edge), halo, self.options, self.normalization, margins)
            for raw in self.blocks
        ]
        return validation_metrics(np.concatenate(probs), self.positive, self.kind)


def _runs(sections: tuple[int, ...]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for z in sections:
        if runs and runs[-1][1] == z:
            runs[-1] = (runs[-1][0], z + 1)
        else:
            runs.append((z, z + 1))
    return runs


# ============================================================================= run state
@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes
    ----------
    model
        The best model file (by validation V_rand; the final model without validation).
    last
        The last checkpoint (``--resume`` continues from it).
    metrics
        Validation metrics of the best model (empty without validation).
    final_metrics
        Validation metrics at the last step.
    steps
        Steps done in all (resumed runs included).
    seconds
        Wall time of this call.
    steps_per_second
        Training steps per second of this call (validation excluded).
    data_wait_fraction
        Share of the training-loop time spent waiting for the next batch.
    """

    model: Path
    last: Path
    log: Path
    curves: Path
    config_file: Path
    metrics: dict[str, float]
    final_metrics: dict[str, float]
    best_step: int | None
    steps: int
    seconds: float
    steps_per_second: float
    data_wait_fraction: float
    config: TrainConfig


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the last checkpoint was saved at ``step``; ``--resume`` continues from it."""

    def __init__(self, step: int, checkpoint: Path, command: str) -> None:
        self.step, self.checkpoint, self.command = step, checkpoint, command
        super().__init__(f"interrupted at step {step}; saved {checkpoint}; continue with: {command}")


class _StopFlag:
    """SIGINT sets the flag (the loop stops at the end of the step); a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.set = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            if self.set:
                raise KeyboardInterrupt
            self.set = True

        signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def _worker_init(worker_id: int) -> None:
    # One thread per worker: the workers share the cores with the training threads. Ctrl-C is
    # the main process's business: it stops at the end of a step and then shuts the workers down.
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _auto_workers(config: TrainConfig, device: torch.device) -> int:
    cores = os.cpu_count() or 2
    if config.workers > 4 * cores:  # each worker holds a copy of the process (~0.4 GB): more costs memory
        print(
            f"volseg: warning: --workers {config.workers} is more than 4 per core; using {4 * cores}",
            file=sys.stderr,
        )
        return 4 * cores
    if config.workers >= 0:
        return config.workers
    if device.type == "cpu":
        # benchmarks/train.py, 2 cores: in-process loading waits ~4 % of the step, one or two
        # workers < 1 % at the same steps/s; two workers feed far more patches than a CPU trains on
        return max(0, min(2, cores - 1))
    return max(1, min(8, cores - 1))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


class JsonLog:
    """Append-only JSON-lines log; a resumed run first drops the lines after its checkpoint's step."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [line for line in path.read_text().splitlines() if _line_step(line) <= resume_step]
            _atomic_write_text(path, "".join(line + "\n" for line in kept))
        self._file = open(path, "a")  # noqa: SIM115 (closed by close())

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(record, default=_json_default) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _line_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return math.inf  # a torn last line (kill -9) is dropped


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ============================================================================= trainer
def _saved_stats(state: dict[str, Any], path: Path) -> IntensityStats:
    """The intensities a checkpoint was trained with; a damaged record is one ModelError line."""
    try:
        stats = IntensityStats(**state["extra"]["intensity"])
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in dataclasses.astuple(stats)):
            raise ValueError("not finite numbers")
        return stats
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"{path}: the checkpoint's intensity record is damaged ({type(exc).__name__}: {exc}); "
            "start a new run with --overwrite"
        ) from None


class Trainer:
    """One training run: model, optimizer, data, validation, checkpoints, log."""

    def __init__(self, config: TrainConfig, paths: dict[str, Path]) -> None:
        self.config, self.paths = config, paths
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(self.device, config.precision)
        state = read_model_file(paths["last"]) if config.resume else None
        saved_stats = _saved_stats(state, paths["last"]) if state else None
        self.data = prepare_data(config, saved_stats)
        torch.manual_seed(config.seed)
        self.model = UNet(config.model_config()).to(self.device, memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.precision == "fp16" and self.device.type == "cuda"
        )
        self.loss = loss_function(config.loss)
        self.step, self.elapsed = 0, 0.0
        self.best: dict[str, Any] | None = None
        self.final_metrics: dict[str, float] = {}
        if state:
            try:
                self._load_state(state)
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
                raise ModelError(
                    f"{paths['last']}: the checkpoint's training state is damaged ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); start a new run with --overwrite"
                ) from None
        self.validator = (
            Validator(self.data, config, self.device, self.precision) if self.data.val_sections else None
        )

    # ------------------------------------------------------------ state
    def _training_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "elapsed": self.elapsed,
            "best": self.best,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        }

    def _load_state(self, data: dict[str, Any]) -> None:
        state = data["training_state"]
        self.model.load_state_dict(data["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step, self.elapsed, self.best = int(state["step"]), float(state["elapsed"]), state.get("best")

    def save(self, path: Path, metrics: dict[str, Any], training_state: dict[str, Any] | None) -> None:
        """Write the model (a checkpoint with ``training_state``) atomically; a failure keeps the old file."""
        try:
            self._save(path, metrics, training_state)
        except OSError as exc:
            raise OutputError(
                f"{path}: cannot write it ({exc.strerror or exc}); the previous file, if any, is intact"
            ) from exc

    def _save(self, path: Path, metrics: dict[str, Any], training_state: dict[str, Any] | None) -> None:
        c = self.config
        save_model(
            path,
            self.model,
            normalization=self.data.stats.normalization,
            foreground=list(c.foreground),
            label_convention=_label_convention(c),
            provenance=provenance([c.image, c.labels], config=c.to_dict()),
            metrics=metrics,
            train_config=c.to_dict(),
            extra={
                "intensity": dataclasses.asdict(self.data.stats),
                "image_dtype": str(np.dtype(self.data.image.dtype)),
                "train_sections": list(self.data.train_sections),
                "val_sections": list(self.data.val_sections),
                "steps": self.step,
                "seconds": round(self.elapsed, 3),
                "precision": self.precision,
                "device": str(self.device),
            },
            training_state=training_state,
        )

    # ------------------------------------------------------------ schedule
    def progress(self) -> float:
        """Fraction of the run done: by steps, by the time budget, or the larger of the two."""
        c = self.config
        parts = []
        if c.total_steps is not None:
            parts.append(self.step / c.total_steps)
        if c.time_limit_seconds is not None:
            parts.append(self.elapsed / c.time_limit_seconds)
        return max(parts)

    # ------------------------------------------------------------ data
    def loader(self) -> torch.utils.data.DataLoader:
        c, d = self.config, self.data
        patch_config = PatchConfig(
            sections=d.train_sections,
            patch_size=c.patch_size,
            foreground=c.foreground,
            stats=d.stats,
            seed=c.seed,
            context=c.context,
            augment=c.augment_config(),
            min_foreground=c.min_foreground,
            max_attempts=c.max_attempts,
            border_weights=c.loss == "weighted_bce",
            w0=c.w0,
            sigma=c.sigma,
            foreground_is_boundary=c.foreground_kind == "boundary",
            cache_bytes=int(c.cache_gb * 2**30),
        )
        workers = _auto_workers(c, self.device)
        return torch.utils.data.DataLoader(
            PatchDataset(d.image, d.labels, patch_config),
            batch_sampler=BatchIndices(c.batch_size, self.step, c.total_steps),
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init if workers > 0 else None,
            prefetch_factor=4 if workers > 0 else None,
            pin_memory=self.device.type == "cuda",
            # its own generator: creating the iterator draws a base seed, which must not advance the
            # global RNG that dropout uses (a resumed run creates its loader at a later step)
            generator=torch.Generator().manual_seed(c.seed),
        )

    # ------------------------------------------------------------ one step
    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        self.model.train()
        x = batch["image"].to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = batch["target"].to(self.device, non_blocking=True)
        w = batch["weight"].to(self.device, non_blocking=True) if "weight" in batch else None
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * lr_factor(self.step, self.progress(), self.config.warmup_steps)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.precision):
            logits = self.model(x)
        loss = self.loss(logits, y, w)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return float(loss.detach())

    # ------------------------------------------------------------ validation + checkpoint
    def checkpoint(self, log: JsonLog) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.validator is not None:
            start = time.perf_counter()
            metrics = self.validator(self.model)
            log.write(
                {
                    "kind": "val",
                    "step": self.step,
                    "time": round(self.elapsed, 3),
                    "seconds": round(time.perf_counter() - start, 3),
                    **metrics,
                }
            )
            if self.best is None or metrics["v_rand"] > self.best["metrics"]["v_rand"]:
                self.best = {"step": self.step, "metrics": metrics}
                self.save(self.paths["model"], {**metrics, "step": self.step}, None)
        self.final_metrics = metrics
        self.save(self.paths["last"], {**metrics, "step": self.step}, self._training_state())
        _plot_quietly(self.paths["log"], self.paths["curves"])
        return metrics


def _label_convention(config: TrainConfig) -> str:
    values = ",".join(str(v) for v in config.foreground)
    if config.foreground_kind == "boundary":
        return f"probability of labels in [{values}] (boundaries: membrane probability = p)"
    return f"probability of labels in [{values}] (objects: membrane probability = 1 - p)"


def _plot_quietly(log: Path, png: Path) -> None:
    from volseg.storage.curves import plot_curves

    try:
        plot_curves(log, png)
    except Exception as exc:  # a figure must never end a training run
        print(f"volseg: warning: could not draw {png}: {exc}", file=sys.stderr)


# ================================================================================ loop
class ProgressBar:
    """A rich progress bar on stderr: step, loss, learning rate, steps/s and ETA."""

    def __init__(self, enabled: bool, total_steps: int | None, time_limit: float | None) -> None:
        self.enabled, self.total_steps, self.time_limit = enabled, total_steps, time_limit
        self._bar: Any = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("train"),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=1.0, info="starting")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, step: int, loss: float, lr: float, rate: float, progress: float, elapsed: float) -> None:
        if self._bar is None:
            return
        left = []
        if self.total_steps is not None and rate > 0:
            left.append((self.total_steps - step) / rate)
        if self.time_limit is not None:
            left.append(self.time_limit - elapsed)
        eta = _clock(max(0.0, min(left))) if left else "?"
        of = f"/{self.total_steps}" if self.total_steps is not None else ""
        info = f"step {step}{of}  loss {loss:.4f}  lr {lr:.2e}  {rate:.2f} steps/s  ETA {eta}"
        self._bar.update(self._task, completed=min(progress, 1.0), info=info)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _resume_command(config: TrainConfig) -> str:
    return f"volseg train {config.image} {config.labels} -o {config.output} --resume"


def _run(
    trainer: Trainer, log: JsonLog, flag: _StopFlag, on_step: Callable[[int, float], None] | None
) -> dict[str, float]:
    """The training loop, from the trainer's step to the end of the run (or a stop request).

    Returns the loop's totals: ``steps``, ``train`` (seconds in training steps, data waiting
    included) and ``wait`` (seconds waiting for batches).
    """
    c = trainer.config
    totals = {"steps": 0, "train": 0.0, "wait": 0.0}
    if trainer.progress() >= 1.0:
        return totals
    start_elapsed, t0 = trainer.elapsed, time.perf_counter()
    since_val = 0
    with ProgressBar(c.progress, c.total_steps, c.time_limit_seconds) as bar:
        batches = iter(trainer.loader())
        while not flag.set:
            t_wait = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            t_step = time.perf_counter()
            loss = trainer.train_step(batch)
            t_end = time.perf_counter()
            trainer.elapsed = start_elapsed + (t_end - t0)
            wait, took = t_step - t_wait, t_end - t_wait
            totals["steps"] += 1
            totals["train"] += took
            totals["wait"] += wait
            lr = trainer.optimizer.param_groups[0]["lr"]
            log.write(
                {
                    "kind": "step",
                    "step": trainer.step,
                    "loss": round(loss, 6),
                    "lr": lr,
                    "time": round(trainer.elapsed, 3),
                    "step_seconds": round(took, 5),
                    "data_wait": round(wait, 5),
                }
            )
            bar.update(
                trainer.step, loss, lr, totals["steps"] / totals["train"], trainer.progress(), trainer.elapsed
            )
            if on_step is not None:
                on_step(trainer.step, loss)
            if not math.isfinite(loss):
                raise OptionError(
                    f"training diverged at step {trainer.step} (loss {loss}); lower --lr or use "
                    "--precision fp32"
                )
            since_val += 1
            done = trainer.progress() >= 1.0
            if flag.set:
                break
            if since_val >= c.val_every or done:
                trainer.checkpoint(log)
                trainer.elapsed = start_elapsed + (time.perf_counter() - t0)
                since_val = 0
            if done:
                break
    return totals


def train(
    config: TrainConfig | None = None,
    *,
    on_step: Callable[[int, float], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a U-Net (``volseg train``).

    Parameters
    ----------
    config
        A :class:`TrainConfig`; keyword ``overrides`` (its field names, plus ``config_file``
        for a TOML file) replace its fields.
    on_step
        Called as ``on_step(step, loss)`` after every step (progress reporting, tests).

    Returns
    -------
    TrainResult

    Raises
    ------
    VolsegError
        Bad input or options (one line; the CLI exits 2).
    TrainingInterrupted
        Ctrl-C (SIGINT): the last checkpoint was saved first; ``resume=True`` continues.

    Examples
    --------
    >>> volseg.train(image="image.zarr", labels="labels.zarr", output="model.pt",
    ...              foreground=(0,), val_slices="25:30", time_limit="20m")  # doctest: +SKIP
    """
    config_file = overrides.pop("config_file", None)
    config = resolve_config(config, config_file, **overrides)
    check_device(config.device)  # before any output exists
    if config.output:
        output_not_input(
            {f"-o ({p.name})": p for p in output_paths(_model_path(config.output)).values()},
            {"input IMAGE": config.image, "input LABELS": config.labels, "--config file": config_file},
        )
    paths = _check_output(config)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    # The run seeds torch's global RNG (model init, dropout); the caller gets its own state back.
    with torch.random.fork_rng(devices=devices):
        trainer = Trainer(config, paths)
        if not config.resume:
            for stale in (paths["model"], paths["last"], paths["curves"]):
                stale.unlink(missing_ok=True)
        write_config_toml(config, paths["config"])
        log = JsonLog(paths["log"], trainer.step if config.resume else None)
        flag = _StopFlag()
        t0 = time.perf_counter()
        try:
            with flag.installed():
                if not config.resume:  # a checkpoint exists from the first moment on
                    trainer.save(paths["last"], {"step": 0}, trainer._training_state())
                totals = _run(trainer, log, flag, on_step)
                if flag.set:
                    trainer.save(paths["last"], {"step": trainer.step}, trainer._training_state())
                    raise TrainingInterrupted(trainer.step, paths["last"], _resume_command(config))
                if trainer.validator is None or not paths["model"].exists():
                    trainer.save(paths["model"], {"step": trainer.step}, None)
        finally:
            log.close()
    best = trainer.best or {}
    return TrainResult(
        model=paths["model"],
        last=paths["last"],
        log=paths["log"],
        curves=paths["curves"],
        config_file=paths["config"],
        metrics=dict(best.get("metrics", {})),
        final_metrics=trainer.final_metrics,
        best_step=best.get("step"),
        steps=trainer.step,
        seconds=time.perf_counter() - t0,
        steps_per_second=totals["steps"] / totals["train"] if totals["train"] else 0.0,
        data_wait_fraction=totals["wait"] / totals["train"] if totals["train"] else 0.0,
        config=config,
    )
