"""Pictures from sections, composed with numpy and Pillow: greys, heat maps, label colours, montages.

Pure functions of arrays, no paths: :mod:`volseg.stages.preview` reads the sections and writes the
PNG. The size of a montage in pixels depends only on its panels, never on fonts or a plotting layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image, ImageFont

__all__ = [
    "BACKGROUND",
    "GAP",
    "MASK_COLOUR",
    "Panel",
    "TITLE_HEIGHT",
    "blend",
    "compose",
    "draw_cells",
    "heat",
    "label_colours",
    "panel_size",
    "resize",
    "stretch",
]

MASK_COLOUR = (0, 255, 110)  # a green that reads on grey EM data
TITLE_HEIGHT = 20
GAP = 4
BACKGROUND = (24, 24, 24)

Panel = tuple[str, np.ndarray]
"""A panel: its title and its picture ``(H, W, 3)`` uint8."""


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


def resize(img: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
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


def panel_size(shape: Sequence[int], panel: int) -> tuple[int, int]:
    y, x = shape[-2:]
    s = panel / max(y, x)
    return max(1, round(y * s)), max(1, round(x * s))


def _title_font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=height - 6)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def compose(panels: Sequence[Sequence[Panel]], columns: int) -> Image.Image:
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
