"""Rendering a section: cytoplasm, membranes, vesicles and mitochondria, then the optics and the noise.

:func:`synth_block` generates any block of a synthetic stack in memory. Each section is computed on a
tile-aligned region around the block (plus a halo for the blur) and cropped, so the block comes out bit for
bit the same whatever the chunking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from volseg.core.noise import gaussian, hash_ints, pixel_hash, smoothstep, uniform, value_noise
from volseg.core.synth.geometry import Geometry, geometry
from volseg.core.synth.params import SynthContext, SynthParams, as_shape, check_seed, make_context
from volseg.core.synth.seeds import Seeds
from volseg.errors import OptionError

__all__ = ["INTERIOR", "MEMBRANE", "synth_block"]

#: Values of the membrane labels (the ISBI 2012 convention).
MEMBRANE, INTERIOR = 0, 255


def _section_key(ctx: SynthContext, name: str, z: int) -> np.ndarray:
    return hash_ints(ctx.keys[name], z)


def _vesicles(
    ctx: SynthContext, z: int, geo: Geometry, ys: tuple[int, int], xs: tuple[int, int]
) -> np.ndarray:
    """Darkening by small vesicles (rings and dots), one possible site per 14 x 14 px cell.

    Each site's disc stays inside its own site cell, so a pixel only looks at its own site.
    """
    p, s = ctx.params, 14
    gy = np.arange(ys[0] // s, (ys[1] - 1) // s + 1)
    gx = np.arange(xs[0] // s, (xs[1] - 1) // s + 1)
    h = hash_ints(_section_key(ctx, "vesicle", z), gy[:, None], gx[None, :])
    field = value_noise(ctx.keys["vesicle_field"], z, (gy[0], gy[-1] + 1), (gx[0], gx[-1] + 1), 4.0, 4.0)
    active = uniform(h, 0) < p.vesicle_density * np.clip(0.5 + 0.5 * field, 0.0, 1.0)
    r_lo, r_hi = p.vesicle_radius
    radius = r_lo + (r_hi - r_lo) * uniform(h, 1)
    free = s / 2 - radius - 1.0
    # centres relative to their site cell, so that float32 stays exact far from the origin
    cy = s / 2 - 0.5 + (2.0 * uniform(h, 2) - 1.0) * free
    cx = s / 2 - 0.5 + (2.0 * uniform(h, 3) - 1.0) * free
    ring = uniform(h, 4) < 0.75
    site = ((np.arange(*ys) // s - gy[0])[:, None] * gx.size + (np.arange(*xs) // s - gx[0])[None, :]).ravel()
    pick = lambda a: np.take(np.asarray(a, dtype=np.float32).ravel(), site).reshape(geo.ids.shape)  # noqa: E731
    dy = pick(cy)
    dy -= (np.arange(*ys) % s).astype(np.float32)[:, None]
    dx = pick(cx)
    dx -= (np.arange(*xs) % s).astype(np.float32)[None, :]
    rho = np.sqrt(dy * dy + dx * dx)
    r = pick(radius)
    rim = 1.0 - smoothstep(0.4, 1.4, np.abs(rho - r + np.float32(0.8)))
    dot = 1.0 - smoothstep(-0.5, 0.7, rho - r * np.float32(0.75))
    is_ring = pick(ring)
    dark = (is_ring * rim * np.float32(0.5) + (1.0 - is_ring) * dot * np.float32(0.5)) * pick(active)
    dark *= smoothstep(0.35, 0.75, geo.vesicles)
    dark *= smoothstep(r_hi + 0.5, r_hi + 2.5, geo.edge)  # not across membranes
    return dark


def _mitochondria(ctx: SynthContext, z: int, seeds: Seeds) -> list[tuple[float, ...]]:
    """Mitochondria alive at section ``z``: (owner id, cy, cx, a, b, cos, sin, phase).

    Each parent seed may hold one per 16-section window; it rides along with its seed,
    grows and shrinks over 6 to 14 sections and turns slowly.
    """
    p, g, length = ctx.params, ctx.params.cell_size, 16
    a_lo, a_hi, b_lo, b_hi = p.mito_axes
    out = []
    ii, jj = seeds.parent_cell[:, 0], seeds.parent_cell[:, 1]
    for window in (z // length - 1, z // length, z // length + 1):
        h = hash_ints(ctx.keys["mito"], ii, jj, window)
        zc = window * length + length * uniform(h, 1)
        half = 3.0 + 4.0 * uniform(h, 2)
        live = np.nonzero((uniform(h, 0) < p.mito_rate) & (np.abs(z - zc) < half))[0]
        for k in live:
            scale = 0.35 + 0.65 * math.sqrt(max(0.0, 1.0 - ((z - zc[k]) / half[k]) ** 2))
            u = [float(uniform(h[k : k + 1], n)[0]) for n in range(3, 9)]
            a = (a_lo + (a_hi - a_lo) * u[0]) * scale
            b = min((b_lo + (b_hi - b_lo) * u[1]) * scale, a)
            angle = 2.0 * math.pi * u[2] + 0.06 * (z - zc[k])
            cy = seeds.parent_y[k] + (u[3] - 0.5) * 0.3 * g
            cx = seeds.parent_x[k] + (u[4] - 0.5) * 0.3 * g
            out.append((float(seeds.parent_id[k]), cy, cx, a, b, math.cos(angle), math.sin(angle), u[5]))
    return out


def _draw_mitochondrion(img: np.ndarray, geo: Geometry, m: tuple[float, ...], ys, xs) -> None:
    owner, cy, cx, a, b, cos, sin, phase = m
    r0, r1 = max(math.floor(cy - a - 2), ys[0]), min(math.ceil(cy + a + 3), ys[1])
    c0, c1 = max(math.floor(cx - a - 2), xs[0]), min(math.ceil(cx + a + 3), xs[1])
    if r0 >= r1 or c0 >= c1:
        return
    yy = (np.arange(r0, r1) - cy).astype(np.float32)[:, None]
    xx = (np.arange(c0, c1) - cx).astype(np.float32)[None, :]
    u = np.float32(cos) * yy + np.float32(sin) * xx  # along the long axis
    v = np.float32(cos) * xx - np.float32(sin) * yy
    rho = np.sqrt((u * np.float32(1.0 / a)) ** 2 + (v * np.float32(1.0 / b)) ** 2)
    out_px = (rho - np.float32(1.0)) * np.float32(b)  # ~ px outside the outline
    inside = 1.0 - smoothstep(-0.6, 0.6, out_px)
    rim = 1.0 - smoothstep(0.5, 1.6, np.abs(out_px + np.float32(1.2)))
    stripe = u * np.float32(1.0 / 6.5) + np.float32(phase)
    tri = np.abs(np.float32(2.0) * (stripe - np.floor(stripe)) - np.float32(1.0))
    cristae = (1.0 - smoothstep(0.2, 0.55, tri)) * (1.0 - smoothstep(0.55, 0.85, rho))
    dark = inside * np.float32(0.32) + rim * np.float32(0.3) + cristae * np.float32(0.22)
    rows, cols = slice(r0 - ys[0], r1 - ys[0]), slice(c0 - xs[0], c1 - xs[0])
    mask = (geo.ids[rows, cols] == np.uint32(owner)) * smoothstep(0.0, 1.5, geo.edge[rows, cols])
    img[rows, cols] *= 1.0 - np.minimum(dark, np.float32(0.8)) * mask


def _render(ctx: SynthContext, z: int, geo: Geometry, ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray:
    """The clean section before optics: float32 intensities, about 0..1."""
    p = ctx.params
    mid = value_noise(_section_key(ctx, "texture", z), 0, ys, xs, 3.5)
    grain = uniform(pixel_hash(ctx.keys["grain"], z, ys, xs)).astype(np.float32)
    grain -= np.float32(0.5)
    grain *= np.float32(p.grain)  # white, then band-limited by the PSF: the finest texture
    img = np.float32(1.0) + np.float32(p.texture) * mid
    img += grain
    img -= np.float32(1.6 * p.texture) * smoothstep(0.7, 1.9, mid) * geo.specks  # dark granules
    img *= geo.tone
    smudge = value_noise(ctx.keys["smudge"], z, ys, xs, 70.0, 8.0)
    img *= 1.0 - np.float32(p.smudge) * smoothstep(0.6, 2.0, smudge)
    # the dark line is a little narrower than the labelled band, as in hand-drawn ISBI labels
    img *= 1.0 - np.float32(p.membrane_contrast) * (1.0 - smoothstep(-1.6, 0.2, geo.edge))
    img *= 1.0 - _vesicles(ctx, z, geo, ys, xs)
    for m in _mitochondria(ctx, z, geo.seeds):
        _draw_mitochondrion(img, geo, m, ys, xs)
    return img


def _acquire(
    ctx: SynthContext, z: int, img: np.ndarray, ys: tuple[int, int], xs: tuple[int, int]
) -> np.ndarray:
    """Uneven illumination, per-section brightness, Poisson-Gaussian noise, 8-bit output."""
    p = ctx.params
    gain = value_noise(ctx.keys["gain"], z, ys, xs, 240.0, 40.0)
    gain *= np.float32(p.illumination * 0.5)
    gain += np.float32(1.0 + 0.05 * (2.0 * uniform(hash_ints(ctx.keys["section"], z))[0] - 1.0))
    img = img * gain
    np.maximum(img, 0.0, out=img)
    sd = np.sqrt(img * np.float32(1.0 / p.photons) + np.float32(p.read_noise**2))
    img += sd * gaussian(pixel_hash(ctx.keys["noise"], z, ys, xs))
    img *= np.float32(255.0)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _section(ctx: SynthContext, z: int, ys: tuple[int, int], xs: tuple[int, int]):
    """One section of a block: the image, cell ids and ISBI-convention membrane labels."""
    t, h = ctx.tile, ctx.halo
    py = (math.floor((ys[0] - h) / t) * t, math.ceil((ys[1] + h) / t) * t)  # tile-aligned, with halo
    px = (math.floor((xs[0] - h) / t) * t, math.ceil((xs[1] + h) / t) * t)
    geo = geometry(ctx, z, py, px)
    clean = _render(ctx, z, geo, py, px)
    if ctx.params.blur_sigma > 0:
        clean = ndi.gaussian_filter(clean, ctx.params.blur_sigma, mode="nearest", truncate=4.0)
    crop = (slice(ys[0] - py[0], ys[1] - py[0]), slice(xs[0] - px[0], xs[1] - px[0]))
    image = _acquire(ctx, z, clean[crop], ys, xs)
    labels = np.where(geo.edge[crop] < 0, np.uint8(MEMBRANE), np.uint8(INTERIOR))
    return image, geo.ids[crop], labels


def synth_block(
    shape: Sequence[int],
    seed: int = 0,
    offset: Sequence[int] = (0, 0, 0),
    full_shape: Sequence[int] | None = None,
    params: SynthParams | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one block of a synthetic stack in memory.

    The block at ``offset`` of a volume of ``full_shape`` is the same, bit for bit,
    whether it is generated alone, as part of a bigger block, or the whole volume at once.

    Parameters
    ----------
    shape
        Block size ``(Z, Y, X)``.
    seed
        Selects the volume (any integer in 0..2**64-1).
    offset
        Global index ``(z, y, x)`` of the block's first voxel.
    full_shape
        Shape of the whole volume; it fixes the numbering of cell ids. Defaults to ``offset + shape``.
    params
        Appearance and dynamics; :class:`SynthParams` defaults mimic ISBI 2012.

    Returns
    -------
    image : numpy.ndarray
        uint8 ``(Z, Y, X)`` EM-like intensities.
    cells : numpy.ndarray
        uint32 ``(Z, Y, X)`` cell ids, a complete partition, stable across sections.
    membranes : numpy.ndarray
        uint8 ``(Z, Y, X)``: 255 = cell interior, 0 = membrane (ISBI 2012 convention).
    """
    params = params or SynthParams()
    params.validate()
    shape, offset = as_shape(shape, "shape"), as_shape(offset, "offset")
    full = (
        as_shape(full_shape, "full_shape")
        if full_shape is not None
        else tuple(o + s for o, s in zip(offset, shape, strict=True))
    )
    if min(shape) < 1:
        raise OptionError(f"synth shape {shape}: every size must be at least 1")
    if min(offset) < 0 or any(o + s > f for o, s, f in zip(offset, shape, full, strict=True)):
        raise OptionError(f"synth block {shape} at {offset} does not fit in a volume of {full}")
    ctx = make_context(params, check_seed(seed), full)
    image = np.empty(shape, np.uint8)
    cells = np.empty(shape, np.uint32)
    membranes = np.empty(shape, np.uint8)
    ys, xs = (offset[1], offset[1] + shape[1]), (offset[2], offset[2] + shape[2])
    for dz in range(shape[0]):
        image[dz], cells[dz], membranes[dz] = _section(ctx, offset[0] + dz, ys, xs)
    return image, cells, membranes
