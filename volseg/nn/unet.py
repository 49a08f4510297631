"""The 2-D / 2.5-D U-Net, its config, its receptive field and halo.

U-Net
-----
After Ronneberger et al. (2015), with 'same' padding (3 x 3 convolutions, padding 1) so that
an input of ``(H, W)`` gives an output of ``(H, W)``; ``H`` and ``W`` must be multiples of
``2**depth`` (:attr:`UNet.divisor`). 2.5-D models see ``2 * context + 1`` neighbouring sections
as input channels and predict the middle one. :class:`UNetConfig` is the one place the U-Net's
defaults are declared; the training config and the CLI take theirs from it.

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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from volseg.core.tiling import check_size, round_up
from volseg.errors import OptionError

__all__ = ["NORMS", "UPSAMPLES", "ConvBlock", "UNet", "UNetConfig"]

NORMS = ("batch", "group", "instance", "none")
UPSAMPLES = ("transpose", "bilinear")


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
