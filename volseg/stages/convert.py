"""TIFF / PNG stacks -> OME-Zarr volume, streamed band by band.

A *band* is one chunk's depth of sections (``chunks[0]``, 1 by default). The
converter reads one band at a time (page by page from a multi-page TIFF, file by
file from a folder; from an uncompressed TIFF only a few rows of chunks of it at a
time), stores every block that is not done yet, records each one as done
(:meth:`volseg.storage.volumes.Volume.mark_done`) once it is on disk, and reuses its buffer.
Peak memory is therefore at most one band, whatever the stack's depth. The output's
status becomes ``complete`` only after the last block.

Sources
-------
- a multi-page TIFF (classic or BigTIFF, ImageJ stacks and hyperstacks, OME-TIFF),
- a single 2-D TIFF or PNG (one section),
- a folder of per-section TIFF / PNG files (natural order: ``2`` before ``10``),
- a glob pattern (``"sections/*.png"``).
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import functools
import glob
import json
import logging
import os
import re
import sys
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from volseg.errors import InputError, OptionError, OutputError, VolsegError
from volseg.storage.paths import local_path, output_not_input
from volseg.storage.volumes import (
    DEFAULT_CODEC,
    KINDS,
    Volume,
    create_volume,
    open_volume,
    parse_codec,
    provenance,
    resolve_shards,
)

__all__ = ["DEFAULT_CHUNKS", "Calibration", "ConvertOptions", "Stack", "convert", "open_stack"]

DEFAULT_CHUNKS = (1, 1024, 1024)
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_GLOB_CHARS = re.compile(r"[*?\[]")

# OME-Zarr unit names volseg writes, in metres.
UNITS = {
    "picometer": 1e-12,
    "angstrom": 1e-10,
    "nanometer": 1e-9,
    "micrometer": 1e-6,
    "millimeter": 1e-3,
    "centimeter": 1e-2,
    "meter": 1.0,
    "inch": 0.0254,
}
_UNIT_ALIASES = {
    "pm": "picometer",
    "a": "angstrom",
    "å": "angstrom",
    "nm": "nanometer",
    "nanometre": "nanometer",
    "um": "micrometer",
    "micron": "micrometer",
    "micrometre": "micrometer",
    "mm": "millimeter",
    "millimetre": "millimeter",
    "cm": "centimeter",
    "centimetre": "centimeter",
    "m": "meter",
    "metre": "meter",
    "in": "inch",
}
# TIFF ResolutionUnit -> micrometres per unit (1 = none).
_TIFF_RESUNIT_UM = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}
# Resolution tags that give pixels this large (72 or 300 dpi, say) are a writer's default, not a calibration.
_MAX_CALIBRATED_PIXEL_UM = 10.0


# ------------------------------------------------------------------------ options
def normalise_unit(text: str | None) -> str | None:
    """Map ``nm``, ``micron``, ``µm``, ... to an OME-Zarr unit name; None when unknown."""
    if not text:
        return None
    t = str(text).strip().lower().replace("\\u00b5", "u").replace("µ", "u").replace("μ", "u")
    if t.endswith("s") and t[:-1] in {*UNITS, *_UNIT_ALIASES}:
        t = t[:-1]  # plurals: microns, nanometers
    t = _UNIT_ALIASES.get(t, t)
    return t if t in UNITS else None


@dataclass(frozen=True)
class ConvertOptions:
    """Validated settings of one conversion (see :func:`convert`)."""

    chunks: tuple[int, int, int] | None = None
    codec: str = DEFAULT_CODEC
    voxel_size: tuple[float, float, float] | None = None
    unit: str | None = None
    channel: int | None = None
    order: str | None = None
    shards: tuple[int, int, int] | None = None

    @classmethod
    def checked(
        cls,
        *,
        chunks: Sequence[int] | None = None,
        codec: str | None = DEFAULT_CODEC,
        voxel_size: Sequence[float] | None = None,
        unit: str | None = None,
        channel: int | None = None,
        order: str | os.PathLike | None = None,
        shards: Sequence[int] | None = None,
    ) -> ConvertOptions:
        """Build options from user values, naming the bad value and the fix."""
        if chunks is not None:
            chunks = _positive_triple(chunks, "chunks", int, "1,1024,1024")
        if shards is not None:
            shards = _positive_triple(shards, "shards", int, "1,8192,8192")
        if voxel_size is not None:
            voxel_size = _positive_triple(voxel_size, "voxel_size", float, "50,4,4")
        if unit is not None:
            name = normalise_unit(unit)
            if name is None:
                raise OptionError(
                    f"--unit {unit!r}: unknown unit; use one of {', '.join(UNITS)} (or nm, um, mm)"
                )
            unit = name
        codec = str(codec or DEFAULT_CODEC).strip().lower()
        parse_codec(codec)
        if channel is not None and (isinstance(channel, bool) or not isinstance(channel, int) or channel < 0):
            raise OptionError(f"--channel {channel!r}: expected a channel index 0, 1, 2, ...")
        order = None if order is None else os.fspath(order)
        return cls(chunks, codec, voxel_size, unit, channel, order, shards)  # type: ignore[arg-type]


def _positive_triple(value: Any, name: str, kind: type, example: str) -> tuple:
    try:
        items = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        items = ()
    if len(items) != 3 or not all(np.isfinite(v) and v > 0 for v in items):
        raise OptionError(f"{name}={value!r}: expected three positive numbers (z, y, x), e.g. {example}")
    if kind is int and any(float(v) != int(v) for v in value):
        raise OptionError(f"{name}={value!r}: expected three positive integers (z, y, x), e.g. {example}")
    return items


# -------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Calibration:
    """Voxel size ``(z, y, x)`` in ``unit``; ``unit=None`` means the physical size is unknown."""

    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    unit: str | None = None

    def to(self, unit: str) -> Calibration:
        """The same calibration in another unit (an unknown one is taken as ``unit``)."""
        if self.unit is None:
            return Calibration(self.voxel_size, unit)
        f = UNITS[self.unit] / UNITS[unit]
        return Calibration(tuple(float(v * f) for v in self.voxel_size), unit)  # type: ignore[arg-type]


def resolve_calibration(
    found: Calibration, voxel_size: Sequence[float] | None, unit: str | None
) -> Calibration:
    """Apply ``--voxel-size`` / ``--unit`` to what the source says.

    ``--voxel-size`` wins and is read in ``--unit`` (nanometer when not given);
    ``--unit`` alone converts the source's calibration to that unit.
    """
    if voxel_size is not None:
        return Calibration(tuple(float(v) for v in voxel_size), unit or "nanometer")  # type: ignore[arg-type]
    return found.to(unit) if unit else found


def _imagej_calibration(tf: tifffile.TiffFile) -> Calibration | None:
    meta = tf.imagej_metadata or {}
    unit = normalise_unit(meta.get("unit"))
    if unit is None:
        return None
    xres, yres = tf.pages.first.resolution
    x = 1.0 / xres if xres > 0 else 1.0
    y = 1.0 / yres if yres > 0 else x
    return Calibration((float(meta.get("spacing", 1.0)), y, x), unit)


def _ome_calibration(tf: tifffile.TiffFile) -> Calibration | None:
    try:
        root = ET.fromstring(tf.ome_metadata or "")
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None
    unit = normalise_unit(pixels.get("PhysicalSizeXUnit", "µm"))
    if unit is None:
        return None
    sizes = []
    for ax in "ZYX":
        value, ax_unit = (
            pixels.get(f"PhysicalSize{ax}"),
            normalise_unit(pixels.get(f"PhysicalSize{ax}Unit", "µm")),
        )
        if value is None or ax_unit is None:
            sizes.append(1.0 if ax == "Z" else sizes[-1])  # y missing: square pixels
        else:
            sizes.append(float(value) * UNITS[ax_unit] / UNITS[unit])
    return Calibration(tuple(sizes), unit)  # type: ignore[arg-type]


def _tag_calibration(tf: tifffile.TiffFile) -> Calibration | None:
    page = tf.pages.first
    per_unit = _TIFF_RESUNIT_UM.get(int(page.resolutionunit))
    xres, yres = page.resolution
    if per_unit is None or xres <= 0 or yres <= 0:
        return None
    x, y = per_unit / xres, per_unit / yres
    if max(x, y) >= _MAX_CALIBRATED_PIXEL_UM:
        return None
    return Calibration((1.0, y, x), "micrometer")


def tiff_calibration(tf: tifffile.TiffFile) -> Calibration:
    """Voxel size from OME-XML, else ImageJ metadata, else resolution tags, else unknown (1, 1, 1)."""
    found = (
        (_ome_calibration(tf) if tf.is_ome else None)
        or (_imagej_calibration(tf) if tf.is_imagej else None)
        or _tag_calibration(tf)
    )
    return found or Calibration()


# --------------------------------------------------------------------------- stacks
class Stack:
    """Sections ``(Z, Y, X)`` of one source, read band by band.

    Attributes
    ----------
    shape
        ``(Z, Y, X)``.
    dtype
        Pixel type, native byte order.
    files
        Source files, in section order for folders.
    calibration
        What the source says about the voxel size.
    """

    shape: tuple[int, int, int]
    dtype: np.dtype
    files: list[Path]
    calibration: Calibration = Calibration()
    reads_rows: bool = False  # can read some rows of a section without decoding all of it

    def read(self, z0: int, z1: int, out: np.ndarray, y0: int = 0) -> None:
        """Fill ``out`` ``(z1 - z0, h, X)`` with rows ``y0 .. y0 + h - 1`` of sections ``z0 .. z1 - 1``.

        Stacks that do not :attr:`reads_rows` are only asked for whole sections (``y0 = 0``, ``h = Y``).
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release open files."""

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TifffileLog(logging.Handler):
    """Collect tifffile's log records: its errors are how it reports damaged files."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[str] = []
        logging.getLogger("tifffile").addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors.append(record.getMessage())

    def check(self, path: Path) -> None:
        if self.errors:
            detail = self.errors[0].split("> ", 1)[-1]
            self.errors.clear()
            raise InputError(
                f"{path}: damaged or truncated TIFF (tifffile: {detail}); re-copy or re-export the file"
            )

    def detach(self) -> None:
        logging.getLogger("tifffile").removeHandler(self)


