"""PNG montages of volumes: raw sections, probabilities, masks and cells at a glance.

Only the drawn sections are read, and from the coarsest pyramid level that is still at
least as large as a panel, so an 8k x 8k x 5000 stack previews as fast as a small one.
The picture is composed directly with numpy and Pillow (:mod:`volseg.core.montage`), so its size in
pixels depends only on the options and the volume's aspect ratio, never on fonts or a plotting layout.

Layout: one column per section; the first row shows ``VOL`` (greys, contrast-stretched
between its 1st and 99th percentiles; a probability volume as a heat map; a label volume
in label colours), the second row the overlay, if any: probabilities as a heat map,
a mask filled in one colour over the raw section, cells in label colours (filled with
``alpha`` and outlined). Every panel has a title with its section index.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from volseg.core.montage import (
    BACKGROUND,
    MASK_COLOUR,
    Panel,
    blend,
    compose,
    draw_cells,
    heat,
    label_colours,
    panel_size,
    resize,
    stretch,
)
from volseg.core.progress import Progress, Tracker
from volseg.core.sections import parse_sections
from volseg.errors import InputError, OptionError, OutputError
from volseg.storage.conventions import to_probability, value_scale
from volseg.storage.files import json_ready
from volseg.storage.paths import local_path, output_not_input
from volseg.storage.volumes import Volume, open_volume, overlap_region, voxel_offset

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["PreviewOptions", "PreviewResult", "choose_level", "parse_sections", "preview"]

STYLES = ("fill", "outline", "both")


#: The largest panel side and number of columns: a picture, not a full-resolution export (beyond them the PNG
#: would be gigapixels, and the image library refuses sizes past 2**31).
MAX_PANEL, MAX_COLUMNS = 8192, 256


@dataclass(frozen=True)
class PreviewOptions:
    """How the montage looks.

    Attributes
    ----------
    sections
        Section indices to draw (level-0 numbering); ``None``: up to 4 evenly spaced.
    level
        Pyramid level to read, or ``None`` to choose the coarsest one whose sections are
        still at least ``panel`` pixels on their longer side.
    panel
        Longer side of each panel in pixels.
    columns
        Sections per row of the montage before it wraps.
    style
        How cells are drawn over the raw data: ``fill``, ``outline`` or ``both``.
    alpha
        Opacity of filled masks and cells.
    """

    sections: tuple[int, ...] | None = None
    level: int | None = None
    panel: int = 320
    columns: int = 6
    style: str = "both"
    alpha: float = 0.45

    def __post_init__(self) -> None:
        if not 16 <= self.panel <= MAX_PANEL:
            raise OptionError(
                f"--panel {self.panel}: must be 16..{MAX_PANEL} pixels (the longer side of a panel)"
            )
        if not 1 <= self.columns <= MAX_COLUMNS:
            raise OptionError(f"--columns {self.columns}: must be 1..{MAX_COLUMNS}")
        if self.style not in STYLES:
            raise OptionError(f"--style {self.style!r}: use one of {', '.join(STYLES)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise OptionError(f"--alpha {self.alpha}: must lie between 0 and 1")
        if self.level is not None and self.level < 0:
            raise OptionError(f"--level {self.level}: must be 'auto' or a level number >= 0")


@dataclass(frozen=True)
class PreviewResult:
    """What a preview wrote.

    Attributes
    ----------
    path
        The PNG.
    width, height
        Its size in pixels; ``None`` for training curves (``curves=``), as are the fields below.
    sections
        The sections drawn (the base volume's numbering).
    level, overlay_level
        The pyramid levels read for the volume and the overlay (``None`` without one).
    overlay_region
        Where the overlay lies, ``[start, stop)`` per axis in the volume's voxels; ``None`` without one.
    """

    path: str
    width: int | None = None
    height: int | None = None
    sections: list[int] | None = None
    level: int | None = None
    overlay_level: int | None = None
    overlay_region: dict[str, list[int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: ``{"path": ...}`` alone for training curves."""
        if self.width is None:
            return {"path": self.path}
        return json_ready(asdict(self))


# ------------------------------------------------------------------------ parsing
def default_sections(n_sections: int, count: int = 4) -> tuple[int, ...]:
    return tuple(sorted({int(round(v)) for v in np.linspace(0, n_sections - 1, min(count, n_sections))}))


# --------------------------------------------------------------------- reading
def choose_level(vol: Volume, panel: int) -> int:
    """The coarsest pyramid level whose sections are at least ``panel`` pixels on their longer side."""
    best = 0
    for n, _ in enumerate(vol.levels):
        shape = vol.level(n).shape
        if max(shape[1:]) >= panel:
            best = n
    return best


def _kind(vol: Volume) -> str:
    kind = vol.kind
    if kind == "image" and vol.dtype == np.bool_:
        return "mask"
    return kind


def _probability(vol: Volume, section: np.ndarray) -> np.ndarray:
    return to_probability(section, *value_scale(vol))


def _read_section(vol: Volume, level: int, z: int) -> np.ndarray:
    arr = vol.level(level)
    try:
        return np.asarray(arr[z])
    except InputError:
        raise
    except (ValueError, TypeError, OSError) as exc:  # a chunk that does not decode as its metadata says
        raise InputError(
            f"{vol.path}: cannot read section {z} of level {level} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); the volume is damaged or its metadata does not match "
            "its data: write it again"
        ) from exc


# --------------------------------------------------------------------- panels
@dataclass(frozen=True)
class _Layer:
    vol: Volume
    kind: str
    level: int
    name: str


def _layer(vol: Volume, opts: PreviewOptions, name: str) -> _Layer:
    if opts.level is not None:
        level = min(opts.level, len(vol.levels) - 1)
        if opts.level >= len(vol.levels) and name == "image":
            raise OptionError(f"--level {opts.level}: {vol.path} has levels 0..{len(vol.levels) - 1}")
    else:
        level = choose_level(vol, opts.panel)
    return _Layer(vol, _kind(vol), level, name)


def _grey(layer: _Layer, z: int, size: tuple[int, int]) -> np.ndarray:
    return stretch(resize(_read_section(layer.vol, layer.level, z), size, nearest=False))


def _render(
    layer: _Layer,
    z: int,
    size: tuple[int, int],
    raw: np.ndarray | None,
    opts: PreviewOptions,
    crop: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """One panel ``(H, W, 3)`` for ``layer`` at section ``z`` (of its ``crop`` (y, x) only, if given)."""
    section = _read_section(layer.vol, layer.level, z)
    if crop is not None:
        section = section[crop]
    if layer.kind == "probability":
        return heat(_probability(layer.vol, resize(section, size, nearest=False)))
    if layer.kind == "label":
        labels = resize(section, size, nearest=True)
        return draw_cells(raw, labels, opts.style, opts.alpha) if raw is not None else label_colours(labels)
    if layer.kind == "mask":
        mask = resize(section != 0, size, nearest=True)
        if raw is None:
            return np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
        return blend(raw, np.broadcast_to(np.array(MASK_COLOUR, np.uint8), (*size, 3)), mask, opts.alpha)
    grey = stretch(resize(section, size, nearest=False))
    return np.repeat(grey[..., None], 3, axis=2)


# ------------------------------------------------------------------------ the API
def _open(path: str | os.PathLike, what: str) -> Volume:
    vol = open_volume(path)
    if vol.shape[0] < 1:
        raise InputError(f"{path}: {what} volume has no sections")
    return vol


@dataclass(frozen=True)
class _Place:
    """Where the overlay lies on the base volume: its start and the overlap, in the base's voxels."""

    start: tuple[int, ...]  # the overlay's first voxel, in the base's frame
    region: tuple[tuple[int, int], ...]  # [start, stop) per axis, in the base's frame
    whole: bool  # the overlay covers the base exactly

    def overlay_crop(self, over: Volume, level: int) -> tuple[slice, slice]:
        """The overlap's (y, x) in the overlay's own pixels at pyramid ``level``."""
        shape = over.level(level).shape
        crop = []
        for ax in (1, 2):
            f = shape[ax] / over.shape[ax]
            lo, hi = (v - self.start[ax] for v in self.region[ax])
            a = int(np.floor(lo * f))
            crop.append(slice(a, max(a + 1, int(np.ceil(hi * f)))))
        return crop[0], crop[1]

    def box(self, base: Volume, size: tuple[int, int]) -> tuple[slice, slice]:
        """The overlap's (y, x) in the pixels of a base panel of ``size``."""
        box = []
        for ax, n in ((1, size[0]), (2, size[1])):
            lo, hi = (round(v * n / base.shape[ax]) for v in self.region[ax])
            lo = min(lo, n - 1)
            box.append(slice(lo, max(lo + 1, min(hi, n))))
        return box[0], box[1]


def _place_overlay(base: Volume, over: Volume) -> _Place:
    """Place the overlay on the base by their OME translations (voxel sizes must then agree)."""
    base_at, over_at = voxel_offset(base), voxel_offset(over)
    start = tuple(o - b for o, b in zip(over_at, base_at, strict=True))
    whole = not any(start) and base.shape == over.shape
    if not whole and not np.allclose(base.voxel_size, over.voxel_size, rtol=1e-6):
        raise InputError(
            f"{over.path}: overlay voxel size {list(over.voxel_size)} differs from {base.path} voxel "
            f"size {list(base.voxel_size)}, so it cannot be placed on it; overlay a volume made from the "
            "same image"
        )
    region = overlap_region((0, 0, 0), base.shape, start, over.shape)
    if region is None:
        theirs = ", ".join(f"{ax} {a}:{a + n}" for ax, a, n in zip("zyx", start, over.shape, strict=True))
        raise InputError(
            f"{over.path}: the overlay does not overlap {base.path}: it lies at {theirs} of its "
            f"{'x'.join(map(str, base.shape))} voxels (from their OME translations); overlay a volume "
            "made from (part of) the same image"
        )
    return _Place(start, region, whole)


def _save(canvas: Image.Image, out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(out, format="PNG")
    except OSError as exc:
        raise OutputError(
            f"{out}: cannot write the PNG ({exc.strerror or exc}); choose a writable location"
        ) from exc


def preview(
    volume: str | os.PathLike | None = None,
    out: str | os.PathLike = "preview.png",
    options: PreviewOptions | None = None,
    *,
    overlay: str | os.PathLike | None = None,
    curves: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> PreviewResult:
    """Write a PNG montage of some sections of a volume, optionally with an overlay.

    Parameters
    ----------
    volume
        A volume ``(Z, Y, X)``: image, probability, mask or label.
    out
        The PNG to write (replaced if it exists).
    options
        :class:`PreviewOptions` (sections, pyramid level, panel size, style).
    overlay
        A probability, mask or label volume, drawn in a second row where it lies over
        ``volume``: placed by the OME translations of both (``volseg predict --roi``
        records one), so an ROI's overlay covers only its part of each panel. Sections
        are the base volume's; by default, up to 4 of those the overlay covers.
    curves
        A training log (JSON lines); with it, training curves are drawn into ``out``
        instead (and ``volume`` is not needed).
    progress
        Receives the task ``"preview"``: the sections drawn.

    Returns
    -------
    PreviewResult
        ``path``, ``width``, ``height``, ``sections``, ``level`` (pyramid level read for
        ``volume``), ``overlay_level``, ``overlay_region`` (where the overlay lies, ``[start,
        stop)`` per axis in ``volume``'s voxels; ``None`` without an overlay).
    """
    out_path = local_path(out, "-o")
    if out_path.suffix.lower() != ".png":
        raise OptionError(f"-o {out_path}: the preview is a PNG; give a file name ending in .png")
    output_not_input({"-o": out_path}, {"VOLUME": volume, "--overlay": overlay, "--curves": curves})
    if curves is not None:
        return _curves(Path(os.fspath(curves)), out_path)
    if volume is None:
        raise OptionError("preview needs a VOLUME (or --curves TRAINLOG.jsonl)")
    return _montage(volume, overlay, out_path, options or PreviewOptions(), progress)


def _montage(
    volume: str | os.PathLike,
    overlay: str | os.PathLike | None,
    out: Path,
    opts: PreviewOptions,
    progress: Progress | None,
) -> PreviewResult:
    """Read, draw and write the montage of ``volume`` (and ``overlay``) into ``out``."""
    base = _open(volume, "the")
    over = _open(overlay, "the overlay") if overlay is not None else None
    place = _place_overlay(base, over) if over is not None else None
    sections = _sections(base, place, opts)
    first = _layer(base, opts, "image")
    second = _layer(over, opts, "overlay") if over is not None else None
    size = panel_size(base.shape, opts.panel)
    panels: list[list[Panel]] = []
    with Tracker(progress, "preview", len(sections), "sections") as tracker:
        for z in sections:
            panels.append(_section_panels(first, second, place, z, size, opts))
            tracker.advance()
    canvas = compose(panels, opts.columns)
    _save(canvas, out)
    return PreviewResult(
        path=str(out),
        width=canvas.width,
        height=canvas.height,
        sections=list(sections),
        level=first.level,
        overlay_level=second.level if second else None,
        overlay_region={ax: list(r) for ax, r in zip("zyx", place.region, strict=True)} if place else None,
    )


def _sections(base: Volume, place: _Place | None, opts: PreviewOptions) -> tuple[int, ...]:
    """The sections to draw (the base's numbering); by default up to 4 of those the overlay covers."""
    lo, hi = place.region[0] if place is not None else (0, base.shape[0])
    if opts.sections is None:
        return tuple(lo + z for z in default_sections(hi - lo))
    bad = [z for z in opts.sections if not 0 <= z < base.shape[0]]
    if bad:
        raise OptionError(f"--sections: section {bad[0]} is outside 0..{base.shape[0] - 1} of {base.path}")
    outside = [z for z in opts.sections if not lo <= z < hi]
    if outside:
        raise OptionError(
            f"--sections: section {outside[0]} lies outside the sections {lo}:{hi} of {base.path} that the "
            f"overlay covers; choose sections within {lo}:{hi}"
        )
    return tuple(opts.sections)


_NAMES = {"image": "image", "probability": "probability", "label": "cells", "mask": "mask"}


def _section_panels(
    first: _Layer,
    second: _Layer | None,
    place: _Place | None,
    z: int,
    size: tuple[int, int],
    opts: PreviewOptions,
) -> list[Panel]:
    column = [(f"z {z}  {_NAMES.get(first.kind, first.kind)}", _render(first, z, size, None, opts))]
    if second is not None and place is not None:
        raw = _grey(first, z, size) if first.kind == "image" else None
        title = f"z {z}  {_NAMES.get(second.kind, second.kind)}"
        column.append((title, _overlay_panel(first, second, place, z, size, raw, opts)))
    return column


def _overlay_panel(
    first: _Layer,
    second: _Layer,
    place: _Place,
    z: int,
    size: tuple[int, int],
    raw: np.ndarray | None,
    opts: PreviewOptions,
) -> np.ndarray:
    """The overlay drawn where it lies over base section ``z``: the raw data (or background) around it."""
    if place.whole:
        return _render(second, z, size, raw, opts)
    by, bx = place.box(first.vol, size)
    inner = (by.stop - by.start, bx.stop - bx.start)
    sub_raw = raw[by, bx] if raw is not None else None
    crop = place.overlay_crop(second.vol, second.level)
    drawn = _render(second, z - place.start[0], inner, sub_raw, opts, crop)
    if raw is not None:
        panel = np.repeat(raw[..., None], 3, axis=2)
    else:
        panel = np.broadcast_to(np.array(BACKGROUND, np.uint8), (*size, 3)).copy()
    panel[by, bx] = drawn
    return panel


# ---------------------------------------------------------------------- curves
def _curves(log: Path, out: Path) -> PreviewResult:
    """Training curves from a train log (``MODEL.log.jsonl``), drawn by :mod:`volseg.storage.curves`.

    The log is checked before anything is written (:func:`volseg.storage.curves.read_log`): a missing
    path, a folder, a binary file or one without a step record ends in one :class:`InputError`
    line and leaves no PNG behind.
    """
    from volseg.storage.curves import plot_curves

    return PreviewResult(path=str(plot_curves(log, out)))
