"""The 2-D / 2.5-D U-Net, its receptive field and halo, fast inference settings, and the model file.

U-Net
-----
After Ronneberger et al. (2015), with 'same' padding (3 x 3 convolutions, padding 1) so that
an input of ``(H, W)`` gives an output of ``(H, W)``; ``H`` and ``W`` must be multiples of
``2**depth`` (:attr:`UNet.divisor`). 2.5-D models see ``2 * context + 1`` neighbouring sections
as input channels and predict the middle one.

Halo
----
Tiled inference equals whole-image inference when every tile's input window starts on the
pooling grid and reaches as far as the theoretical receptive field (walked from the layers by
:meth:`UNet.receptive_field_extent`). Because windows are grid-aligned, an inner pixel at
pooling phase ``p`` already lies ``p`` px inside the window, so :attr:`UNet.halo` (96 px at
depth 4) is below the receptive-field radius rounded up (112 px).

Smaller halos are not safe: on ISBI 2012 sections a depth-4 / base-16 model trained for 150
steps differs from its whole-section output by up to 0.011 in probability (0.048 in logits) at
a halo of 80 px and by 0.09 at 64 px, and even a random-init model with calibrated batch-norm
statistics by 0.0017 at 80 px; at 96 px both are identical (max difference 0.0). The effective
receptive field of a trained U-Net is nearly its theoretical one.

Model file
----------
One file written by :func:`save_model` with :func:`torch.save`, holding only tensors and plain
data, so that ``torch.load(path, weights_only=True)`` loads it without running pickled code::

    {"format": "volseg-model", "format_version": 1, "config": UNetConfig.to_dict(),
     "normalization": {"mode": "meanstd", "mean": float, "std": float},
     "foreground": [int, ...], "label_convention": str, "provenance": dict, "metrics": dict,
     "train_config": dict, "extra": dict, "saved_with": {"volseg": str, "torch": str},
     "training_state": dict | None, "state_dict": {name: tensor}}
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volseg.core.tiling import check_size, round_up
from volseg.errors import ModelError, OptionError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PRECISIONS",
    "UNet",
    "UNetConfig",
    "autocast_context",
    "check_normalization",
    "check_size",
    "load_model",
    "model_checksum",
    "normalize",
    "prepare_for_inference",
    "read_model_file",
    "resolve_device",
    "resolve_precision",
    "round_up",
    "save_model",
]

FORMAT = "volseg-model"
FORMAT_VERSION = 1
NORMS = ("batch", "group", "instance", "none")
UPSAMPLES = ("transpose", "bilinear")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


# ============================================================================ config
@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a :class:`UNet`.

    Parameters
    ----------
    context
        Sections on each side of the predicted one that the model sees (2.5-D); the input has
        ``in_channels = 2 * context + 1`` channels. 0 is a plain 2-D model.
    out_channels
        1 for a binary model (one logit, the positive class), or N >= 2 classes (softmax).
    base_channels
        Feature maps at full resolution; level ``l`` has ``base_channels * 2**l``.
    depth
        Number of 2 x 2 poolings; inputs must be multiples of ``2**depth``.
    norm
        ``"batch"`` (default), ``"group"``, ``"instance"`` or ``"none"``. Group and instance
        norm compute statistics over the whole input window, so tiled inference with them
        depends on the tile size; only ``"batch"`` (in eval mode) and ``"none"`` tile exactly.
    dropout
        Dropout2d probability at the end of the contracting path (as in the paper).
    upsample
        ``"transpose"`` (2 x 2 transposed convolution) or ``"bilinear"`` (bilinear x2 then 1 x 1).
    convs_per_level
        3 x 3 convolutions (each followed by norm and ReLU) per level.
    """

    context: int = 0
    out_channels: int = 1
    base_channels: int = 16
    depth: int = 4
    norm: str = "batch"
    dropout: float = 0.0
    upsample: str = "transpose"
    convs_per_level: int = 2

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, fix: str) -> None:
            if not ok:
                raise OptionError(f"model {field}={getattr(self, field)!r}: {fix}")

        ints = ("context", "out_channels", "base_channels", "depth", "convs_per_level")
        for name in ints:
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool), name, "must be an integer")
        need(0 <= self.context <= 32, "context", "use 0 (2-D) to 32 sections on each side")
        need(1 <= self.out_channels <= 1024, "out_channels", "use 1 (binary) or the number of classes")
        need(1 <= self.base_channels <= 1024, "base_channels", "use 1..1024 (16 is usual)")
        need(1 <= self.depth <= 8, "depth", "use 1..8 (4 is usual)")
        need(
            self.base_channels * 2**self.depth <= 2**16,
            "base_channels",
            f"with depth {self.depth} the bottleneck would hold {self.base_channels * 2**self.depth} feature "
            "maps; use at most 65536 (base 16, depth 4 is usual)",
        )
        need(1 <= self.convs_per_level <= 8, "convs_per_level", "use 1..8 (2 is usual)")
        need(self.norm in NORMS, "norm", f"use one of {', '.join(NORMS)}")
        need(self.upsample in UPSAMPLES, "upsample", f"use one of {', '.join(UPSAMPLES)}")
        need(
            isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0, "dropout", "use 0 <= p < 1"
        )

    @property
    def in_channels(self) -> int:
        """Input channels: ``2 * context + 1`` neighbouring sections."""
        return 2 * self.context + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields, plus ``in_channels`` for readers of the file."""
        return {**asdict(self), "in_channels": self.in_channels}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys and an inconsistent ``in_channels`` are errors."""
        known = {f.name for f in fields(cls)}
        data = dict(data)
        in_channels = data.pop("in_channels", None)
        unknown = sorted(set(data) - known)
        if unknown:
            raise OptionError(f"model config: unknown keys {unknown}; known are {sorted(known)}")
        config = cls(**data)
        if in_channels is not None and in_channels != config.in_channels:
            raise OptionError(
                f"model config: in_channels={in_channels} does not match context={config.context} "
                f"(in_channels = 2 * context + 1)"
            )
        return config