@dataclass(frozen=True)
class _TiffLayout:
    """Where each section of a TIFF lives: a page (and a sample in it)."""

    pages: Sequence[Any]  # TiffPage / TiffFrame by page index
    page_of_z: tuple[int, ...]
    page_shape: tuple[int, ...]
    sample: tuple[int, int] | None  # (axis of S in the page array, channel)
    yx: tuple[int, int]
    contiguous: int | None  # file offset of uncompressed, in-order pages, else None


def _stack_pages(tf: tifffile.TiffFile) -> tuple[Sequence[Any], Any, str, tuple[int, ...], int | None]:
    """Pages, key page, and the axes above the page level of the file's image."""
    series = tf.series
    if not series:
        raise InputError(f"{tf.filehandle.path}: TIFF holds no image data")
    first = series[0]
    kf = first.keyframe
    # Writers that store each section as its own series (tifffile page by page, some cameras).
    if len(series) > 1 and all(
        len(s.pages) == 1 and s.shape == first.shape and s.dtype == first.dtype and s.axes == kf.axes
        for s in series
    ):
        return [s.pages[0] for s in series], kf, "Z", (len(series),), None
    if not first.axes.endswith(kf.axes):
        raise InputError(f"{tf.filehandle.path}: unsupported TIFF layout {first.axes} (pages {kf.axes})")
    n = len(first.axes) - len(kf.axes)
    return first.pages, kf, first.axes[:n], tuple(first.shape[:n]), first.dataoffset


