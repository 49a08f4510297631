"""The options of a training run: TrainConfig, its TOML file, and how a run's options are resolved.

:class:`TrainConfig` nests the U-Net's config (``model``, a :class:`volseg.nn.unet.UNetConfig`, where the
U-Net's defaults are declared) and the augmentation's (``augment``, a
:class:`volseg.core.augment.AugmentConfig`). Values from TOML, the command line or Python are coerced
from the dataclasses' annotations (:func:`coerce`), so a new field of any of the three configs is a TOML
key without further code.

Flat keys stay valid everywhere (TOML, ``train(**options)``, the CLI): the U-Net's fields
(``base_channels = 16``, ``depth = 4``, ...) are keys of ``model``, ``augment = "heavy"`` names a preset
and ``augment_prob = "elastic=0.9"`` replaces probabilities of the result. Nested tables work too::

    [model]
    base_channels = 32

    [augment]
    preset = "heavy"       # the base (default: "default"); the other keys replace its fields
    elastic_sigma = 8.0
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from volseg.core.augment import AugmentConfig
from volseg.errors import InputError, OptionError
from volseg.nn.runtime import PRECISIONS
from volseg.nn.unet import UNetConfig
from volseg.stages.train.coercion import coerce, field_types
from volseg.storage.conventions import FOREGROUND_KINDS
from volseg.storage.files import atomic_write_text, json_ready

__all__ = [
    "DEFAULT_AUGMENT",
    "DEFAULT_STEPS",
    "FLAT_TABLE",
    "FOREGROUND_KINDS",
    "AFFINITY_LOSSES",
    "LOSSES",
    "RESUME_MAY_CHANGE",
    "TARGETS",
    "TrainConfig",
    "load_config_file",
    "nest",
    "option_default",
    "option_names",
    "output_paths",
    "parse_duration",
    "resolve_config",
    "write_config_toml",
]

LOSSES = ("bce_dice", "weighted_bce", "bce", "dice")
#: What the U-Net learns: a boundary (membrane) map, or affinities for a list of offsets.
TARGETS = ("boundary", "affinities")
#: The losses an affinity model trains with (masked per channel: pairs outside the patch do not count).
AFFINITY_LOSSES = ("bce", "bce_dice")
DEFAULT_STEPS = 2000
#: The augmentation preset of a run that names none (``AugmentConfig()`` is this preset).
DEFAULT_AUGMENT = "default"
#: The nested config whose fields are also top-level keys and flags (``depth = 4``, ``--depth 4``).
FLAT_TABLE = "model"
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
        "resume",
        "overwrite",
    }
)
#: A TOML key that is no option of the run: whether the CLI shows its bar (read by ``volseg train``).
PROGRESS_KEY = "progress"
_HOW_TO_RUN = ("resume", "overwrite")  # not written to MODEL.config.toml: how to run, not what to train


# ========================================================================= the config
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
        Held-out sections in the grammar of ``--sections`` (``"25:30"``, ``"0:30:5"``, ``"0,10:12"``;
        wins), or the last ``ceil(fraction * Z)`` sections; ``val_fraction = 0`` trains on everything
        without validation.
    patch_size, batch_size
        Square training patch side (a multiple of ``2**depth``) and patches per step.
    steps, time_limit
        Length of the run: a number of steps, a wall-clock budget (``"20m"``, ``"1h30m"``,
        seconds), or both (whichever ends first). Neither: :data:`DEFAULT_STEPS`.
    lr, weight_decay, warmup_steps
        AdamW; linear warm-up (``warmup_steps`` or a tenth of the run), then cosine decay to 0.
    augment
        The :class:`~volseg.core.augment.AugmentConfig`; also given as a preset name (``none``,
        ``light``, ``default``, ``heavy``) or a table of its fields over a ``preset``.
    loss, w0, sigma
        ``bce_dice`` (default), ``weighted_bce`` (U-Net border weights ``w0``, ``sigma``),
        ``bce`` or ``dice``.
    target, offsets
        ``"boundary"`` (default): one channel, the membrane probability. ``"affinities"``: one channel
        per offset of ``offsets`` (text ``"0,-1,0;0,0,-1;-1,0,0"``; default
        :data:`volseg.core.affinities.DEFAULT_OFFSETS`), the probability that a voxel and the one at
        the offset belong to the same cell, trained with ``bce`` or ``bce_dice`` masked where the pair
        leaves the patch or is unknown (across sections of per-section labels). The cells come from
        the labels: a label volume's ids, or the connected cells of a binary truth in each section.
    model
        The :class:`~volseg.nn.unet.UNetConfig` (``base_channels``, ``depth``, ``norm``, ``dropout``,
        ``upsample``, ``context``: ``context`` > 0 feeds ``2 * context + 1`` sections); also a table.
    device, precision
        ``auto`` | ``cpu`` | ``cuda`` | ``mps`` (or ``cuda:1``); ``auto`` | ``bf16`` | ``fp16`` | ``fp32``.
    workers
        DataLoader worker processes; ``-1`` chooses (one or two on CPU, up to 8 with a GPU).
    seed
        Seeds the model initialisation and every patch.
    ema
        Decay of an exponential moving average of the weights (and batch-norm statistics), e.g. 0.999:
        validation, ``MODEL`` and ``MODEL.last.pt``'s model are the averaged weights, which move less
        from one validation to the next than the last step's; 0 (default) keeps the last step's weights.
        The decay is ``min(ema, (1 + step) / (10 + step))``, so early steps are not held to the start.
    val_every
        Validate and checkpoint every this many steps (and at the end).
    min_foreground, max_attempts
        Rejection sampler: redraw patches with a smaller positive fraction, at most this many draws.
    cache_gb
        Volumes (and weight maps) up to this size are held in memory (per worker).
    resume, overwrite
        Continue from ``MODEL.last.pt``; replace existing outputs.
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
    augment: AugmentConfig = field(default_factory=functools.partial(AugmentConfig.preset, DEFAULT_AUGMENT))
    loss: str = "bce_dice"
    target: str = "boundary"
    offsets: str | None = None
    w0: float = 10.0
    sigma: float = 5.0
    model: UNetConfig = field(default_factory=UNetConfig)
    device: str = "auto"
    precision: str = "auto"
    workers: int = -1
    seed: int = 0
    val_every: int = 200
    ema: float = 0.0
    min_foreground: float = 0.0
    max_attempts: int = 10
    cache_gb: float = 2.0
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        hints = field_types(TrainConfig)
        for f in fields(self):
            value = coerce(getattr(self, f.name), hints[f.name], _label(f.name), member=_member_label(f.name))
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        def need(ok: bool, name: str, fix: str) -> None:
            if not ok:
                raise OptionError(f"{_flag(name)} {getattr(self, name)!r}: {fix}")

        need(len(self.foreground) > 0, "foreground", "give at least one label value, e.g. 0 or 1,2")
        kinds = ", ".join(FOREGROUND_KINDS)
        need(self.foreground_kind in FOREGROUND_KINDS, "foreground_kind", f"use one of {kinds}")
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
        need(
            self.precision in PRECISIONS, "precision", f"use {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}"
        )
        need(-1 <= self.workers <= 256, "workers", "use 0 to 256 (-1 chooses)")
        need(0 <= self.seed < 2**63, "seed", "use 0 to 2**63 - 1")
        need(0 < self.val_every <= 10**9, "val_every", "use 1 or more steps")
        need(
            self.ema == 0.0 or 0.5 <= self.ema < 1.0,
            "ema",
            "use 0 (off) or a decay from 0.5 to below 1, e.g. 0.999",
        )
        need(0.0 <= self.min_foreground <= 1.0, "min_foreground", "use a fraction from 0 to 1")
        need(1 <= self.max_attempts <= 10**6, "max_attempts", "use 1 or more (up to 10**6)")
        need(0 <= self.cache_gb <= 2**20, "cache_gb", "use 0 (no cache) or more GiB")
        need(self.target in TARGETS, "target", f"use one of {', '.join(TARGETS)}")
        if self.target == "affinities":
            from volseg.core.affinities import format_offsets, parse_offsets

            offsets = parse_offsets(self.offsets, "--offsets")
            object.__setattr__(self, "offsets", format_offsets(offsets))
            need(
                self.loss in AFFINITY_LOSSES, "loss",
                f"affinities train with {' or '.join(AFFINITY_LOSSES)} (masked per channel)",
            )  # fmt: skip
            if self.model.out_channels not in (1, len(offsets)):
                raise OptionError(
                    f"model out_channels={self.model.out_channels!r}: an affinity model has one channel per "
                    f"offset ({len(offsets)}); leave it unset"
                )
            object.__setattr__(self, "model", dataclasses.replace(self.model, out_channels=len(offsets)))
        elif self.offsets is not None:
            raise OptionError(f"--offsets {self.offsets!r}: only with --target affinities")
        elif self.model.out_channels != 1:
            raise OptionError(
                f"model out_channels={self.model.out_channels!r}: training makes a binary model; use 1"
            )
        if self.time_limit is not None:
            parse_duration(self.time_limit)

    # ---------------------------------------------------------------- derived
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
        """Plain data: nested configs as dicts, tuples as lists, unset options as None."""
        return json_ready(dataclasses.asdict(self))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _label(name: str) -> str:
    """How errors name a top-level option: its flag, or the table for a nested config without one."""
    return name if name == FLAT_TABLE else _flag(name)


def _member_label(name: str) -> Callable[[str], str]:
    """How errors name a field of the nested config ``name``: ``--depth`` (flat keys), ``augment p_noise``."""
    return _flag if name == FLAT_TABLE else lambda member: f"{name} {member}"


# ========================================================================= options
def option_names() -> frozenset[str]:
    """The keys :func:`resolve_config` takes: the fields, the U-Net's flat keys, and ``augment_prob``."""
    return frozenset(field_types(TrainConfig)) | frozenset(field_types(UNetConfig)) | {"augment_prob"}


