"""Pure per-block U-Net inference: arrays in, probabilities out, no I/O.

The contract shared by training's validation and the predict stage
-------------------------------------------------------------------
:func:`infer_padded` takes a block of raw sections that already carries its context: up to ``h``
pixels of real data on each side in y and x (``margins``; less only where the section ends,
after ``edge`` mirrored pixels), and ``c = model.config.context`` sections on each side in z.
It returns the probabilities of the inner block, and the result does not depend on the tile
size, the batch size or where the block sits in the volume:

* inner tiles start at multiples of ``tile`` (a multiple of ``model.divisor``) from the inner
  origin, so every tile's input window lies on the network's pooling grid, the same grid as a
  whole-section forward; windows take ``h`` on each side and stop where the block's context
  stops, as the whole-section forward stops at the (edge-padded) section's edges;
* a window that is not a multiple of the divisor (the last tile in a row or column, when the
  block's size is not a multiple of the divisor) is padded at its far end by symmetric reflection
  of the block, exactly as a whole-section forward pads the end of the padded section.

With ``h >= model.halo`` (a multiple of the divisor) the output equals a whole-section forward of
the same sections padded by the same edge (measured: identical for float32 on CPU). A smaller halo is
*not* a safe speed-up: a trained model's output changes by 0.01 in probability at 5/6 of it.
Blocks must start (in y and x) on the divisor grid of the volume, and only blocks at the volume's
far edge may have a size that is not a multiple of the divisor; both hold when the chunk size is
a multiple of the divisor.

At the volume's edges, ``edge`` pixels (:attr:`InferOptions.edge`, default :data:`DEFAULT_EDGE`)
are mirrored with numpy's ``"symmetric"`` mode (the edge pixel repeated: ``[2 1 0 | 0 1 2]``),
which is what ``dask.array.overlap`` calls ``boundary="reflect"``; beyond them the network's
zero padding applies. :func:`infer_image` does this for whole sections; a caller that builds
blocks gives :func:`infer_padded` the same pixels and the ``margins`` it holds.

Normalisation: pass the raw values and ``normalization`` (the model file's dict); each window
is cast to float32 and normalised as it is batched, so no float copy of the whole block is made.
Pass ``normalization=None`` when the input is already normalised.

On a CUDA device the batches take another route (:func:`_run_batches_cuda`), with the same windows,
batches and output: each batch's windows are built in the block's own dtype (uint8 moves a quarter of
the bytes of float32 over PCIe) in pinned host memory, uploaded asynchronously, and converted and
normalised on the GPU by the same float32 operations in the same order, so that the network sees the
same values; while the GPU runs one batch, the host builds and uploads the next one and stores the one
before, whose probabilities come back asynchronously into pinned memory. No speed of this path has
been measured here (the development machine has no GPU).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from volseg.core.tiling import PAD_MODE, check_size, round_up, tile_windows
from volseg.errors import OptionError
from volseg.nn.intensity import check_normalization
from volseg.nn.runtime import PRECISIONS, autocast_context, prepare_for_inference, resolve_device

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_EDGE",
    "PAD_MODE",
    "InferOptions",
    "infer_image",
    "infer_padded",
    "pad_block",
]

#: Mirrored context (px) at the volume's edges by default (see :attr:`InferOptions.edge`). None
#: is needed: the models train on patches whose borders meet the zero padding, and on the ISBI
#: 2012 validation sections mirroring the whole halo changed no score (docs/tiling.md).
DEFAULT_EDGE = 0
Margins = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right)) context in y and x
ACTIVATIONS = ("auto", "sigmoid", "softmax", "none")


@dataclass(frozen=True)
class InferOptions:
    """How to run the forward passes.

    Parameters
    ----------
    tile
        Inner tile edge (px), a multiple of ``model.divisor``; the window is ``tile + 2 * halo``.
        Tiles never exceed the block (rounded up to the divisor). The halo costs
        ``(tile + 2h)^2 / tile^2``: at depth 4 (h = 96) 3.1 for 256, 1.9 for 512, 1.4 for 1024.
        Measured on the 2-core development CPU (bf16): 1.2 / 1.9 / 2.1 / 1.7 inner Mvox/s for
        tiles of 256 / 512 / 768 / 1024 (larger windows run slower per pixel there).
    halo
        Context (px) on each side used by :func:`infer_image` and by callers that build blocks
        for :func:`infer_padded`; ``None`` means ``model.halo``.
    edge
        Mirrored context (px, a multiple of ``model.divisor``) added at the volume's edges in y
        and x; beyond it the network's own zero padding applies, as on every training patch.
        ``None`` means :data:`DEFAULT_EDGE`; values above the halo act as the halo (the U-Net
        paper's overlap-tile mirroring). A section that fits one tile costs
        ``(S + 2 edge)^2 / S^2`` of a plain forward: 1.0 with 0, 1.9 with 96 for S = 512.
    batch_size
        Tiles per forward pass (tiles of one shape, from any sections and positions).
    precision
        ``auto`` | ``bf16`` | ``fp16`` | ``fp32`` (see :func:`volseg.nn.runtime.resolve_precision`).
    device
        Torch device (``cpu``, ``cuda``, ``cuda:1``, ``mps``) or ``auto``; the model is moved there.
    tta
        Average the probabilities over the 8 dihedral transforms of each window (rotations by
        90 degrees, with and without a flip), each inverted before averaging; 8x the time.
    activation
        ``auto``: sigmoid for one output channel (probability of the positive class), softmax
        over classes for several; or ``sigmoid`` / ``softmax`` / ``none`` (raw logits).
    """

    tile: int = 512
    halo: int | None = None
    edge: int | None = None
    batch_size: int = 4
    precision: str = "auto"
    device: str = "cpu"
    tta: bool = False
    activation: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.tile, int) or self.tile <= 0:
            raise OptionError(f"tile {self.tile!r}: use a positive multiple of the model's divisor, e.g. 512")
        if self.halo is not None and (not isinstance(self.halo, int) or self.halo < 0):
            raise OptionError(
                f"halo {self.halo!r}: use a non-negative number of pixels, or None for the model's"
            )
        if self.edge is not None and (not isinstance(self.edge, int) or self.edge < 0):
            raise OptionError(
                f"edge {self.edge!r}: use a non-negative number of pixels (a multiple of the model's "
                f"divisor), or None for {DEFAULT_EDGE}"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise OptionError(f"batch_size {self.batch_size!r}: use 1 or more")
        if self.precision not in PRECISIONS:
            raise OptionError(f"precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.activation not in ACTIVATIONS:
            raise OptionError(f"activation {self.activation!r}: use one of {', '.join(ACTIVATIONS)}")

    def halo_for(self, model: nn.Module) -> int:
        """The halo to use with ``model``: :attr:`halo`, or ``model.halo`` when None."""
        return int(model.halo if self.halo is None else self.halo)

    def edge_for(self, model: nn.Module) -> int:
        """The mirrored edge for ``model``: :attr:`edge` (default :data:`DEFAULT_EDGE`), at most the halo."""
        edge = DEFAULT_EDGE if self.edge is None else self.edge
        check_size(edge, int(model.divisor), "edge", allow_zero=True)
        return min(int(edge), self.halo_for(model))


def pad_block(image: np.ndarray, halo: int, context: int = 0) -> np.ndarray:
    """Pad ``(Z, Y, X)`` sections by ``context`` in z and ``halo`` in y and x (:data:`PAD_MODE`).

    Gives the input :func:`infer_padded` expects for a block that touches the volume's edges on
    all sides, with ``halo`` pixels mirrored there (:func:`infer_image` pads by the edge);
    works for pads larger than the block (the reflection repeats).
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise OptionError(f"image of shape {image.shape}: expected sections as (Z, Y, X)")
    return np.pad(image, ((context, context), (halo, halo), (halo, halo)), mode=PAD_MODE)


def infer_image(
    model: nn.Module,
    image: np.ndarray,
    options: InferOptions = InferOptions(),
    normalization: dict[str, Any] | None = None,
) -> np.ndarray:
    """Probabilities for whole sections: mirror ``edge`` pixels at their edges, then :func:`infer_padded`.

    The reference path: training validation uses it, and the predict stage's output must equal
    it (a block's halo is real data from its neighbours, or this same edge at the volume's
    edges, beyond which the network's zero padding applies).

    Parameters
    ----------
    model
        A :class:`volseg.nn.unet.UNet` (or a module with ``divisor``, ``halo`` and a ``config``
        with ``context`` and ``out_channels``).
    image
        ``(Z, Y, X)`` sections, raw (with ``normalization``) or already normalised.
    options, normalization
        As for :func:`infer_padded`; ``options.edge`` sets the mirrored edge.

    Returns
    -------
    np.ndarray
        float32 ``(Z, Y, X)``, or ``(N, Z, Y, X)`` for a model with N >= 2 output channels.
    """
    halo, edge = options.halo_for(model), options.edge_for(model)
    padded = pad_block(image, edge, model.config.context)
    return infer_padded(model, padded, halo, options, normalization, margins=((edge, edge), (edge, edge)))


def infer_padded(
    model: nn.Module,
    padded: np.ndarray,
    halo: int,
    options: InferOptions = InferOptions(),
    normalization: dict[str, Any] | None = None,
    margins: Margins | None = None,
) -> np.ndarray:
    """Probabilities for the inner region of a block that carries its own halo and z context.

    Parameters
    ----------
    model
        A :class:`volseg.nn.unet.UNet`, or any module with ``divisor``, ``halo`` and a ``config``
        with ``context`` and ``out_channels`` mapping ``(B, 2c+1, H, W)`` to ``(B, out, H, W)``.
        It runs in eval mode on ``options.device`` in channels_last format: a model not yet
        there is moved and converted in place (:func:`volseg.nn.runtime.prepare_for_inference`), and
        one in train mode goes back to train mode on return. A prepared model in eval mode is
        not modified, so threads may share it.
    padded
        ``(Z + 2c, top + Y + bottom, left + X + right)`` with ``c = model.config.context`` and
        the y / x context of ``margins``: any real dtype. The context is real data from the
        neighbours, or :data:`PAD_MODE` mirroring at the volume's edges, done by the caller.
    halo
        ``h``, the context each tile's window takes on each side in y and x: a multiple of
        ``model.divisor``, normally ``model.halo`` (exact; less is approximate, see above).
    options
        Tile, batch size, precision, device, TTA and activation; ``options.halo`` and
        ``options.edge`` are not used here.
    normalization
        The model's ``{"mode": "meanstd", "mean", "std"}``, applied to each window as float32;
        ``None`` if ``padded`` is already normalised.
    margins
        ``((top, bottom), (left, right))``: the context ``padded`` holds on each side (top and
        left a multiple of ``model.divisor``); ``None`` means ``halo`` on every side. A side with less
        than ``halo`` is the edge of the section: windows stop there, and the network's zero
        padding takes over, as in a forward over the whole (edge-padded) section.

    Returns
    -------
    np.ndarray
        float32 ``(Z, Y, X)`` for a one-channel model (the positive-class probability with the
        default activation), or ``(N, Z, Y, X)`` for N >= 2 channels (class probabilities).

    On a CUDA device the same batches run through :func:`_run_batches_cuda`: windows uploaded in
    ``padded``'s own dtype from pinned memory and normalised on the GPU, the host building batch
    ``i + 1`` and storing batch ``i - 1`` while the GPU computes batch ``i``; the network sees the same
    float32 windows. Other devices (CPU, MPS) run the plain loop.
    """
    context, divisor = int(model.config.context), int(model.divisor)
    margins = ((halo, halo), (halo, halo)) if margins is None else margins
    shape = _inner_shape(padded, halo, context, margins)
    check_size(options.tile, divisor, "tile")
    check_size(halo, divisor, "halo", allow_zero=True)
    for (before, _), axis in zip(margins, "yx", strict=True):  # windows must start on the pooling grid
        check_size(before, divisor, f"{axis} margin", allow_zero=True)
    norm = None if normalization is None else check_normalization(normalization)
    channels = int(model.config.out_channels)
    activation = _activation(options.activation, channels)
    out = np.empty((channels, *shape), dtype=np.float32)
    device = resolve_device(options.device)
    was_training = model.training
    if was_training or not _is_prepared(model, device):  # a prepared model is left untouched (threads)
        prepare_for_inference(model, device)
    tiles = _tiles(shape, options.tile, divisor, halo, margins, padded.shape[1:])
    try:
        with torch.inference_mode(), autocast_context(device, options.precision):
            if device.type == "cuda":  # raw uploads from pinned memory, host work overlapped with the GPU's
                batches = _batches(tiles, options.batch_size)
                _run_batches_cuda(
                    model, padded, batches, context, divisor, norm, activation, options.tta, out, device
                )
            else:
                for batch in _batches(tiles, options.batch_size):
                    windows = _windows(padded, batch, context, divisor, norm)
                    x = torch.from_numpy(windows).to(device).contiguous(memory_format=torch.channels_last)
                    probs = _forward(model, x, batch[0], activation, options.tta)
                    for t, p in zip(batch, probs.cpu().numpy(), strict=True):
                        out[:, t.z, t.y0 : t.y0 + t.ny, t.x0 : t.x0 + t.nx] = p
    finally:
        if was_training:
            model.train()
    return out[0] if channels == 1 else out


# ------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class Tile:
    """One forward window: inner tile ``(z, y0, x0, ny, nx)`` and where its window lies in ``padded``.

    The window ``[wy0, wy0 + wy) x [wx0, wx0 + wx)`` holds the inner tile from ``(oy, ox)`` on.
    """

    z: int
    y0: int
    x0: int
    ny: int
    nx: int
    wy0: int
    wx0: int
    wy: int
    wx: int
    oy: int
    ox: int

    @property
    def geometry(self) -> tuple[int, ...]:
        """What the tiles of one batch share: inner and window sizes and the inner offset."""
        return self.ny, self.nx, self.wy, self.wx, self.oy, self.ox


def _inner_shape(padded: np.ndarray, halo: int, context: int, margins: Margins) -> tuple[int, int, int]:
    if padded.ndim != 3:
        raise OptionError(f"block of shape {padded.shape}: expected (Z + 2*context, Y + 2*halo, X + 2*halo)")
    if not isinstance(halo, (int, np.integer)) or halo < 0:
        raise OptionError(f"halo {halo!r}: use a non-negative number of pixels")
    (top, bottom), (left, right) = margins
    if min(top, bottom, left, right) < 0:
        raise OptionError(f"margins {margins}: use non-negative numbers of pixels")
    shape = (padded.shape[0] - 2 * context, padded.shape[1] - top - bottom, padded.shape[2] - left - right)
    if min(shape) < 1:
        raise OptionError(
            f"block of shape {padded.shape} is too small for context {context} and margins {margins}: "
            f"need at least ({2 * context + 1}, {top + bottom + 1}, {left + right + 1})"
        )
    return shape


def _is_prepared(model: nn.Module, device: torch.device) -> bool:
    """True when every parameter is on ``device`` and every 4-D one is channels_last."""
    return all(
        p.device.type == device.type
        and (device.index is None or p.device.index == device.index)
        and (p.ndim != 4 or p.is_contiguous(memory_format=torch.channels_last))
        for p in model.parameters()
    )


def _activation(name: str, channels: int) -> str:
    if name == "auto":
        return "sigmoid" if channels == 1 else "softmax"
    if name == "softmax" and channels == 1:
        raise OptionError("activation 'softmax' needs a model with 2 or more output channels; use sigmoid")
    return name


def _tiles(
    shape: tuple[int, int, int],
    tile: int,
    divisor: int,
    halo: int,
    margins: Margins,
    padded_yx: tuple[int, ...],
) -> list[Tile]:
    depth, height, width = shape
    ys = tile_windows(height, tile, divisor, halo, margins[0][0], padded_yx[0])
    xs = tile_windows(width, tile, divisor, halo, margins[1][0], padded_yx[1])
    return [
        Tile(z, y0, x0, ny, nx, wy0, wx0, wy, wx, oy, ox)
        for z in range(depth)
        for y0, ny, wy0, wy, oy in ys
        for x0, nx, wx0, wx, ox in xs
    ]


def _batches(tiles: list[Tile], batch_size: int) -> Iterator[list[Tile]]:
    """Tiles grouped by geometry (they differ only in the first and last row / column), batched."""
    groups: dict[tuple[int, ...], list[Tile]] = defaultdict(list)
    for t in tiles:
        groups[t.geometry].append(t)
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            yield group[i : i + batch_size]


def _windows(
    padded: np.ndarray, batch: list[Tile], context: int, divisor: int, norm: dict[str, Any] | None
) -> np.ndarray:
    """``(B, 2c+1, H, W)`` float32 input windows of a batch of tiles of one geometry.

    A window whose size is not a multiple of the divisor (it ends at the section's far edge) is
    completed by mirroring its own end, as the whole-section forward completes the section.
    """
    wy, wx = batch[0].wy, batch[0].wx
    windows = np.empty(
        (len(batch), 2 * context + 1, round_up(wy, divisor), round_up(wx, divisor)), np.float32
    )
    for window, t in zip(windows, batch, strict=True):
        # z index z of the inner region needs padded sections z .. z + 2c (centre z + c)
        data = padded[t.z : t.z + 2 * context + 1, t.wy0 : t.wy0 + wy, t.wx0 : t.wx0 + wx]
        window[:] = np.pad(
            data, ((0, 0), (0, window.shape[1] - wy), (0, window.shape[2] - wx)), mode=PAD_MODE
        )
    if norm is not None:
        windows -= np.float32(norm["mean"])
        windows /= np.float32(norm["std"])
    return windows


# ------------------------------------------------------------------ the CUDA path
#: The host dtypes uploaded as they are (native byte order) and converted to float32 on the GPU, each with
#: the torch dtype of its host buffer: uint16 travels as the bits of an int16 (torch's uint16 has few CUDA
#: kernels) and is widened on the GPU (:func:`_model_input`). A block of any other dtype (float64, int64,
#: uint32, bool, big-endian, ...) is cast to float32 on the host, as :func:`_windows` casts it.
_HOST_TORCH = {
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "uint16": torch.int16,
    "int32": torch.int32,
    "float16": torch.float16,
    "float32": torch.float32,
}
_UPLOAD_DTYPES = tuple(np.dtype(name) for name in _HOST_TORCH)


def _upload_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the windows of a block of ``dtype`` are built in on the host for the GPU."""
    native = np.dtype(dtype).newbyteorder("=")
    return native if native in _UPLOAD_DTYPES else np.dtype(np.float32)


def _window_shape(batch: list[Tile], context: int, divisor: int) -> tuple[int, int, int, int]:
    """``(B, 2c+1, H, W)`` of a batch's input windows (the window rounded up to the divisor)."""
    t = batch[0]
    return len(batch), 2 * context + 1, round_up(t.wy, divisor), round_up(t.wx, divisor)


def _raw_windows(
    padded: np.ndarray, batch: list[Tile], context: int, divisor: int, out: np.ndarray | None = None
) -> np.ndarray:
    """The input windows of a batch (:func:`_windows`'s pixels), not normalised, in ``out``'s dtype.

    ``out``: ``(B, 2c+1, H, W)`` (:func:`_window_shape`), e.g. a view of a pinned host buffer; ``None``
    allocates one in :func:`_upload_dtype` of ``padded``. A window that is not a multiple of the divisor
    is completed by :data:`PAD_MODE` mirroring of its own end, as in :func:`_windows` (padding copies
    values, so doing it before or after the cast to float32 gives the same pixels).
    """
    shape = _window_shape(batch, context, divisor)
    if out is None:
        out = np.empty(shape, _upload_dtype(padded.dtype))
    if out.shape != shape:
        raise ValueError(f"window buffer of shape {out.shape} for windows of shape {shape}")
    wy, wx = batch[0].wy, batch[0].wx
    pad = ((0, 0), (0, shape[2] - wy), (0, shape[3] - wx))
    for window, t in zip(out, batch, strict=True):
        data = padded[t.z : t.z + 2 * context + 1, t.wy0 : t.wy0 + wy, t.wx0 : t.wx0 + wx]
        window[:] = np.pad(data, pad, mode=PAD_MODE) if pad[1][1] or pad[2][1] else data
    return out


def _host_buffer(shape: tuple[int, ...], dtype: np.dtype, pin: bool) -> tuple[torch.Tensor, np.ndarray]:
    """A host tensor for ``shape`` values of numpy ``dtype`` (pinned with ``pin``) and its numpy view.

    ``dtype`` is a key of :data:`_HOST_TORCH`, which gives the tensor's dtype (of the same bits).
    """
    dtype = np.dtype(dtype)
    tensor = torch.empty(shape, dtype=_HOST_TORCH[dtype.name], pin_memory=pin)
    return tensor, tensor.numpy().view(dtype)


def _norm_scalars(norm: dict[str, Any] | None, device: torch.device) -> tuple[torch.Tensor, ...] | None:
    """``(mean, std)`` as float32 0-d tensors on ``device`` (made by a fill there: no host copy, no sync).

    Dividing by a tensor on the device, not by a Python number, keeps CUDA's division a true division:
    with a host scalar torch multiplies by its reciprocal, which can differ from ``x / std`` in the last bit.
    """
    if norm is None:
        return None
    return tuple(torch.full((), float(norm[k]), dtype=torch.float32, device=device) for k in ("mean", "std"))


def _model_input(x: torch.Tensor, dtype: np.dtype, scalars: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
    """Uploaded raw windows (numpy ``dtype``'s values in ``x``) -> the float32 channels_last network input.

    ``(float32(x) - mean) / std`` in float32, subtract then divide, as :func:`_windows` computes it on
    the host; the conversions are exact or round to nearest like numpy's, and the subtraction and the
    true division (:func:`_norm_scalars`) are IEEE float32 operations, so the values are :func:`_windows`'
    bit for bit (tested on CPU; on CUDA by the ``gpu`` tests). ``x`` itself is not modified.
    """
    if np.dtype(dtype) == np.uint16:  # the bits of an int16 (see _HOST_TORCH): widen and mask
        x = x.to(torch.int32).bitwise_and_(0xFFFF)
    x = x.to(dtype=torch.float32, memory_format=torch.channels_last)
    if scalars is None:
        return x
    mean, std = scalars
    return torch.sub(x, mean).div_(std)  # out of place first: x may be the caller's (host) buffer


class _HostBuffers:
    """Reusable host buffers (pinned with ``pin``) of one shape and dtype at a time, ``depth`` in turn.

    :meth:`take` hands out a free buffer of the shape and dtype, first waiting for the asynchronous copy
    that used it last (its event), once ``depth`` of them exist; otherwise (fewer, or none free) it
    allocates one. :meth:`give` puts one back with the event of the copy still reading or filling it
    (``None``: nothing pending). Asking for another shape or dtype drops the free buffers of the others
    (batches come grouped by geometry, so a geometry does not come back): what stays pinned is a few
    buffers of the current batch, and torch's pinned-memory cache keeps the dropped ones for reuse.
    """

    def __init__(self, pin: bool, depth: int = 2) -> None:
        self.pin, self.depth = pin, depth
        self._free: dict[tuple[Any, ...], deque[tuple[torch.Tensor, np.ndarray, Any]]] = defaultdict(deque)
        self._count: dict[tuple[Any, ...], int] = defaultdict(int)
        self.allocated = 0  # buffers allocated so far (for tests)

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[torch.Tensor, np.ndarray]:
        key = (tuple(shape), np.dtype(dtype))
        for other in [k for k in self._free if k != key]:  # a buffer given back late comes back here too
            del self._free[other]
            self._count.pop(other, None)
        free = self._free[key]
        if free and self._count[key] >= self.depth:
            tensor, view, event = free.popleft()
            if event is not None:
                event.synchronize()
            return tensor, view
        self._count[key] += 1
        self.allocated += 1
        return _host_buffer(key[0], key[1], self.pin)

    def give(self, buffer: tuple[torch.Tensor, np.ndarray], event: Any = None) -> None:
        tensor, view = buffer
        self._free[(tuple(tensor.shape), view.dtype)].append((tensor, view, event))


def _store(out: np.ndarray, batch: list[Tile], probs: np.ndarray) -> None:
    """Write a batch's ``(B, N, ny, nx)`` probabilities into ``out`` ``(N, Z, Y, X)``."""
    for t, p in zip(batch, probs, strict=True):
        out[:, t.z, t.y0 : t.y0 + t.ny, t.x0 : t.x0 + t.nx] = p


def _run_batches_cuda(
    model: nn.Module,
    padded: np.ndarray,
    batches: Iterable[list[Tile]],
    context: int,
    divisor: int,
    norm: dict[str, Any] | None,
    activation: str,
    tta: bool,
    out: np.ndarray,
    device: torch.device,
) -> None:
    """:func:`infer_padded`'s loop for a model on a CUDA device: fewer PCIe bytes, host work overlapped.

    The values are those of the CPU loop (windows, normalisation, batches, TTA, activation, crop); what
    differs is how the bytes move:

    * **raw uploads**: each batch's windows are built on the host in the block's own dtype
      (:func:`_raw_windows`; uint8 is a quarter of float32's bytes over PCIe) in a pinned buffer
      (:class:`_HostBuffers`, two per geometry in turn, so that filling one never overwrites one still
      being copied), copied with ``non_blocking=True``, then converted to float32 and normalised on the
      GPU (:func:`_model_input`, the same float32 operations as the host's);
    * **overlap**: CUDA runs asynchronously, so batch ``i + 1`` is built, uploaded and its forward and
      download queued before the host waits for batch ``i``'s probabilities (its event) and stores them:
      the GPU always has the next batch queued while the host builds windows and stores results;
    * **asynchronous downloads** of the float32 probabilities into pinned buffers, read only after the
      CUDA event recorded behind the copy has completed.

    ``model`` is on ``device``. With a CPU device the same steps run with ordinary memory and no events
    (how the tests check them without a GPU).
    """
    cuda = device.type == "cuda"
    dtype = _upload_dtype(padded.dtype)
    scalars = _norm_scalars(norm, device)
    uploads, results = _HostBuffers(pin=cuda), _HostBuffers(pin=cuda)
    pending: tuple[list[Tile], tuple[torch.Tensor, np.ndarray], Any] | None = None

    def event() -> Any:  # behind the work queued so far; blocking: a waiting thread sleeps, not spins
        if not cuda:
            return None
        e = torch.cuda.Event(blocking=True)
        e.record(torch.cuda.current_stream(device))
        return e

    def finish(batch: list[Tile], host: tuple[torch.Tensor, np.ndarray], done: Any) -> None:
        if done is not None:
            done.synchronize()
        _store(out, batch, host[1])
        results.give(host)

    for batch in batches:
        windows = uploads.take(_window_shape(batch, context, divisor), dtype)
        _raw_windows(padded, batch, context, divisor, out=windows[1])
        x = windows[0].to(device, non_blocking=True)
        uploads.give(windows, event())  # refilled only after this upload has finished
        x = _model_input(x, dtype, scalars)
        probs = _forward(model, x, batch[0], activation, tta)
        result = results.take(tuple(probs.shape), np.dtype(np.float32))
        result[0].copy_(probs, non_blocking=True)
        done = event()
        if pending is not None:  # batch i - 1, while the GPU works on batch i
            finish(*pending)
        pending = (batch, result, done)
    if pending is not None:
        finish(*pending)


def _dihedral(x: torch.Tensor, k: int, flip: bool, inverse: bool = False) -> torch.Tensor:
    dims = (-2, -1)
    if inverse:
        return torch.rot90(x.flip(-1) if flip else x, -k, dims)
    x = torch.rot90(x, k, dims)
    return x.flip(-1) if flip else x


def _forward(model: nn.Module, x: torch.Tensor, tile: Tile, activation: str, tta: bool) -> torch.Tensor:
    """Forward (optionally over the 8 dihedral transforms), crop the inner tile, activate, average."""
    ny, nx, oy, ox = tile.ny, tile.nx, tile.oy, tile.ox
    transforms = [(k, flip) for k in range(4) for flip in (False, True)] if tta else [(0, False)]
    total = None
    for k, flip in transforms:
        xt = _dihedral(x, k, flip).contiguous(memory_format=torch.channels_last)
        y = _dihedral(model(xt), k, flip, inverse=True)
        y = y[:, :, oy : oy + ny, ox : ox + nx].float()
        if activation == "sigmoid":
            y = torch.sigmoid(y)
        elif activation == "softmax":
            y = torch.softmax(y, dim=1)
        total = y if total is None else total + y
    return total / len(transforms) if tta else total