def _tiff_layout(tf: tifffile.TiffFile, path: Path, channel: int | None) -> _TiffLayout:
    pages, kf, axes, shape, contiguous = _stack_pages(tf)
    page_axes, page_shape = kf.axes, tuple(kf.shape)
    if not {"Y", "X"} <= set(page_axes) or set(page_axes) - {"Y", "X", "S"}:
        raise InputError(f"{path}: unsupported TIFF page layout {page_axes}; volseg reads 2-D pages (Y, X)")
    stack_axes = [i for i, a in enumerate(axes) if a != "C" and shape[i] > 1]
    if len(stack_axes) > 1:
        named = ", ".join(f"{axes[i]}={shape[i]}" for i in stack_axes)
        raise InputError(
            f"{path}: has several stack axes ({named}); volseg converts one 3-D stack (Z, Y, X): "
            "save one of them as a file of its own first (e.g. Fiji: Image > Duplicate)"
        )
    c_axis, s_axis = axes.find("C"), page_axes.find("S")
    if c_axis >= 0 and s_axis >= 0:
        raise InputError(
            f"{path}: has both channels and samples per pixel; save one channel as a file of its own"
        )
    n_channels = shape[c_axis] if c_axis >= 0 else page_shape[s_axis] if s_axis >= 0 else 1
    ch = _pick_channel(path, n_channels, channel)
    nz = shape[stack_axes[0]] if stack_axes else 1
    index = np.zeros((len(axes), nz), dtype=np.int64)
    if stack_axes:
        index[stack_axes[0]] = np.arange(nz)
    if c_axis >= 0:
        index[c_axis] = ch
    page_of_z = tuple(int(p) for p in np.ravel_multi_index(tuple(index), shape)) if axes else (0,) * nz
    if contiguous is None and len(pages) < int(np.prod(shape)):
        raise InputError(
            f"{path}: damaged TIFF: {len(pages)} pages where its metadata announces {int(np.prod(shape))}"
        )
    yx = (page_shape[page_axes.index("Y")], page_shape[page_axes.index("X")])
    return _TiffLayout(pages, page_of_z, page_shape, (s_axis, ch) if s_axis >= 0 else None, yx, contiguous)


def _pick_channel(path: Path, n: int, channel: int | None) -> int:
    if n > 1 and channel is None:
        raise InputError(
            f"{path}: has {n} channels (RGB or multi-channel); volseg converts one: "
            f"pass --channel N with N in 0..{n - 1}"
        )
    if channel is not None and channel >= n:
        raise OptionError(f"--channel {channel}: {path} has {n} channel{'s' if n > 1 else ''} (0..{n - 1})")
    return channel or 0


