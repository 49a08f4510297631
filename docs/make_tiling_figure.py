"""Make ``docs/images/tiling.png``: blocks, the aligned halo window, tiles, and the halo overhead.

Left: one section cut into output chunks. A block (here one chunk) is extended down to the
pooling grid (multiples of the divisor) and read with a halo on each side; at the section's
edges the window stops ``--edge`` px beyond the section (mirrored pixels; default 0), as the
whole-section reference does. Inside, tiles start at multiples of the tile from the aligned
origin, each run with its own halo, clipped the same way.
Right: the compute overhead ``(T + 2h)^2 / T^2`` against the tile ``T``. Run from the
repository root::

    python docs/make_tiling_figure.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from volseg.core.tiling import aligned_window, halo_overhead, tile_starts  # noqa: E402

OUT = Path(__file__).resolve().parent / "images" / "tiling.png"
SECTION = (540, 720)  # (Y, X) px of the drawn section
CHUNK = 180
DIVISOR, HALO, TILE = 32, 64, 128  # illustrative: the default model has divisor 16 and halo 96
EDGE = 32  # illustrative --edge; the default is 0


def rect(ax, y0, y1, x0, x1, **kw):
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, **kw))


def draw_block(ax, by, bx, label_tiles: bool) -> None:
    """Block = chunk (by, bx): aligned inner region, halo window, tiles and one tile's window."""
    (y0, y1), (x0, x1) = (
        (by * CHUNK, min((by + 1) * CHUNK, SECTION[0])),
        (bx * CHUNK, min((bx + 1) * CHUNK, SECTION[1])),
    )
    wy = aligned_window(y0, y1, HALO, DIVISOR, SECTION[0], EDGE)
    wx = aligned_window(x0, x1, HALO, DIVISOR, SECTION[1], EDGE)
    rect(ax, wy.lo, wy.hi, wx.lo, wx.hi, fill=False, ec="tab:orange", lw=2, ls="--")
    rect(ax, wy.origin, y1, wx.origin, x1, fc="tab:blue", alpha=0.15, ec="none")
    rect(ax, y0, y1, x0, x1, fc="tab:blue", alpha=0.35, ec="tab:blue", lw=2)
    ty = tile_starts(y1 - wy.origin, TILE, DIVISOR)
    tx = tile_starts(x1 - wx.origin, TILE, DIVISOR)
    for sy, ny in ty:
        for sx, nx in tx:
            rect(
                ax,
                wy.origin + sy,
                wy.origin + sy + ny,
                wx.origin + sx,
                wx.origin + sx + nx,
                fill=False,
                ec="tab:green",
                lw=1,
                ls=":",
            )
    if label_tiles:
        sy, ny = ty[0]
        sx, nx = tx[0]
        rect(
            ax,
            max(wy.origin + sy - HALO, wy.lo),
            min(wy.origin + sy + ny + HALO, wy.hi),
            max(wx.origin + sx - HALO, wx.lo),
            min(wx.origin + sx + nx + HALO, wx.hi),
            fill=False,
            ec="tab:green",
            lw=1.2,
            ls="--",
        )


def section_panel(ax) -> None:
    ax.set_title("a block, its aligned window and its tiles", fontsize=10)
    pad = 110
    rect(ax, -EDGE, SECTION[0] + EDGE, -EDGE, SECTION[1] + EDGE, fc="none", ec="0.75", lw=0, hatch="///")
    rect(ax, 0, SECTION[0], 0, SECTION[1], fc="white", ec="black", lw=2)
    for y in range(0, SECTION[0] + 1, CHUNK):
        ax.plot([0, SECTION[1]], [y, y], color="0.6", lw=0.8)
    for x in range(0, SECTION[1] + 1, CHUNK):
        ax.plot([x, x], [0, SECTION[0]], color="0.6", lw=0.8)
    for y in range(0, SECTION[0], DIVISOR):  # the pooling grid, as ticks on the left edge
        ax.plot([-8, 0], [y, y], color="tab:purple", lw=0.8)
    draw_block(ax, 1, 1, label_tiles=True)
    draw_block(ax, 0, 3, label_tiles=True)
    ax.set_xlim(-pad, SECTION[1] + pad)
    ax.set_ylim(SECTION[0] + pad, -pad)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    handles = [
        Rectangle(
            (0, 0), 1, 1, fc="tab:blue", alpha=0.35, ec="tab:blue", label="block (whole output chunks)"
        ),
        Rectangle(
            (0, 0), 1, 1, fc="tab:blue", alpha=0.15, label=f"extended down to the pooling grid ({DIVISOR} px)"
        ),
        Rectangle((0, 0), 1, 1, fill=False, ec="tab:orange", ls="--", label=f"window read: + halo {HALO} px"),
        Rectangle(
            (0, 0), 1, 1, fill=False, ec="tab:green", ls=":", label=f"tiles ({TILE} px, last one shorter)"
        ),
        Rectangle(
            (0, 0),
            1,
            1,
            fill=False,
            ec="tab:green",
            ls="--",
            label="one tile's input: tile + 2 halo, within the edge",
        ),
        Rectangle(
            (0, 0), 1, 1, fc="none", ec="0.75", hatch="///", label=f"--edge {EDGE}: mirrored (default 0)"
        ),
    ]
    ax.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=8, ncol=2, frameon=False
    )


def overhead_panel(ax) -> None:
    ax.set_title("halo overhead (T + 2h)$^2$ / T$^2$", fontsize=10)
    tiles = range(128, 2049, 16)
    for halo in (48, 96, 192):
        ax.plot(list(tiles), [halo_overhead(t, halo) for t in tiles], label=f"h = {halo} px")
    for t in (512, 1024):
        ax.axvline(t, color="0.7", lw=0.8)
        ax.annotate(
            f"T={t}, h=96: {halo_overhead(t, 96):.2f}",
            (t, halo_overhead(t, 96)),
            xytext=(6, 8),
            textcoords="offset points",
            fontsize=8,
        )
    ax.set_xlabel("tile T (px)")
    ax.set_ylabel("pixels computed per output pixel")
    ax.set_ylim(1, 4)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def main() -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5.2), gridspec_kw={"width_ratios": [1.35, 1]})
    section_panel(left)
    overhead_panel(right)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(OUT)


if __name__ == "__main__":
    main()