# ============================================================================= U-Net
def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """``convs`` x (3 x 3 conv, padding 1 -> norm -> ReLU), optionally followed by Dropout2d."""

    def __init__(self, cin: int, cout: int, config: UNetConfig, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for i in range(config.convs_per_level):
            layers += [
                nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=config.norm == "none"),
                _norm(config.norm, cout),
                nn.ReLU(inplace=True),
            ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


def _upsampler(kind: str, cin: int) -> nn.Module:
    if kind == "transpose":
        return nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(cin, cin // 2, 1)
    )


class UNet(nn.Module):
    """2-D U-Net with 'same' padding: ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` logits.

    ``H`` and ``W`` must be multiples of :attr:`divisor`.

    Attributes
    ----------
    config
        The :class:`UNetConfig` it was built from.
    divisor
        ``2**depth``; input sizes and tile window starts must be multiples of it.
    receptive_field
        Theoretical receptive field (px, per axis): the most input pixels along one axis that
        one output pixel depends on.
    rf_radius
        The farthest (px) an input pixel that one output pixel depends on lies from it.
    halo
        The halo (px, a multiple of ``divisor``) with which tiled inference over grid-aligned
        windows equals whole-image inference: the smallest multiple of ``divisor`` with
        ``halo + p >= left[p]`` and ``halo + divisor - 1 - p >= right[p]`` for every phase ``p``
        (see :meth:`receptive_field_extent`).
    tile_exact
        False for group / instance norm, whose statistics span the whole input window.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or UNetConfig()
        widths = [config.base_channels * 2**level for level in range(config.depth + 1)]
        self.encoders = nn.ModuleList(
            ConvBlock(config.in_channels if level == 0 else widths[level - 1], widths[level], config)
            for level in range(config.depth)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(widths[-2], widths[-1], config, dropout=config.dropout)
        self.ups = nn.ModuleList(
            _upsampler(config.upsample, widths[level + 1]) for level in range(config.depth)
        )
        self.decoders = nn.ModuleList(
            ConvBlock(2 * widths[level], widths[level], config) for level in range(config.depth)
        )
        self.head = nn.Conv2d(widths[0], config.out_channels, 1)
        self.divisor = 2**config.depth
        left, right = self.receptive_field_extent()
        self.receptive_field = int((left + right).max()) + 1
        self.rf_radius = int(max(left.max(), right.max()))
        # Windows start on the pooling grid and the halo is a multiple of the divisor, so an inner
        # pixel at phase p lies p px (p from the window's far end: divisor - 1 - p) inside the halo.
        phase = np.arange(self.divisor)
        reach = max(int((left - phase).max()), int((right - phase[::-1]).max()), 0)
        self.halo = round_up(reach, self.divisor)
        self.tile_exact = config.norm in ("batch", "none")

    # ------------------------------------------------------------------ graph
    def _graph(self, x: Any, apply: Callable[[nn.Module, Any], Any], cat: Callable[[Any, Any], Any]) -> Any:
        """The U-Net's wiring, shared by :meth:`forward` (tensors) and the receptive-field walk."""
        skips = []
        for encoder in self.encoders:
            x = apply(encoder, x)
            skips.append(x)
            x = apply(self.pool, x)
        x = apply(self.bottleneck, x)
        for level in reversed(range(self.config.depth)):
            x = apply(self.decoders[level], cat(skips[level], apply(self.ups[level], x)))
        return apply(self.head, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)`` logits."""
        self.check_input_size(x.shape[-2], x.shape[-1])
        return self._graph(x, lambda module, t: module(t), lambda a, b: torch.cat([a, b], dim=1))

    # ------------------------------------------------------------------ sizes
    def check_input_size(self, h: int, w: int, name: str = "input") -> None:
        """Raise :class:`OptionError` unless ``h`` and ``w`` are positive multiples of :attr:`divisor`.

        The message names the nearest valid sizes, e.g. ``tile 250 is not a multiple of 16
        (depth 4); use 240 or 256``.
        """
        for size in dict.fromkeys((int(h), int(w))):
            check_size(size, self.divisor, name)

    # ------------------------------------------------------------ receptive field
    def receptive_field_extent(self) -> tuple[np.ndarray, np.ndarray]:
        """Walk the layers to find the theoretical receptive field along one axis, per pooling phase.

        Every layer's footprint is a rectangle, so each axis can be walked alone: each feature
        of a 1-D signal carries the interval of input pixels it depends on, and each layer maps
        those intervals the way it maps values (:func:`_span`). The intervals of ``divisor``
        consecutive output pixels far from the borders, starting on the pooling grid, cover
        every phase.

        Returns
        -------
        (left, right)
            Integer arrays of length ``divisor``: for an output pixel at phase ``p`` (its index
            modulo ``divisor``), how far left and right the input pixels it depends on reach.
        """
        n = 64 * self.divisor
        while True:
            index = np.arange(n)
            lo, hi = self._graph(
                (index, index), _span, lambda a, b: (np.minimum(a[0], b[0]), np.maximum(a[1], b[1]))
            )
            mid = np.arange(n // 2, n // 2 + self.divisor)
            if lo[mid].min() > 0 and hi[mid].max() < n - 1:  # untouched by the borders
                return mid - lo[mid], hi[mid] - mid
            n *= 2


Interval = tuple[np.ndarray, np.ndarray]


def _gather(iv: Interval, sources: list[np.ndarray]) -> Interval:
    """Union of the intervals at the given source indices (out-of-range sources are padding)."""
    lo, hi = iv
    n = len(lo)
    out_lo = np.full(len(sources[0]), np.iinfo(np.int64).max)
    out_hi = np.full(len(sources[0]), np.iinfo(np.int64).min)
    for src in sources:
        ok = (src >= 0) & (src < n)
        out_lo[ok] = np.minimum(out_lo[ok], lo[src[ok]])
        out_hi[ok] = np.maximum(out_hi[ok], hi[src[ok]])
    return out_lo, out_hi


def _span(module: nn.Module, iv: Interval) -> Interval:
    """Map per-feature input intervals through ``module`` along one spatial axis."""
    n = len(iv[0])
    if isinstance(module, nn.Sequential):
        for child in module:
            iv = _span(child, iv)
        return iv
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
        k, s, p, d = (
            v if isinstance(v, int) else v[0]
            for v in (module.kernel_size, module.stride, module.padding, module.dilation)
        )
        n_out = (n + 2 * p - d * (k - 1) - 1) // s + 1
        o = np.arange(n_out)
        return _gather(iv, [o * s - p + t * d for t in range(k)])
    if isinstance(module, nn.ConvTranspose2d):
        (k, s, p) = module.kernel_size[0], module.stride[0], module.padding[0]
        o = np.arange((n - 1) * s - 2 * p + k)
        # output o receives input i through tap t where o + p = i * s + t
        return _gather(iv, [np.where((o + p - t) % s == 0, (o + p - t) // s, -1) for t in range(k)])
    if isinstance(module, nn.Upsample):
        scale = int(
            module.scale_factor if not isinstance(module.scale_factor, tuple) else module.scale_factor[0]
        )
        o = np.arange(n * scale)
        if module.mode == "nearest":
            return _gather(iv, [o // scale])
        src = np.maximum((o + 0.5) / scale - 0.5, 0.0)  # bilinear, align_corners=False
        i0 = np.floor(src).astype(np.int64)
        i1 = np.where(src > i0, np.minimum(i0 + 1, n - 1), i0)
        return _gather(iv, [i0, i1])
    # norm, activation, dropout, identity: pointwise along the spatial axes (see UNetConfig.norm)
    return iv


# ==================================================================== fast inference
def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``"auto"`` -> cuda, then mps, then cpu; anything else is passed to :class:`torch.device`."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    from volseg.storage.paths import check_device

    check_device(device)  # one line naming what this torch was built with, for a device it lacks
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(
            f"device {device!r} is not a torch device; use cpu, cuda, cuda:1, mps or auto"
        ) from None


def _cpu_bf16_is_fast() -> bool:
    for probe in (
        lambda: torch.cpu._is_avx512_bf16_supported(),
        lambda: torch.cpu._is_amx_tile_supported(),
        lambda: torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    ):
        with contextlib.suppress(Exception):
            if probe():
                return True
    return False


def resolve_precision(device: str | torch.device, precision: str = "auto") -> str:
    """Resolve ``precision`` (auto | bf16 | fp16 | fp32) for ``device`` to bf16, fp16 or fp32.

    ``auto``: on CPU bf16 where the processor has native bf16 (AVX512-BF16 or AMX), else fp32;
    on CUDA bf16 where supported, else fp16; on MPS fp16.
    """
    if precision not in PRECISIONS:
        raise OptionError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    kind = resolve_device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if kind == "mps":
        return "fp16"
    return "bf16" if kind == "cpu" and _cpu_bf16_is_fast() else "fp32"


def autocast_context(
    device: str | torch.device, precision: str = "auto"
) -> contextlib.AbstractContextManager:
    """Autocast for ``device`` at ``precision`` (resolved by :func:`resolve_precision`); a no-op for fp32."""
    resolved = resolve_precision(device, precision)
    if resolved == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float16
    return torch.autocast(device_type=resolve_device(device).type, dtype=dtype)


def prepare_for_inference(model: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Move ``model`` to ``device`` in channels_last memory format and eval mode (in place; returned).

    On the 2-core development CPU (base 16, depth 4, 512 x 512, 2 threads) the forward runs at
    1.1 Mvox/s in fp32, 1.6 in fp32 channels_last and 3.6 in bf16 autocast channels_last.
    Precision is applied per call by :func:`autocast_context`.
    """
    return model.to(device=resolve_device(device), memory_format=torch.channels_last).eval()


# ===================================================================== normalisation
def check_normalization(normalization: Any) -> dict[str, Any]:
    """Validate and return ``{"mode": "meanstd", "mean": float, "std": float}`` (std > 0)."""
    ok = (
        isinstance(normalization, dict)
        and normalization.get("mode") == "meanstd"
        and all(isinstance(normalization.get(k), (int, float)) for k in ("mean", "std"))
        and math.isfinite(normalization["mean"])
        and math.isfinite(normalization["std"])
        and normalization["std"] > 0
    )
    if not ok:
        raise OptionError(
            f"normalization {normalization!r}: write {{'mode': 'meanstd', 'mean': M, 'std': S}} with S > 0"
        )
    return {"mode": "meanstd", "mean": float(normalization["mean"]), "std": float(normalization["std"])}


def normalize(array: Any, normalization: dict[str, Any]) -> Any:
    """Apply the model's input normalisation: ``(float32(x) - mean) / std``, as float32.

    Works on numpy and dask arrays alike (elementwise); the shape is unchanged.
    """
    norm = check_normalization(normalization)
    return (array.astype(np.float32) - np.float32(norm["mean"])) / np.float32(norm["std"])


# ======================================================================== model file
_LEAF_TYPES = (str, int, float, bool)


def _plain(obj: Any, where: str) -> Any:
    """Copy of ``obj`` made only of what ``weights_only`` loading accepts (numpy -> python / tensors)."""
    if obj is None or type(obj) in _LEAF_TYPES or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    for kind in (int, float, str):  # subclasses (IntEnum, torch's TorchVersion) are not plain data
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        return {_plain(k, where): _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise OptionError(
        f"model file: {where} is a {type(obj).__name__}; store only tensors, numpy arrays, dicts, lists, "
        f"str, int, float, bool or None"
    )


def save_model(
    path: str | os.PathLike,
    model: UNet,
    *,
    normalization: dict[str, Any],
    foreground: list[int],
    label_convention: str,
    provenance: dict[str, Any],
    metrics: dict[str, Any],
    train_config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write a model (or a training checkpoint) to one file, atomically.

    The file is written to a temporary name in the same folder, fsynced, then renamed over
    ``path``, so a reader sees either the old file or the complete new one.

    Parameters
    ----------
    path
        The file to write (conventionally ``*.pt``).
    model
        The :class:`UNet`; its config and weights (moved to CPU, contiguous) are stored.
    normalization
        ``{"mode": "meanstd", "mean": float, "std": float}``, see :func:`normalize`.
    foreground
        Label values of the positive class (binary) in the training labels.
    label_convention
        Free text saying what the output means, e.g. ``"membrane=1 (labels == 0)"``.
    provenance, metrics, train_config, extra
        Plain data (dicts, lists, str, numbers, bool, None; numpy scalars and arrays are converted).
    training_state
        Optional state to resume training (optimizer and scheduler state dicts, step, RNG states
        as tensors / lists / dicts of ints); stored under ``"training_state"``, same rules.

    Returns
    -------
    Path
        ``path``.
    """
    from volseg.version import __version__

    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "normalization": check_normalization(normalization),
        "foreground": [int(v) for v in foreground],
        "label_convention": str(label_convention),
        "provenance": _plain(provenance, "provenance"),
        "metrics": _plain(metrics, "metrics"),
        "train_config": _plain(train_config, "train_config"),
        "extra": _plain(extra or {}, "extra"),
        "saved_with": {"volseg": __version__, "torch": str(torch.__version__)},
        "training_state": _plain(training_state, "training_state"),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # make the rename durable; not possible on every platform
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


_TRAINED = "pass the .pt file written by 'volseg train'"
_REPAIR = "restore the file from a copy or train the model again with 'volseg train'"
# What a volseg model file holds besides format, format_version and the optional training_state.
_PARTS = {
    "config": dict,
    "normalization": dict,
    "foreground": list,
    "label_convention": str,
    "provenance": dict,
    "metrics": dict,
    "train_config": dict,
    "extra": dict,
    "saved_with": dict,
    "state_dict": dict,
}
# torch wraps the restricted unpickler's reason in advice on how to load the file unsafely
_TORCH_ADVICE = (
    "In PyTorch",
    "This file can still",
    "(1)",
    "(2)",
    "Please file an issue",
    "Check the documentation",
    "Re-running",
)
# torch's words for a file that needs pickled code or objects its restricted unpickler does not make
_CODE_HINTS = (
    "GLOBAL",
    "unrecognized function",
    "Can only create new object",
    "must be imported",
    "TorchScript",
)
_GLOBAL = re.compile(r"\bGLOBAL (.*?)(?: was not | whose module |$)", re.MULTILINE)
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", re.ASCII)


class _Damage(Exception):
    """A loaded model file whose parts do not fit together (turned into :class:`ModelError`)."""


def _printable(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters, with anything unprintable (control bytes, newlines) as ``?``."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _reason(exc: BaseException) -> str:
    """``Type: first line of the reason`` of ``exc``, short and printable, without torch's advice."""
    text = str(exc).rpartition("WeightsUnpickler error:")[2]
    lines = (line.strip().removeprefix("Weights only load failed.").strip() for line in text.splitlines())
    first = next((line for line in lines if line and not line.startswith(_TORCH_ADVICE)), "")
    return f"{type(exc).__name__}: {_printable(first)}" if first else type(exc).__name__


def _unsafe_reason(message: str) -> str | None:
    """The global a file refused by torch's restricted unpickler tried to load.

    ``None`` when ``message`` is not about pickled code or objects (a damaged or foreign file),
    ``""`` when it is but names no readable global. torch writes builtins without their module
    (``GLOBAL open``); they are named in full (``builtins.open``).
    """
    if not any(hint in message for hint in _CODE_HINTS):
        return None
    match = _GLOBAL.search(message)
    name = match.group(1).rstrip(".,;:") if match else ""
    if not _DOTTED.fullmatch(name):
        return ""
    return name if "." in name else f"builtins.{name}"


def _check_archive(path: Path) -> None:
    """Refuse a zip archive (torch's file format) that is damaged or whose parts fail their CRC-32.

    torch's reader does not check the checksums, so without this a changed byte inside a weight
    would load as a silently different model. Parts with no checksum recorded (CRC 0, written
    with ``torch.serialization.set_crc32_options(False)``) are not checked.
    """
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # torch's own test; other files are its legacy format
            return
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0:
                    continue
                with archive.open(info) as part:
                    while part.read(1 << 20):
                        pass
    # any bytes can follow the header: BadZipFile, EOFError, zlib.error, NotImplementedError, ...
    except Exception as exc:
        if isinstance(exc, zipfile.BadZipFile) and "CRC" in str(exc):
            raise ModelError(f"model {path}: damaged (a part fails its checksum); {_REPAIR}") from None
        raise ModelError(
            f"model {path}: not a volseg model file (damaged zip archive: {_reason(exc)}); {_TRAINED}"
        ) from None


def _torch_load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, every failure one :class:`ModelError` line.

    Pickled code is never run: torch's restricted unpickler refuses it, and the refusal names the
    global the file tried to load. torch's warnings (legacy format, pickle protocol, TorchScript
    archive) are silenced; the error or the checks that follow say what matters.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any bytes reach the unpickler: IndexError, KeyError, MemoryError, ...
        unsafe = _unsafe_reason(str(exc)) if isinstance(exc, (pickle.UnpicklingError, RuntimeError)) else None
        if unsafe:
            raise ModelError(
                f"model {path}: refused, the file holds pickled code (it tried to load {unsafe}); "
                "volseg model files never need it, use a model written by 'volseg train'"
            ) from None
        if unsafe == "":
            raise ModelError(
                f"model {path}: refused, the file holds pickled code or objects volseg does not run; "
                "volseg model files never need them, use a model written by 'volseg train'"
            ) from None
        raise ModelError(f"model {path}: not a volseg model file ({_reason(exc)}); {_TRAINED}") from None


def _payload_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with the parts of a loaded volseg model file, or None."""
    for key, kind in _PARTS.items():
        if key not in data:
            return f"{key} is missing"
        if not isinstance(data[key], kind):
            return f"{key} is a {type(data[key]).__name__}, not a {kind.__name__}"
    state = data.get("training_state")
    if state is not None and not isinstance(state, dict):
        return f"training_state is a {type(state).__name__}, not a dict"
    for name, tensor in data["state_dict"].items():
        if not (isinstance(name, str) and isinstance(tensor, torch.Tensor)):
            return f"state_dict entry {_printable(repr(name), 60)} is not a named tensor"
    if not all(type(v) is int for v in data["foreground"]):
        return "foreground is not a list of label values (int)"
    try:
        check_normalization(data["normalization"])
    except OptionError as exc:
        return _printable(str(exc), 200)
    return None


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a model file without building the model (tensors on CPU).

    Returns the whole stored dict, ``state_dict`` and ``training_state`` included (what a
    resumed training run needs), after checking that every part save_model writes is there
    with its type. Raises :class:`ModelError` with one line for a missing path, a folder, an
    unreadable file, a file that is not a volseg model (any bytes: random, truncated, a plain
    state_dict, another archive), a damaged one (changed bytes, parts of the wrong type), a newer
    format version, or a file holding pickled code, which is refused without being run.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model {path}: no such file; {_TRAINED}")
    if path.is_dir():
        raise ModelError(f"model {path}: is a folder, not a model file; {_TRAINED}")
    if path.stat().st_size == 0:
        raise ModelError(f"model {path}: the file is empty; {_TRAINED}")
    try:
        open(path, "rb").close()
    except OSError as exc:
        raise ModelError(
            f"model {path}: cannot be read ({_reason(exc)}); check the path and its permissions"
        ) from None
    _check_archive(path)
    data = _torch_load(path)
    fmt = data.get("format") if isinstance(data, dict) else None
    if not (isinstance(fmt, str) and fmt == FORMAT):
        what = (
            "a plain state_dict or other checkpoint" if isinstance(data, dict) else f"a {type(data).__name__}"
        )
        raise ModelError(
            f"model {path}: not a volseg model file (it holds {what}); use a model written by 'volseg train'"
        )
    version = data.get("format_version")
    if type(version) is not int:
        problem = "is missing" if version is None else f"is a {type(version).__name__}, not an int"
        raise ModelError(f"model {path}: damaged or inconsistent (format_version {problem}); {_REPAIR}")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"model {path}: format version {version!r} is not supported; this volseg reads version "
            f"{FORMAT_VERSION} (upgrade volseg for newer files)"
        )
    problem = _payload_problem(data)
    if problem:
        raise ModelError(f"model {path}: damaged or inconsistent ({problem}); {_REPAIR}")
    return data


def _check_weights(config: UNetConfig, state_dict: dict[str, torch.Tensor]) -> None:
    """Raise :class:`_Damage` unless ``state_dict`` holds the finite tensors of a UNet of ``config``.

    Compared with a skeleton on the meta device, which allocates nothing: a damaged config
    (``base_channels=10**6``) cannot make volseg allocate more than the file's own tensors.
    """
    convs = (2 * config.depth + 1) * config.convs_per_level
    if convs > len(state_dict):  # one weight per convolution at least; also bounds the skeleton
        raise _Damage(f"the config has {convs} convolutions, the file {len(state_dict)} tensors")
    with torch.device("meta"):
        skeleton = UNet(config).state_dict()
    missing, unexpected = sorted(set(skeleton) - set(state_dict)), sorted(set(state_dict) - set(skeleton))
    if missing or unexpected:
        names = [_printable(n, 60) for n in (missing or unexpected)[:3]]
        raise _Damage(f"weights {'missing' if missing else 'unexpected'} for the config: {', '.join(names)}")
    for name, want in skeleton.items():
        got = state_dict[name]
        if got.shape != want.shape:
            raise _Damage(f"weight {name} has shape {tuple(got.shape)}, the config needs {tuple(want.shape)}")
        odd = got.layout != torch.strided or got.is_quantized or got.is_complex()
        if odd or got.dtype.is_floating_point != want.dtype.is_floating_point:
            raise _Damage(f"weight {name} is a {got.dtype} {got.layout} tensor, not {want.dtype}")
        if got.dtype.is_floating_point and not bool(torch.isfinite(got).all()):
            raise _Damage(f"weight {name} holds NaN or infinite values")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> UNet:
    """Load a model file written by :func:`save_model`, without running pickled code.

    Returns
    -------
    UNet
        In eval mode on ``device``, rebuilt from the stored config, with ``.volseg_meta``: the
        stored dict without ``state_dict`` and ``training_state`` (normalization, foreground,
        label_convention, provenance, metrics, train_config, extra, ...).

    Raises
    ------
    ModelError
        See :func:`read_model_file`; also ("damaged or inconsistent") when the config is invalid
        or the weights do not fit it (names, shapes, kinds).
    """
    data = read_model_file(path)
    try:
        config = UNetConfig.from_dict(data["config"])
        _check_weights(config, data["state_dict"])
        model = UNet(config)
        model.load_state_dict(data["state_dict"], strict=True)
    except (OptionError, _Damage, TypeError, ValueError, RuntimeError, MemoryError) as exc:
        # OptionError / _Damage: the config or the weights checked; the others: odd values in them
        reason = _printable(str(exc), 200) if isinstance(exc, (OptionError, _Damage)) else _reason(exc)
        raise ModelError(f"model {path}: damaged or inconsistent ({reason}); {_REPAIR}") from None
    model.volseg_meta = {k: v for k, v in data.items() if k not in ("state_dict", "training_state")}
    return model.to(resolve_device(device)).eval()


def model_checksum(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of the model file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