class TiffStack(Stack):
    """A TIFF file: its sections are pages (or, with ``channel``, one channel of them)."""

    def __init__(self, path: Path, channel: int | None = None) -> None:
        self.path = path
        self._log = _TifffileLog()
        self._fh: Any = None
        try:
            self._tf = tifffile.TiffFile(path)
        except Exception as exc:
            self._log.detach()
            raise InputError(f"{path}: cannot read as TIFF ({exc}); is it a complete TIFF file?") from exc
        try:
            self._log.check(path)
            self._layout = _tiff_layout(self._tf, path, channel)
            self._log.check(path)
            self._check_extent()
            self.calibration = tiff_calibration(self._tf)
            series_dtype = self._tf.series[0].dtype
            self.dtype = np.dtype(series_dtype).newbyteorder("=")
            self._file_dtype = np.dtype(series_dtype).newbyteorder(self._tf.byteorder)
        except VolsegError:
            self.close()
            raise
        except Exception as exc:  # tifffile meets damaged tags with many exception types
            self.close()
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
            raise InputError(
                f"{path}: damaged or unsupported TIFF (tifffile: {reason}); re-copy or re-export the file"
            ) from None
        except BaseException:
            self.close()
            raise
        self.shape = (len(self._layout.page_of_z), *self._layout.yx)
        self.files = [path]
        self.reads_rows = self._layout.contiguous is not None

    @property
    def _page_nbytes(self) -> int:
        return int(np.prod(self._layout.page_shape)) * np.dtype(self._tf.series[0].dtype).itemsize

    def _check_extent(self) -> None:
        # A cut-off file can still parse (its IFDs may all sit before the cut): check the data fits.
        lay, size = self._layout, self.path.stat().st_size
        if lay.contiguous is not None:
            end = lay.contiguous + (max(lay.page_of_z) + 1) * self._page_nbytes
        else:
            end = max(
                (
                    int(o) + int(c)
                    for p in set(lay.page_of_z)
                    for o, c in zip(lay.pages[p].dataoffsets, lay.pages[p].databytecounts, strict=True)
                ),
                default=0,
            )
        if end > size:
            raise InputError(
                f"{self.path}: truncated TIFF: its image data needs {end} bytes but the file has {size}; "
                "re-copy or re-export the file"
            )

    def read(self, z0: int, z1: int, out: np.ndarray, y0: int = 0) -> None:
        try:
            for i, z in enumerate(range(z0, z1)):
                self._read_section(z, out[i], y0)
        except VolsegError:
            raise
        except Exception as exc:
            raise InputError(f"{self.path}: cannot read section {z} ({exc}); the file is damaged") from exc
        self._log.check(self.path)

    def _read_section(self, z: int, out: np.ndarray, y0: int) -> None:
        """Rows ``y0 .. y0 + len(out) - 1`` of section ``z`` into ``out`` ``(h, X)``."""
        lay = self._layout
        page = lay.page_of_z[z]
        if lay.contiguous is None:  # compressed, tiled...: tifffile decodes the whole page
            if lay.sample is None:
                lay.pages[page].asarray(out=out)
            else:
                out[...] = np.take(lay.pages[page].asarray(), lay.sample[1], axis=lay.sample[0])
            return
        offset, shape = self._rows_in_file(page, y0, out.shape[0])
        if shape == out.shape and self._file_dtype == out.dtype:
            self._read_bytes(offset, out)  # straight into the band: no copy
            return
        raw = np.empty(shape, self._file_dtype)
        self._read_bytes(offset, raw)
        out[...] = raw[..., lay.sample[1]] if len(shape) == 3 else raw  # (h, X, S): keep one sample

    def _rows_in_file(self, page: int, y0: int, h: int) -> tuple[int, tuple[int, ...]]:
        """File offset and shape of rows ``y0 .. y0 + h - 1`` of an uncompressed page."""
        lay = self._layout
        item = self._file_dtype.itemsize
        start = lay.contiguous + page * self._page_nbytes  # type: ignore[operator]
        if lay.sample is not None and lay.sample[0] == 0:  # planar (S, Y, X): the channel's own plane
            _, ny, nx = lay.page_shape
            return start + (lay.sample[1] * ny + y0) * nx * item, (h, nx)
        row = lay.page_shape[1:]  # (X,) or (X, S)
        return start + y0 * int(np.prod(row)) * item, (h, *row)

    def _read_bytes(self, offset: int, out: np.ndarray) -> None:
        if self._fh is None:
            self._fh = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed in close())
        view = memoryview(out).cast("B")
        self._fh.seek(offset)
        got = 0
        while got < len(view):
            n = self._fh.readinto(view[got:])
            if not n:
                raise InputError(
                    f"{self.path}: truncated TIFF: data ends at byte {offset + got}; re-copy the file"
                )
            got += n

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if getattr(self, "_tf", None) is not None:
            self._tf.close()
        self._log.detach()


# PIL mode -> (dtype, channels)
_PNG_MODES = {
    "1": (np.bool_, 1),
    "L": (np.uint8, 1),
    "P": (np.uint8, 1),  # palette indices (label images), not colours
    "I;16": (np.uint16, 1),
    "I;16B": (np.uint16, 1),
    "I;16L": (np.uint16, 1),
    "I": (np.int32, 1),
    "F": (np.float32, 1),
    "LA": (np.uint8, 2),
    "PA": (np.uint8, 2),
    "RGB": (np.uint8, 3),
    "RGBA": (np.uint8, 4),
}