def option_default(name: str) -> object:
    """The default of option ``name`` (a :class:`TrainConfig` or U-Net field), as ``--help`` shows it.

    ``None``: the option is unset by default (``augment_prob`` replaces no probability).
    """
    if name in field_types(UNetConfig):
        return {f.name: f.default for f in fields(UNetConfig)}[name]
    special = {"augment": DEFAULT_AUGMENT, "steps": DEFAULT_STEPS, "augment_prob": None}
    if name in special:
        return special[name]
    return {f.name: f.default for f in fields(TrainConfig) if f.name != FLAT_TABLE}[name]


# ========================================================================= durations
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


# ========================================================================= TOML files
def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file of options (top level, or under a ``[train]`` table), flat U-Net keys nested.

    Unknown keys are refused with the list of known ones; ``-`` may stand for ``_`` in keys. The
    ``progress`` key (whether ``volseg train`` shows its bar) is checked and returned as it is.
    """
    path = Path(path)
    data = _read_toml(path)
    if set(data) == {"train"} and isinstance(data["train"], dict):
        data = data["train"]
    known = option_names() | {PROGRESS_KEY}
    result = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise OptionError(
                f"--config {path}: unknown key {key!r}; known keys are {', '.join(sorted(known))}"
            )
        result[name] = value
    if PROGRESS_KEY in result:
        result[PROGRESS_KEY] = coerce(result[PROGRESS_KEY], bool, _flag(PROGRESS_KEY))
    return nest(result, f"--config {path}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
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


def write_config_toml(config: TrainConfig, path: Path) -> None:
    """Write ``config`` as TOML that :func:`load_config_file` reads back (unset options omitted)."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string

    def lines(table: Mapping[str, object]) -> list[str]:
        return [f"{k} = {value(v)}" for k, v in table.items() if v is not None and not isinstance(v, dict)]

    data = {k: v for k, v in config.to_dict().items() if k not in _HOW_TO_RUN}
    text = ["# volseg train: resolved configuration (volseg train --config THIS_FILE)", *lines(data)]
    for name, table in data.items():
        if isinstance(table, dict):  # tables after the top-level keys, as TOML wants
            text += ["", f"[{name}]", *lines(table)]
    atomic_write_text(path, "\n".join(text) + "\n")


