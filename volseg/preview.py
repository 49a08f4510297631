"""PNG montages of volumes: raw sections, probabilities, masks and cells at a glance.

Only the drawn sections are read, and from the coarsest pyramid level that is still at
least as large as a panel, so an 8k x 8k x 5000 stack previews as fast as a small one.
The picture is composed directly with numpy and Pillow, so its size in pixels depends
only on the options and the volume's aspect ratio, never on fonts or a plotting layout.

Layout: one column per section; the first row shows ``VOL`` (greys, contrast-stretched
between its 1st and 99th percentiles; a probability volume as a heat map; a label volume
in label colours), the second row the overlay, if any: probabilities as a heat map,
a mask filled in one colour over the raw section, cells in label colours (filled with
``alpha`` and outlined). Every panel has a title with its section index.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from volseg.errors import InputError, OptionError, OutputError
from volseg.sections import parse_sections
from volseg.volume import Volume, open_volume

__all__ = ["PreviewOptions", "choose_level", "label_colours", "parse_sections", "preview", "stretch"]

MASK_COLOUR = (0, 255, 110)  # a green that reads on grey EM data
TITLE_HEIGHT = 20
GAP = 4
BACKGROUND = (24, 24, 24)
STYLES = ("fill", "outline", "both")


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
        if self.panel < 16:
            raise OptionError(f"--panel {self.panel}: must be at least 16 pixels")
        if self.columns < 1:
            raise OptionError(f"--columns {self.columns}: must be at least 1")
        if self.style not in STYLES:
            raise OptionError(f"--style {self.style!r}: use one of {', '.join(STYLES)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise OptionError(f"--alpha {self.alpha}: must lie between 0 and 1")
        if self.level is not None and self.level < 0:
            raise OptionError(f"--level {self.level}: must be 'auto' or a level number >= 0")


# ------------------------------------------------------------------------ parsing
def default_sections(n_sections: int, count: int = 4) -> tuple[int, ...]:
    return tuple(sorted({int(round(v)) for v in np.linspace(0, n_sections - 1, min(count, n_sections))}))


# ---------------------------------------------------------------- pure image steps
def stretch(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Greys ``(Y, X)`` uint8, linearly stretched between two percentiles."""
    img = image.astype(np.float32, copy=False)
    lo, hi = np.percentile(img, [low, high]) if img.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((img - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def heat(prob: np.ndarray) -> np.ndarray:
    """Probabilities 0..1 ``(Y, X)`` -> RGB ``(Y, X, 3)`` uint8 with the ``inferno`` colormap."""
    from matplotlib import colormaps

    lut = (colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    return lut[np.clip(prob * 255.0 + 0.5, 0, 255).astype(np.uint8)]


def label_colours(labels: np.ndarray) -> np.ndarray:
    """A bright, stable colour per id (a hash of the id, glasbey-like); 0 is black.

    Parameters
    ----------
    labels
        ``(Y, X)`` integer ids.

    Returns
    -------
    numpy.ndarray
        ``(Y, X, 3)`` uint8. The same id has the same colour in every panel and run.
    """
    from matplotlib.colors import hsv_to_rgb

    ids, inverse = np.unique(labels, return_inverse=True)
    h = ids.astype(np.uint64) * np.uint64(2654435761) % np.uint64(2**32)  # Knuth's multiplicative hash
    hsv = np.stack(
        [
            (h % np.uint64(1000)).astype(np.float64) / 1000.0,
            0.55 + ((h >> np.uint64(10)) % np.uint64(100)).astype(np.float64) / 220.0,
            0.75 + ((h >> np.uint64(17)) % np.uint64(100)).astype(np.float64) / 400.0,
        ],
        axis=1,
    )
    rgb = (hsv_to_rgb(hsv) * 255.0 + 0.5).astype(np.uint8)
    rgb[ids == 0] = 0
    return rgb[inverse.reshape(labels.shape)]


def blend(grey: np.ndarray, colour: np.ndarray, where: np.ndarray, alpha: float) -> np.ndarray:
    """Greys ``(Y, X)`` with ``colour`` ``(Y, X, 3)`` laid over them where ``where`` is set."""
    out = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    w = where[..., None]
    out = np.where(w, (1.0 - alpha) * out + alpha * colour.astype(np.float32), out)
    return (out + 0.5).astype(np.uint8)


def draw_cells(grey: np.ndarray, labels: np.ndarray, style: str, alpha: float) -> np.ndarray:
    """Cells over the raw section: filled with ``alpha``, outlined in full colour, or both."""
    from skimage.segmentation import find_boundaries

    colours = label_colours(labels)
    fg = labels != 0
    out = blend(grey, colours, fg, alpha if style in ("fill", "both") else 0.0)
    if style in ("outline", "both"):
        edge = find_boundaries(labels, mode="inner") & fg
        out[edge] = colours[edge]
    return out


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
    from volseg.segment import value_scale

    scale, offset = value_scale(vol)
    return np.clip(section.astype(np.float32) * np.float32(scale) + np.float32(offset), 0.0, 1.0)


def _read_section(vol: Volume, level: int, z: int) -> np.ndarray:
    arr = vol.level(level)
    return np.asarray(arr[z])


def _resize(img: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """``img`` (Y, X) resized to ``size`` (height, width): area-weighted, or nearest for ids."""
    from PIL import Image

    if img.shape == size:
        return img
    if nearest:
        ys = (np.arange(size[0]) * img.shape[0] // size[0]).astype(np.intp)
        xs = (np.arange(size[1]) * img.shape[1] // size[1]).astype(np.intp)
        return img[np.ix_(ys, xs)]
    pil = Image.fromarray(img.astype(np.float32), mode="F")
    return np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _panel_size(shape: Sequence[int], panel: int) -> tuple[int, int]:
    y, x = shape[-2:]
    s = panel / max(y, x)
    return max(1, round(y * s)), max(1, round(x * s))


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
    return stretch(_resize(_read_section(layer.vol, layer.level, z), size, nearest=False))


def _render(
    layer: _Layer, z: int, size: tuple[int, int], raw: np.ndarray | None, opts: PreviewOptions
) -> np.ndarray:
    """One panel ``(H, W, 3)`` for ``layer`` at section ``z``."""
    section = _read_section(layer.vol, layer.level, z)
    if layer.kind == "probability":
        return heat(_probability(layer.vol, _resize(section, size, nearest=False)))
    if layer.kind == "label":
        labels = _resize(section, size, nearest=True)
        return draw_cells(raw, labels, opts.style, opts.alpha) if raw is not None else label_colours(labels)
    if layer.kind == "mask":
        mask = _resize(section != 0, size, nearest=True)
        if raw is None:
            return np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
        return blend(raw, np.broadcast_to(np.array(MASK_COLOUR, np.uint8), (*size, 3)), mask, opts.alpha)
    grey = stretch(_resize(section, size, nearest=False))
    return np.repeat(grey[..., None], 3, axis=2)


def _title_font(height: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=height - 6)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _compose(panels: list[list[tuple[str, np.ndarray]]], columns: int) -> Any:
    """Panels grouped per section (a column of rows) -> one PIL image."""
    from PIL import Image, ImageDraw

    rows = len(panels[0])
    h, w = panels[0][0][1].shape[:2]
    grid_rows = -(-len(panels) // columns)
    cols = min(columns, len(panels))
    cell_h, cell_w = TITLE_HEIGHT + h, w
    width = GAP + cols * (cell_w + GAP)
    height = GAP + grid_rows * (rows * (cell_h + GAP))
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _title_font(TITLE_HEIGHT)
    for i, column in enumerate(panels):
        gx, gy = i % columns, i // columns
        x = GAP + gx * (cell_w + GAP)
        for r, (title, img) in enumerate(column):
            y = GAP + (gy * rows + r) * (cell_h + GAP)
            draw.text((x + 2, y + 2), title, fill=(235, 235, 235), font=font)
            canvas.paste(Image.fromarray(np.ascontiguousarray(img)), (x, y + TITLE_HEIGHT))
    return canvas


# ------------------------------------------------------------------------ the API
def _open(path: str | os.PathLike, what: str) -> Volume:
    vol = open_volume(path)
    if vol.shape[0] < 1:
        raise InputError(f"{path}: {what} volume has no sections")
    return vol


def _check_overlay(base: Volume, over: Volume) -> None:
    if base.shape != over.shape:
        raise InputError(
            f"{over.path}: overlay shape {over.shape} differs from {base.path} shape {base.shape}; "
            "overlay a volume made from the same image"
        )


def _save(canvas: Any, out: Path) -> None:
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
    *,
    overlay: str | os.PathLike | None = None,
    options: PreviewOptions | None = None,
    curves: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write a PNG montage of some sections of a volume, optionally with an overlay.

    Parameters
    ----------
    volume
        A volume ``(Z, Y, X)``: image, probability, mask or label.
    out
        The PNG to write (replaced if it exists).
    overlay
        A probability, mask or label volume of the same shape, drawn in a second row.
    options
        :class:`PreviewOptions` (sections, pyramid level, panel size, style).
    curves
        A training log (JSON lines); with it, training curves are drawn into ``out``
        instead (and ``volume`` is not needed).

    Returns
    -------
    dict
        ``path``, ``width``, ``height``, ``sections``, ``level`` (pyramid level read for
        ``volume``), ``overlay_level``.
    """
    out_path = Path(os.fspath(out))
    if out_path.suffix.lower() != ".png":
        raise OptionError(f"-o {out_path}: the preview is a PNG; give a file name ending in .png")
    if curves is not None:
        return _curves(Path(os.fspath(curves)), out_path)
    if volume is None:
        raise OptionError("preview needs a VOLUME (or --curves TRAINLOG.jsonl)")
    opts = options or PreviewOptions()
    base = _open(volume, "the")
    over = _open(overlay, "the overlay") if overlay is not None else None
    if over is not None:
        _check_overlay(base, over)
    sections = opts.sections if opts.sections is not None else default_sections(base.shape[0])
    bad = [z for z in sections if not 0 <= z < base.shape[0]]
    if bad:
        raise OptionError(f"--sections: section {bad[0]} is outside 0..{base.shape[0] - 1} of {base.path}")
    first = _layer(base, opts, "image")
    second = _layer(over, opts, "overlay") if over is not None else None
    size = _panel_size(base.shape, opts.panel)
    panels = [_section_panels(first, second, z, size, opts) for z in sections]
    canvas = _compose(panels, opts.columns)
    _save(canvas, out_path)
    return {
        "path": str(out_path),
        "width": canvas.width,
        "height": canvas.height,
        "sections": list(sections),
        "level": first.level,
        "overlay_level": second.level if second else None,
    }


_NAMES = {"image": "image", "probability": "probability", "label": "cells", "mask": "mask"}


def _section_panels(
    first: _Layer, second: _Layer | None, z: int, size: tuple[int, int], opts: PreviewOptions
) -> list[tuple[str, np.ndarray]]:
    column = [(f"z {z}  {_NAMES.get(first.kind, first.kind)}", _render(first, z, size, None, opts))]
    if second is not None:
        raw = _grey(first, z, size) if first.kind == "image" else None
        column.append((f"z {z}  {_NAMES.get(second.kind, second.kind)}", _render(second, z, size, raw, opts)))
    return column


# ---------------------------------------------------------------------- curves
def _curves(log: Path, out: Path) -> dict[str, Any]:
    """Training curves from a JSON-lines training log, drawn by :mod:`volseg.curves`."""
    if not log.is_file():
        raise InputError(
            f"{log}: no such training log; pass the train log (JSON lines) written by 'volseg train'"
        )
    from volseg.curves import plot_curves

    return {"path": str(plot_curves(log, out))}