class PngStack(Stack):
    """A PNG file: one section (Pillow reads the header now, the pixels on :meth:`read`)."""

    def __init__(self, path: Path, channel: int | None = None) -> None:
        from PIL import Image  # a dependency of matplotlib and scikit-image

        self.path = path
        try:
            with _no_pixel_limit():
                self._image = Image.open(path)
        except Exception as exc:
            raise InputError(f"{path}: cannot read as PNG ({exc}); is it a complete PNG file?") from exc
        mode = self._image.mode
        if mode not in _PNG_MODES:
            self.close()
            raise InputError(f"{path}: PNG mode {mode!r} is not supported; save it as 8- or 16-bit grayscale")
        dtype, n = _PNG_MODES[mode]
        self._channel = _pick_channel(path, n, channel) if n > 1 or channel is not None else None
        self._multi = n > 1
        self.dtype = np.dtype(dtype)
        self.shape = (1, self._image.height, self._image.width)
        self.files = [path]

    def read(self, z0: int, z1: int, out: np.ndarray, y0: int = 0) -> None:
        try:
            with _no_pixel_limit():
                data = np.asarray(self._image)
        except Exception as exc:
            raise InputError(f"{self.path}: cannot decode PNG ({exc}); the file is damaged") from exc
        out[0] = data[..., self._channel] if self._multi else data

    def close(self) -> None:
        self._image.close()


@contextmanager
def _no_pixel_limit() -> Iterator[None]:
    # Pillow refuses images over ~180 Mpixel as "decompression bombs"; EM sections are that big on purpose.
    from PIL import Image

    old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def open_file(path: Path, channel: int | None = None) -> Stack:
    """Open one TIFF or PNG file, recognised by its first bytes (not its name)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise InputError(
            f"{path}: cannot read ({exc.strerror or exc}); check the path and its permissions"
        ) from exc
    if head[:4] in _TIFF_MAGIC:
        return TiffStack(path, channel)
    if head == _PNG_MAGIC:
        return PngStack(path, channel)
    what = "is empty" if not head else f"is not a TIFF or PNG image (it starts with {head[:4]!r})"
    raise InputError(f"{path}: {what}; volseg converts TIFF stacks and folders of TIFF or PNG sections")


class FileStack(Stack):
    """One section per file, in the given order; every file's header is checked up front."""

    def __init__(self, files: Sequence[Path], channel: int | None, where: str) -> None:
        self.files = list(files)
        self._channel = channel
        first = None
        for i, f in enumerate(self.files):
            with open_file(f, channel) as s:
                if s.shape[0] != 1:
                    raise InputError(
                        f"{f}: holds {s.shape[0]} sections but {where} must hold one section per file; "
                        f"convert that file on its own (volseg convert {f} OUT.zarr)"
                    )
                if first is None:
                    first, self.calibration = s, s.calibration
                elif (s.shape, s.dtype) != (first.shape, first.dtype):
                    raise InputError(_mismatch(f, i, s, self.files[0], first))
        assert first is not None
        self.shape = (len(self.files), *first.shape[1:])
        self.dtype = first.dtype

    def read(self, z0: int, z1: int, out: np.ndarray, y0: int = 0) -> None:
        for i, f in enumerate(self.files[z0:z1]):
            with open_file(f, self._channel) as s:
                if (s.shape[1:], s.dtype) != (self.shape[1:], self.dtype):  # changed since we looked
                    raise InputError(_mismatch(f, z0 + i, s, self.files[0], self))
                s.read(0, 1, out[i : i + 1])


def _mismatch(f: Path, i: int, s: Stack, f0: Path, s0: Stack) -> str:
    yx = lambda st: " x ".join(map(str, st.shape[1:]))  # noqa: E731
    return (
        f"{f}: section {i} is {yx(s)} {s.dtype} but {f0.name} is {yx(s0)} {s0.dtype}; "
        "all sections of a stack need the same shape and dtype"
    )


def natural_key(path: Path) -> list[tuple[int, Any]]:
    """Sort key that puts ``s2.tif`` before ``s10.tif``."""
    return [(0, int(t)) if t.isdigit() else (1, t.lower()) for t in re.split(r"(\d+)", str(path))]


