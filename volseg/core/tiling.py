"""Pure block and halo arithmetic for tiled prediction: no I/O, no torch, no dask.

Coordinates
-----------
*Global* coordinates index the input volume ``(Z, Y, X)``. A prediction covers a region of
interest (ROI, ``start <= i < stop`` per axis); its output volume has the ROI's shape and
*output* coordinates, ``global = roi_start + output``.

Blocks
------
The output volume is stored in chunks; each chunk is written exactly once. A *block* is the
unit of work of one task: a box of ``chunks_per_block`` whole output chunks (clipped at the
far edges), so that a task can work on a large inner region (less halo overhead) while every
chunk still has exactly one writer.

Seam-free windows
-----------------
The model is a 2-D U-Net whose pooling grid must line up with the whole-section reference
(:func:`volseg.nn.inference.infer_image`), which extends the section by ``edge`` mirrored pixels
and tiles from there. A block whose inner region starts at global ``y0`` therefore computes
from the aligned origin ``floor(y0 / divisor) * divisor`` (at most ``divisor - 1`` extra
pixels) and reads ``halo`` more pixels on each side, but never beyond the section's frame
``[-edge, size + edge)``, where the reference stops too; :func:`aligned_window` gives that
window and how much of its output to crop. Pixels of the window outside the volume are taken
by mirroring (:func:`pad_indices`, numpy's pad modes), exactly as the reference extends the
section, so the stitched output equals the whole-section output.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from volseg.errors import OptionError

__all__ = [
    "PAD_MODE",
    "check_size",
    "round_up",
    "Block",
    "Window",
    "aligned_window",
    "blocks",
    "chunk_ids_in",
    "grid_shape",
    "halo_overhead",
    "parse_roi",
    "pad_indices",
    "plan_overhead",
    "region",
    "resolve_roi",
    "source_window",
    "tile_starts",
    "tile_windows",
    "window_overhead",
]

Span = tuple[int, int]  # (start, stop), stop exclusive
Roi = tuple[Span, Span, Span]


# ----------------------------------------------------------------------------- ROI
#: numpy pad mode for volume edges and short tiles; dask.array.overlap's boundary="reflect".
PAD_MODE = "symmetric"


def round_up(n: int, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= ``n``."""
    return -(-int(n) // divisor) * divisor


def check_size(size: int, divisor: int, name: str = "input", allow_zero: bool = False) -> None:
    """Raise :class:`~volseg.errors.OptionError` naming ``name`` unless ``size`` is a positive (or, with
    ``allow_zero``, zero) multiple of ``divisor``."""
    if size < 0 or size % divisor or (size == 0 and not allow_zero):
        lower = (size // divisor) * divisor
        choices = (
            f"{lower} or {lower + divisor}" if lower > 0 or (allow_zero and lower == 0) else f"{divisor}"
        )
        depth = divisor.bit_length() - 1
        raise OptionError(f"{name} {size} is not a multiple of {divisor} (depth {depth}); use {choices}")


def parse_roi(text: str, name: str = "roi") -> tuple[tuple[int | None, int | None], ...]:
    """Parse ``"z0:z1,y0:y1,x0:x1"``; an empty bound means the volume's edge (``":"``, ``"5:"``).

    Negative bounds count from the far edge, as in Python slicing. The result still needs
    :func:`resolve_roi` against the volume's shape.
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or any(p.count(":") != 1 for p in parts):
        raise OptionError(
            f"{name} {text!r}: write three ranges z0:z1,y0:y1,x0:x1 (empty bounds mean the edge)",
            argument=name,
        )
    spans = []
    for part in parts:
        lo, hi = part.split(":")
        try:
            spans.append((int(lo) if lo.strip() else None, int(hi) if hi.strip() else None))
        except ValueError:
            raise OptionError(
                f"{name} {text!r}: bounds must be integers, e.g. 0:10,0:512,0:512", argument=name
            ) from None
    return tuple(spans)


def resolve_roi(roi: Sequence[Sequence[int | None]] | None, shape: Sequence[int], name: str = "roi") -> Roi:
    """Clip nothing, check everything: turn a parsed ROI into ``((z0, z1), (y0, y1), (x0, x1))``.

    Raises :class:`OptionError` naming the axis when a range is empty or leaves the volume.
    """
    if roi is None:
        return tuple((0, int(n)) for n in shape)  # type: ignore[return-value]
    if len(roi) != len(shape):
        raise OptionError(f"{name} {roi}: needs {len(shape)} ranges (z, y, x)", argument=name)
    out = []
    for axis, (span, n) in enumerate(zip(roi, shape, strict=True)):
        lo, hi = span
        lo = 0 if lo is None else (lo + n if lo < 0 else lo)
        hi = n if hi is None else (hi + n if hi < 0 else hi)
        ax = "zyx"[axis]
        if not 0 <= lo < hi <= n:
            raise OptionError(
                f"{name} {ax} range {span[0]}:{span[1]} is outside the volume or empty "
                f"({ax} size {n}); use a range within 0:{n}",
                argument=name,
            )
        out.append((int(lo), int(hi)))
    return tuple(out)  # type: ignore[return-value]


# ---------------------------------------------------------------------- chunk grid
def grid_shape(shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...]:
    """Number of chunks along each axis."""
    return tuple(-(-int(s) // int(c)) for s, c in zip(shape, chunks, strict=True))


def region(shape: Sequence[int], chunks: Sequence[int], index: Sequence[int]) -> tuple[slice, ...]:
    """Slices of chunk ``index`` (clipped at the far edges)."""
    return tuple(slice(i * c, min((i + 1) * c, s)) for s, c, i in zip(shape, chunks, index, strict=True))


@dataclass(frozen=True)
class Block:
    """One task's work: whole output chunks forming a box.

    Attributes
    ----------
    index
        Position in the block grid.
    chunk_ids
        The output chunks it writes, in C order.
    out
        Its region in output coordinates (slices ``(z, y, x)``).
    """

    index: tuple[int, ...]
    chunk_ids: tuple[tuple[int, ...], ...]
    out: tuple[slice, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.out)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def chunk_ids_in(
    grid: Sequence[int], chunks_per_block: Sequence[int], index: Sequence[int]
) -> tuple[tuple[int, ...], ...]:
    """Chunk indices of block ``index`` when blocks group ``chunks_per_block`` chunks."""
    ranges = [
        range(i * k, min((i + 1) * k, g)) for g, k, i in zip(grid, chunks_per_block, index, strict=True)
    ]
    return tuple(itertools.product(*ranges))


def blocks(
    shape: Sequence[int], chunks: Sequence[int], chunks_per_block: Sequence[int] = (1, 1, 1)
) -> Iterator[Block]:
    """All blocks of an output of ``shape`` stored in ``chunks``, in C order.

    Every chunk belongs to exactly one block, and the blocks tile the output without overlap.
    """
    grid = grid_shape(shape, chunks)
    block_shape = [c * k for c, k in zip(chunks, chunks_per_block, strict=True)]
    for index in itertools.product(*(range(n) for n in grid_shape(grid, chunks_per_block))):
        yield Block(
            index=tuple(index),
            chunk_ids=chunk_ids_in(grid, chunks_per_block, index),
            out=region(shape, block_shape, index),
        )


# ---------------------------------------------------------------------------- halo
@dataclass(frozen=True)
class Window:
    """The input a block needs along one axis, in global coordinates.

    ``[lo, hi)`` may extend past the volume (filled by reflection). The model sees
    ``[origin - halo, hi)`` as the padded input of the inner region ``[origin, stop)``;
    the block's own output is the inner output from ``crop`` on.
    """

    lo: int
    hi: int
    origin: int
    crop: int

    @property
    def size(self) -> int:
        return self.hi - self.lo


def aligned_window(
    start: int, stop: int, halo: int, divisor: int, size: int | None = None, edge: int | None = None
) -> Window:
    """Input window for the inner region ``[start, stop)`` (global), pooling grid aligned.

    The inner region is extended down to the previous multiple of ``divisor`` so that tiles
    taken at multiples of ``divisor`` from it sit on the global pooling grid, then ``halo``
    pixels are added on both sides. Given the axis ``size`` of the volume, the window stops
    ``edge`` pixels (at most ``halo``; ``None``: ``halo``) beyond the volume's edges: the
    section's frame ``[-edge, size + edge)``, where the whole-section reference stops too.
    """
    if stop <= start:
        raise ValueError(f"empty region [{start}, {stop})")
    origin = (start // divisor) * divisor
    lo, hi = origin - halo, stop + halo
    if size is not None:
        reach = halo if edge is None else min(edge, halo)
        lo, hi = max(lo, -reach), min(hi, size + reach)
    return Window(lo=lo, hi=hi, origin=origin, crop=start - origin)


def pad_indices(lo: int, hi: int, n: int, mode: str = "symmetric") -> np.ndarray:
    """Source indices in ``[0, n)`` for global positions ``lo <= i < hi`` of an axis of size ``n``.

    Equal to ``np.pad(np.arange(n), pad, mode=mode)[lo + pad : hi + pad]`` for any large enough
    ``pad``, with ``mode`` ``"symmetric"`` (edge repeated: ``2 1 0 | 0 1 2``) or ``"reflect"``
    (``2 1 | 0 1 2``); the mirroring repeats as often as needed (a window may be wider than
    the volume).
    """
    i = np.arange(lo, hi, dtype=np.int64)
    if mode == "symmetric":
        i = np.mod(i, 2 * n)
        return np.where(i >= n, 2 * n - 1 - i, i)
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(i)
        i = np.mod(i, 2 * (n - 1))
        return np.where(i >= n, 2 * (n - 1) - i, i)
    raise ValueError(f"pad mode {mode!r}: use 'symmetric' or 'reflect'")


def source_window(lo: int, hi: int, n: int, mode: str = "symmetric") -> tuple[slice, np.ndarray]:
    """What to read for global positions ``[lo, hi)`` of an axis of size ``n``.

    Returns
    -------
    (read, take)
        ``read`` is the smallest slice of the stored axis holding every source pixel, and
        ``take`` the indices into what was read: ``data[read][take]`` is the padded window.
    """
    src = pad_indices(lo, hi, n, mode)
    first, last = int(src.min()), int(src.max())
    return slice(first, last + 1), src - first


# ---------------------------------------------------------------------- overheads
def tile_starts(length: int, tile: int, divisor: int) -> list[tuple[int, int]]:
    """``(start, size)`` of the inner tiles over ``length``, as ``infer_padded`` takes them.

    The tile edge is ``min(tile, length rounded up to divisor)``; starts are multiples of it,
    and the last tile is shorter when ``length`` is not a multiple.
    """
    step = min(tile, -(-length // divisor) * divisor)
    return [(s, min(step, length - s)) for s in range(0, length, step)]


def tile_windows(
    length: int, tile: int, divisor: int, halo: int, before: int, total: int
) -> list[tuple[int, int, int, int, int]]:
    """``(start, size, window start, window size, offset)`` of the tiles along one axis of a block.

    The block's axis holds ``total`` pixels, its inner region of ``length`` starting at
    ``before``. Each inner tile (:func:`tile_starts`) takes ``halo`` pixels on both sides,
    clipped to the block: where the block holds less, the section ends there. ``offset`` is
    where the inner tile starts in its window.
    """
    out = []
    for start, size in tile_starts(length, tile, divisor):
        lo = max(before + start - halo, 0)
        hi = min(before + start + size + halo, total)
        out.append((start, size, lo, hi - lo, before + start - lo))
    return out


def halo_overhead(tile: int, halo: int) -> float:
    """Compute overhead of a halo for square tiles: ``(tile + 2 halo)**2 / tile**2``."""
    return (tile + 2 * halo) ** 2 / tile**2


def window_overhead(inner: Sequence[int], tile: int, halo: int, divisor: int) -> float:
    """Pixels the model computes per inner pixel for one inner region ``(Y, X)`` with a full halo.

    Each tile of size ``n`` runs a window of ``n + 2 halo`` rounded up to ``divisor``.
    """
    computed = math.prod(_computed(length, tile, halo, divisor, halo, length + 2 * halo) for length in inner)
    return computed / math.prod(inner)


def plan_overhead(
    extent: Sequence[int],
    block: Sequence[int],
    offset: Sequence[int],
    tile: int,
    halo: int,
    divisor: int,
    size: Sequence[int] | None = None,
    edge: int | None = None,
) -> float:
    """Pixels computed per output pixel over a whole plan of ``(Y, X)`` blocks.

    ``extent`` is the output's ``(Y, X)``, ``block`` the block's, ``offset`` where the output
    starts in the volume (the ROI); each block's inner region is first extended down to the
    pooling grid and its window clipped to the section's frame (:func:`aligned_window` with the
    volume's ``size`` and ``edge``; without ``size`` the halo is read everywhere).
    """
    computed = 1
    for axis, (n, b, o) in enumerate(zip(extent, block, offset, strict=True)):
        total = 0
        for s in range(0, n, b):
            start, stop = o + s, o + min(s + b, n)
            w = aligned_window(start, stop, halo, divisor, None if size is None else size[axis], edge)
            total += _computed(stop - w.origin, tile, halo, divisor, w.origin - w.lo, w.hi - w.lo)
        computed *= total
    return computed / math.prod(extent)


def _computed(length: int, tile: int, halo: int, divisor: int, before: int, total: int) -> int:
    windows = tile_windows(length, tile, divisor, halo, before, total)
    return sum(-(-w // divisor) * divisor for _, _, _, w, _ in windows)
