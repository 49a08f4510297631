"""TIFF / PNG stacks as sections ``(Z, Y, X)``, read band by band (or a few rows of a band at a time).

Sources
-------
- a multi-page TIFF (classic or BigTIFF, ImageJ stacks and hyperstacks, OME-TIFF),
- a single 2-D TIFF or PNG (one section),
- a folder of per-section TIFF / PNG files (natural order: ``2`` before ``10``),
- a glob pattern (``"sections/*.png"``).

:func:`open_stack` recognises each file by its first bytes, checks every file of a folder up front
(same shape and dtype), and gives a :class:`Stack` whose :meth:`~Stack.read` fills a caller's buffer:
memory is what the caller reads at once, never the whole stack. tifffile reports damaged files through
its log; those records become one-line :class:`~volseg.errors.InputError` messages.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from volseg.errors import InputError, OptionError, VolsegError
from volseg.storage.calibration import Calibration, tiff_calibration

__all__ = [
    "IMAGE_SUFFIXES",
    "FileStack",
    "PngStack",
    "Stack",
    "TiffStack",
    "natural_key",
    "open_file",
    "open_stack",
    "order_files",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_GLOB_CHARS = re.compile(r"[*?\[]")


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