def order_files(files: Sequence[Path], order: str | None, where: str) -> list[Path]:
    """``natural`` (default) or ``name`` sort, or the order listed in a text file (one name a line)."""
    if order in (None, "natural"):
        return sorted(files, key=natural_key)
    if order == "name":
        return sorted(files, key=str)
    listing = Path(order)
    if not listing.is_file():
        raise OptionError(
            f"--order {order!r}: use 'natural', 'name' or a text file listing section file names"
        )
    by_name: dict[str, Path] = {}
    for f in files:
        by_name[str(f)] = f
        by_name.setdefault(f.name, f)
    chosen: dict[Path, None] = {}  # insertion-ordered set
    for lineno, line in enumerate(listing.read_text().splitlines(), 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        f = by_name.get(name) or by_name.get(Path(name).name)
        if f is None:
            raise InputError(f"--order {listing} line {lineno}: {name!r} is not an image in {where}")
        if f in chosen:
            raise InputError(f"--order {listing} line {lineno}: {name!r} is listed twice")
        chosen[f] = None
    if not chosen:
        raise InputError(f"--order {listing}: lists no section names")
    return list(chosen)


def _images_in(folder: Path) -> list[Path]:
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise InputError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from exc
    return [
        p
        for p in entries
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    ]


def open_stack(src: str | os.PathLike, *, channel: int | None = None, order: str | None = None) -> Stack:
    """Open a TIFF/PNG file, a folder of section files or a glob pattern as a :class:`Stack`."""
    text = os.fspath(src)
    path = Path(text)
    if path.is_dir():
        files, where = _images_in(path), f"folder {path}"
        if not files:
            raise InputError(
                f"{path}: folder holds no .tif, .tiff or .png files; point to the folder of sections"
            )
    elif path.exists():
        if order is not None:
            raise OptionError(f"--order: applies to folders and glob patterns, not to the single file {path}")
        return open_file(path, channel)
    elif _GLOB_CHARS.search(text):
        files, where = [Path(p) for p in glob.glob(text) if Path(p).is_file()], f"pattern {text!r}"
        if not files:
            raise InputError(f"{text}: pattern matches no files; check the pattern (quote it in the shell)")
        if len(files) == 1 and order is None:
            return open_file(files[0], channel)
    else:
        raise InputError(f"{path}: no such file or folder; check the path")
    return FileStack(order_files(files, order, where), channel, where)


# ------------------------------------------------------------------------- convert
def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    chunks: Sequence[int] | None = None,
    codec: str = DEFAULT_CODEC,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    channel: int | None = None,
    order: str | os.PathLike | None = None,
    shards: Sequence[int] | None = None,
    kind: str = "image",
    progress: bool = False,
) -> Volume:
    """Convert a TIFF / PNG stack into an OME-Zarr volume, band by band.

    Parameters
    ----------
    src
        Multi-page TIFF (classic, BigTIFF, ImageJ, OME), one 2-D TIFF or PNG, a folder
        of per-section TIFF / PNG files, or a glob pattern.
    out
        Output volume folder (``*.zarr``).
    chunks
        Chunk shape ``(Z, Y, X)``; default ``(1, 1024, 1024)`` clipped to the stack.
    codec
        ``blosc-zstd`` (default), ``blosc-lz4``, ``zstd``, ``gzip`` or ``none``, optionally ``:LEVEL``.
    voxel_size, unit
        Override the voxel size ``(z, y, x)`` read from the TIFF metadata; ``voxel_size``
        is in ``unit`` (nanometer by default). Without either, an uncalibrated source
        gets ``(1, 1, 1)`` and no unit.
    overwrite, resume
        Replace an existing output, or continue an interrupted one (same sources and settings).
    channel
        Channel (or RGB sample) to convert from a multi-channel source.
    order
        Folders and globs: ``"natural"`` (default), ``"name"``, or a text file listing section file names.
    shards
        Shard shape ``(Z, Y, X)``, whole chunks each (Zarr v3 sharding): one file per shard
        instead of per chunk, for stacks with very many chunks. A shard is then the unit that is
        written, fsynced and recorded as done, and a band is one shard deep. Default: no shards.
    kind
        What the stack holds, recorded in the volume's metadata for the stages that read it:
        ``image`` (raw EM, default), ``label`` (annotations: integer classes or instance ids;
        OME ``image-label`` metadata), ``mask`` (binary) or ``probability`` (a probability map
        from another tool, e.g. for ``volseg segment``).
    progress
        Show a progress bar (sections/s, ETA) on stderr.

    Returns
    -------
    Volume
        The complete volume, shape ``(Z, Y, X)``, the source's dtype.
    """
    opts = ConvertOptions.checked(
        chunks=chunks,
        codec=codec,
        voxel_size=voxel_size,
        unit=unit,
        channel=channel,
        order=order,
        shards=shards,
    )
    if overwrite and resume:
        raise OptionError("--overwrite and --resume exclude each other: choose one")
    out = local_path(out, "OUT")
    if isinstance(src, (str, os.PathLike)):
        local_path(src, "SRC")
    _check_kind(kind)
    with open_stack(src, channel=opts.channel, order=opts.order) as stack:
        _refuse_source_as_output(out, stack, opts.order)
        if np.dtype(stack.dtype).kind not in "biuf":
            raise InputError(
                f"{stack.files[0]}: holds {stack.dtype} values; volseg converts integer, float or boolean "
                "images: export the stack as one of those"
            )
        _check_kind(kind, stack.dtype)
        config = _config(src, stack, opts)
        config["kind"] = kind
        if resume and (out.exists() or out.is_symlink()):
            vol = _reopen(out, stack, config)
        else:
            vol = _create(out, stack, config, overwrite)
        _copy(stack, vol, progress=progress)
    if not vol.complete:
        vol.mark_complete()
    return vol