# ========================================================================= resolving a run's options
def nest(options: Mapping[str, object], where: str) -> dict[str, object]:
    """``options`` with the U-Net's flat keys (``depth = 4``) moved into the ``model`` table."""
    out: dict[str, object] = {}
    flat: dict[str, object] = {}
    for key, value in options.items():
        (flat if key in field_types(UNetConfig) else out)[key] = value
    if flat:
        table = out.get(FLAT_TABLE)
        if isinstance(table, UNetConfig):
            table = dataclasses.asdict(table)
        if table is None or isinstance(table, Mapping):
            table = {str(k).replace("-", "_"): v for k, v in (table or {}).items()}
            twice = sorted(set(flat) & set(table))
            if twice:
                raise OptionError(f"{where}: {twice[0]} is given twice (flat and in [model]); keep one")
            out[FLAT_TABLE] = {**table, **flat}
    return out


def _merge(base: Mapping[str, object], layer: Mapping[str, object]) -> dict[str, object]:
    """``layer`` over ``base``: tables merge key by key; a preset (or a table naming one) replaces a table."""
    out = dict(base)
    for name, value in layer.items():
        old = out.get(name)
        if isinstance(value, Mapping) and "preset" not in value:
            if isinstance(old, str):  # a preset named before: the base of this table
                value = {"preset": old, **value}
            elif isinstance(old, Mapping):
                value = {**old, **value}
        out[name] = value
    return out