def _refuse_source_as_output(out: Path, stack: Stack, order: Any = None) -> None:
    """The output is no source file, no folder holding one, and nothing inside one."""
    inputs: list[tuple[str, Any]] = [("source", f) for f in stack.files]
    if order not in (None, "natural", "name"):
        inputs.append(("--order file", order))
    output_not_input({"OUT": out}, inputs)


def _check_kind(kind: str, dtype: Any = None) -> None:
    if kind not in KINDS:
        raise OptionError(f"--kind {kind!r}: use one of {', '.join(KINDS)}")
    if dtype is None:
        return
    dt = np.dtype(dtype)
    integer = dt.kind in "biu"
    if (kind in ("label", "mask") and not integer) or (kind == "probability" and dt.kind not in "uf"):
        need = "integer values" if kind in ("label", "mask") else "unsigned integers or floats"
        raise InputError(
            f"--kind {kind}: the stack holds {dt}, but a {kind} volume needs {need}; check the source "
            "or use --kind image"
        )


def _config(src: str | os.PathLike, stack: Stack, opts: ConvertOptions) -> dict[str, Any]:
    """Everything that decides the output's bytes: recorded, and compared on resume."""
    chunks = tuple(min(c, s) for c, s in zip(opts.chunks or DEFAULT_CHUNKS, stack.shape, strict=True))
    cal = resolve_calibration(stack.calibration, opts.voxel_size, opts.unit)
    config = {
        "stage": "convert",
        "source": os.fspath(src),
        "shape": list(stack.shape),
        "dtype": str(stack.dtype),
        "chunks": list(chunks),
        "codec": opts.codec,
        "voxel_size": list(cal.voxel_size),
        "unit": cal.unit,
        "channel": opts.channel,
        "order": opts.order,
        "shards": None
        if opts.shards is None
        else resolve_shards(opts.shards, chunks, stack.shape, "--shards"),
    }
    return json.loads(json.dumps(config))  # the form it takes once stored


def _create(out: Path, stack: Stack, config: dict[str, Any], overwrite: bool) -> Volume:
    return create_volume(
        out,
        stack.shape,
        stack.dtype,
        config["chunks"],
        codec=config["codec"],
        voxel_size=config["voxel_size"],
        unit=config["unit"],
        shards=config["shards"],
        kind=config["kind"],
        overwrite=overwrite,
        provenance_block=provenance(stack.files, config),
    )


def _reopen(out: Path, stack: Stack, config: dict[str, Any]) -> Volume:
    """Reopen an interrupted output, refusing one made from other sources or settings."""
    again = "pass --overwrite to start again"
    try:
        vol = open_volume(out, mode="r+")
    except InputError as exc:
        raise OutputError(f"cannot resume {out}: {exc}; {again}") from None
    old = vol.provenance.get("config", {})
    if old.get("stage") != "convert":
        raise OutputError(f"cannot resume {out}: it was not written by 'volseg convert'; {again}")
    keys = ("shape", "dtype", "chunks", "codec", "voxel_size", "unit", "channel", "order", "shards", "kind")
    for key in keys:
        if old.get(key, "image" if key == "kind" else None) != config[key]:
            raise OutputError(
                f"cannot resume {out}: it was made with {key} {old.get(key)!r}, this run has "
                f"{config[key]!r}; rerun with the first run's options, or {again}"
            )
    now = provenance(stack.files)["sources"]
    then = vol.provenance.get("sources", [])
    if now != then:
        changed = (
            next((a["path"] for a, b in zip(now, then, strict=False) if a != b), None)
            or f"{len(then)} -> {len(now)} files"
        )
        raise OutputError(
            f"cannot resume {out}: the sources changed since it was started ({changed}); {again}"
        )
    if not vol.complete:
        now_utc = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        vol.update_meta(resumed=[*vol.meta.get("resumed", []), now_utc])
    return vol


def _copy(stack: Stack, vol: Volume, *, progress: bool) -> None:
    """Write every block that is not done yet, a band of sections (or a few rows of it) at a time."""
    (cz, cy, _), (nbz, nby, nbx) = vol.block_shape, vol.block_grid
    nz, ny, nx = stack.shape
    done = vol.done_blocks()
    todo = [[(b, y, x) for y in range(nby) for x in range(nbx) if (b, y, x) not in done] for b in range(nbz)]
    finished = sum(min(cz, nz - b * cz) for b in range(nbz) if not todo[b])
    rows = _rows_at_a_time(stack, cy, nbx)
    # Two buffers when two pieces fit in a band's rows: the next piece is read while this one compresses.
    buffers = [np.empty((min(cz, nz), rows, nx), stack.dtype) for _ in range(2 if 2 * rows <= ny else 1)]
    try:
        with (
            _progress_bar(progress, nz, finished, f"convert {vol.path.name}") as advance,
            ThreadPoolExecutor(_SYNCERS, thread_name_prefix="volseg-fsync") as sync,
            ThreadPoolExecutor(_writers(), thread_name_prefix="volseg-compress") as compress,
        ):
            _pipeline(stack, vol, _pieces(todo, cz, cy, nz, ny, rows), buffers, compress, sync, advance)
    except VolsegError as exc:
        raise type(exc)(f"{exc}; {vol.path} is left incomplete") from exc
    except OSError as exc:
        raise OutputError(
            f"{vol.path}: cannot write ({exc.strerror or exc}); it is left incomplete: "
            "fix that and rerun with --resume"
        ) from exc