def _build(options: Mapping[str, object]) -> TrainConfig:
    """The config of merged options; ``augment_prob`` replaces probabilities of the augmentation."""
    options = dict(options)
    probabilities = options.pop("augment_prob", None)
    config = TrainConfig(**options)  # type: ignore[arg-type]  (coerced from the annotations)
    if probabilities:
        text = coerce(probabilities, str, "--augment-prob")
        config = dataclasses.replace(config, augment=config.augment.with_probabilities(text))
    return config


def resolve_config(
    config: TrainConfig | None = None, file: str | os.PathLike[str] | None = None, **overrides: object
) -> TrainConfig:
    """Merge defaults < ``config`` < ``file`` (TOML) < ``overrides`` (``None`` values are ignored).

    ``overrides`` are :func:`option_names`: the fields, the U-Net's flat keys and ``augment_prob``.
    With ``resume``, the checkpoint's own configuration is the base instead of the defaults,
    and only the options in :data:`RESUME_MAY_CHANGE` may differ from it.
    """
    known = option_names()
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise OptionError(
            f"train: unknown option {unknown[0]!r}; known options are {', '.join(sorted(known))}"
        )
    given: dict[str, object] = {} if config is None else config.to_dict()
    if file is not None:
        from_file = load_config_file(file)
        from_file.pop(PROGRESS_KEY, None)  # the caller's business (the CLI's bar), not the run's
        given = _merge(given, from_file)
    given = _merge(given, nest({k: v for k, v in overrides.items() if v is not None}, "train"))
    if not given.get("resume"):
        return _build(given)
    if not given.get("output"):
        raise OptionError("--resume needs the output model path (-o MODEL) of the run to continue")
    saved = _build(nest(_saved_config(output_paths(str(given["output"]))["last"]), "the checkpoint"))
    old = saved.to_dict()
    _refuse_changes(old, _build(_merge(old, given)).to_dict())
    return _build(_merge(old, {k: v for k, v in given.items() if k in RESUME_MAY_CHANGE}))


def _refuse_changes(saved: Mapping[str, object], explicit: Mapping[str, object]) -> None:
    for name, old in saved.items():
        if name in RESUME_MAY_CHANGE:
            continue
        new = explicit.get(name)
        if isinstance(old, dict) and isinstance(new, dict):  # a nested config: name the field
            label = _member_label(name)
            for key, value in old.items():
                if new.get(key) != value:
                    drop = label(key) if name == FLAT_TABLE else f"the {name} options"
                    raise _changed(label(key), drop, new.get(key), value)
        elif new != old:
            raise _changed(_label(name), _label(name), new, old)


def _changed(label: str, drop: str, new: object, old: object) -> OptionError:
    return OptionError(
        f"{label} {new!r} differs from the checkpoint's {old!r}; a resumed run keeps its options "
        f"(drop {drop}, or start a new run with --overwrite)"
    )


def _saved_config(last: Path) -> dict[str, object]:
    from volseg.nn.modelfile import read_model_file

    if not last.exists():
        raise InputError(f"--resume: no checkpoint {last} to continue from; start without --resume")
    data = read_model_file(last)
    if not data.get("training_state"):
        raise InputError(f"--resume: {last} holds no training state; start without --resume")
    known = option_names()  # a checkpoint of volseg 0.1 holds flat keys and its progress switch
    return {k: v for k, v in data["train_config"].items() if k in known}


def output_paths(output: str | os.PathLike[str]) -> dict[str, Path]:
    """The files a run writes: ``model``, ``last``, ``log``, ``curves``, ``config`` (beside ``output``)."""
    model = Path(output)
    stem = model.name[: -len(model.suffix)] if model.suffix else model.name
    return {
        "model": model,
        "last": model.with_name(stem + ".last.pt"),
        "log": model.with_name(stem + ".log.jsonl"),
        "curves": model.with_name(stem + ".curves.png"),
        "config": model.with_name(stem + ".config.toml"),
    }