def _pieces(
    todo: Sequence[Sequence[tuple[int, int, int]]], cz: int, cy: int, nz: int, ny: int, rows: int
) -> Iterator[tuple[int, int, int, list[tuple[int, int, int]]]]:
    """``(z0, z1, y0, blocks)`` for each piece of the bands with work left; ``blocks`` may be empty."""
    for b, blocks in enumerate(todo):
        if blocks:
            z0, z1 = b * cz, min((b + 1) * cz, nz)
            for y0 in range(0, ny, rows):
                yield z0, z1, y0, [i for i in blocks if y0 <= i[1] * cy < y0 + rows]


def _pipeline(
    stack: Stack,
    vol: Volume,
    pieces: Iterator[tuple[int, int, int, list[tuple[int, int, int]]]],
    buffers: list[np.ndarray],
    compress: ThreadPoolExecutor,
    sync: ThreadPoolExecutor,
    advance: Callable[[float], None],
) -> None:
    """Read each piece into the next free buffer and hand its blocks to the compression threads.

    Each block is its own chunk (or shard) file, so no two threads touch the same object and no
    lock is needed. A compression thread stores its block, then hands the fsync and the done
    record to the sync threads, so compressing never waits for the disk; the records trail the
    data by a piece or two.
    """
    ny, rows = stack.shape[1], buffers[0].shape[1]
    free = list(buffers)
    inflight: deque[tuple[np.ndarray, list[Future[Future[None]]]]] = deque()  # buffer, its blocks' stores
    records: list[Future[None]] = []  # done records being written
    try:
        for z0, z1, y0, blocks in pieces:
            if blocks:
                if not free:  # reuse the oldest piece's buffer once all its blocks are stored
                    buf, stores = inflight.popleft()
                    stored = [f.result() for f in stores]
                    _wait(records)
                    records = stored
                    free.append(buf)
                buf = free.pop()
                piece = buf[: z1 - z0, : min(ny - y0, rows)]
                stack.read(z0, z1, piece, y0)
                inflight.append(
                    (buf, [compress.submit(_store_block, vol, piece, y0, b, sync) for b in blocks])
                )
                _trim_heap()
            advance((z1 - z0) * min(ny - y0, rows) / ny)
        while inflight:
            records += [f.result() for f in inflight.popleft()[1]]
        _wait(records)
    except BaseException:
        for f in (
            f for _, stores in inflight for f in stores
        ):  # drop queued blocks; stored ones keep records
            f.cancel()
        raise


def _store_block(
    vol: Volume, piece: np.ndarray, y0: int, index: tuple[int, int, int], sync: ThreadPoolExecutor
) -> Future[None]:
    """Store one block from ``piece`` (rows ``y0 ..`` of a band); its done record follows on disk."""
    region = vol.block_region(index)
    vol.array[region] = piece[:, region[1].start - y0 : region[1].stop - y0, region[2]]
    return sync.submit(vol.mark_done, index)


def _wait(futures: Sequence[Future[None]]) -> None:
    for f in futures:
        f.result()


def _rows_at_a_time(stack: Stack, cy: int, nbx: int) -> int:
    """Rows of a band to read at once: whole sections, unless the stack can read rows.

    Then (uncompressed TIFFs) a few rows of chunks suffice, enough to give every writer a block:
    memory falls from a band to a slice of it, which matters for 8k x 8k sections.
    """
    ny = stack.shape[1]
    if not stack.reads_rows:
        return ny
    return min(ny, cy * -(-_writers() // nbx))


_SYNCERS = 4  # fsyncs in flight: they wait on the disk, not on a core


def _writers() -> int:
    """Threads that compress and store blocks: one per core, and one more.

    A writer spends part of each block in Python (zarr's bookkeeping, under the GIL) and part in
    the codec (without it); the extra one keeps the cores busy meanwhile. Measured on 2 cores
    (1.07 GB): 2 writers 7.8 s, 3 writers 7.0 s, 4 writers 7.1 s; each writer adds ~4 MiB.
    """
    return _cores() + 1


def _cores() -> int:
    try:
        n = len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(16, n))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl has none
    except (OSError, AttributeError):
        return None


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS after a band.

    The codecs allocate and free chunk-sized buffers in every writer thread; glibc keeps
    those pages in per-thread arenas, which would grow the resident size band after band.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@contextmanager
def _progress_bar(enabled: bool, total: int, completed: int, label: str) -> Iterator[Callable[[float], None]]:
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class SectionsPerSecond(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.2f} sections/s" if speed else "? sections/s")

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        SectionsPerSecond(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total, completed=completed)
        yield lambda n: bar.advance(task, n)
