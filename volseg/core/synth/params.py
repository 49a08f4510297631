"""Parameters of a synthetic stack, the per-volume constants derived from them, and argument checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from volseg.core.noise import stream_keys
from volseg.errors import OptionError

__all__ = ["STREAMS", "SynthContext", "SynthParams", "as_shape", "check_seed", "make_context"]


@dataclass(frozen=True)
class SynthParams:
    """Appearance and dynamics of a synthetic stack (lengths in pixels, z in sections).

    The defaults mimic ISBI 2012 (ssTEM, 4 x 4 x 50 nm): about 115 cells per 512 x 512
    section, from 15 to 170 px across; labelled membranes 3.5 to 8 px wide (the
    visibly dark line is about 1 px narrower, as in the ISBI labels); about 20 % of the
    pixels membrane.
    """

    # cells
    cell_size: float = 44.0  # spacing of the seed grid: the typical cell diameter
    jitter: float = 0.9  # seed jitter inside its grid cell (fraction of the cell)
    missing: float = 0.2  # chance that a seed is absent (never the centre of a 3 x 3 block)
    big_cells: float = 0.15  # chance that a 3 x 3 block of grid cells is one big cell
    size_variation: float = 1.0  # power-diagram weights (x cell_size): some cells grow at others' expense
    # motion along z
    drift: float = 0.4  # largest seed drift per axis (fraction of cell_size)
    drift_sections: float = 8.0  # z spacing of the drift lattice (sections)
    split: float = 0.3  # chance per grid cell and split window that the cell splits
    split_sections: int = 40  # split window: a daughter is born and merges back inside one window
    split_distance: float = 0.55  # parent-daughter distance once split (fraction of cell_size)
    # outlines
    warp: float = 30.0  # bound of the domain warp that bends membranes (typical displacement ~1/5 of it)
    warp_scale: float = 48.0  # lattice spacing of the warp
    warp_sections: float = 5.0  # z spacing of the warp lattice (sections)
    wiggle: float = 8.0  # bound of a fine warp (14 px lattice) that makes membranes wiggle
    membrane_width: tuple[float, float] = (3.5, 8.0)  # labelled width range between two cells
    width_variation: float = 0.35  # relative width change along a membrane
    corner_radius: tuple[float, float] = (2.0, 8.0)  # rounded corners: extracellular space at junctions
    membrane_contrast: float = 0.6  # darkening at the membrane core (0..1)
    # content
    cell_brightness: tuple[float, float] = (0.52, 0.65)
    texture: float = 0.2  # band-limited cytoplasm texture (standard deviation, relative)
    grain: float = 0.9  # per-pixel grain before the blur (its blurred standard deviation is ~0.06)
    smudge: float = 0.3  # darkening of diffuse low-frequency patches
    mito_rate: float = 0.1  # mitochondria per cell and 16-section window
    mito_axes: tuple[float, float, float, float] = (20.0, 40.0, 14.0, 26.0)  # a_min, a_max, b_min, b_max
    vesicle_density: float = 0.45  # share of vesicle sites in use in vesicle-rich regions
    vesicle_radius: tuple[float, float] = (3.0, 6.0)
    # acquisition
    blur_sigma: float = 1.2  # gaussian PSF
    illumination: float = 0.12  # amplitude of the low-frequency gain field
    photons: float = 600.0  # photons at intensity 1 (Poisson part of the noise)
    read_noise: float = 0.01  # Gaussian part of the noise (intensity units)

    def validate(self) -> None:
        """Raise :class:`OptionError` naming the first parameter out of range."""
        checks = [
            ("cell_size", 24 <= self.cell_size <= 512, "24..512 px"),
            ("jitter", 0 <= self.jitter <= 1, "0..1"),
            ("missing", 0 <= self.missing <= 1, "0..1"),
            ("big_cells", 0 <= self.big_cells <= 1, "0..1"),
            ("drift", 0 <= self.drift <= 0.5, "0..0.5"),
            ("split", 0 <= self.split <= 1, "0..1"),
            ("split_sections", self.split_sections >= 8, ">= 8"),
            ("split_distance", 0 <= self.split_distance <= 0.7, "0..0.7"),
            ("size_variation", 0 <= self.size_variation <= 3, "0..3"),
            ("wiggle", 0 <= self.wiggle <= 12, "0..12"),
            ("warp", 0 <= self.warp <= self.cell_size, "0..cell_size"),
            (
                "membrane_width",
                1 <= self.membrane_width[0] <= self.membrane_width[1] <= 16,
                "1 <= lo <= hi <= 16",
            ),
            (
                "corner_radius",
                0 <= self.corner_radius[0] <= self.corner_radius[1] <= 40,
                "0 <= lo <= hi <= 40",
            ),
            ("drift_sections", self.drift_sections >= 1, ">= 1"),
            ("warp_scale", self.warp_scale >= 4, ">= 4"),
            ("warp_sections", self.warp_sections >= 1, ">= 1"),
            ("width_variation", 0 <= self.width_variation <= 0.6, "0..0.6"),
            ("membrane_contrast", 0 <= self.membrane_contrast <= 1, "0..1"),
            (
                "cell_brightness",
                0 < self.cell_brightness[0] <= self.cell_brightness[1] <= 1,
                "0 < lo <= hi <= 1",
            ),
            ("texture", 0 <= self.texture <= 1, "0..1"),
            ("grain", 0 <= self.grain <= 3, "0..3"),
            ("smudge", 0 <= self.smudge <= 1, "0..1"),
            ("mito_rate", 0 <= self.mito_rate <= 1, "0..1"),
            (
                "mito_axes",
                0 < self.mito_axes[0] <= self.mito_axes[1] <= 80
                and 0 < self.mito_axes[2] <= self.mito_axes[3] <= 80,
                "0 < a_min <= a_max <= 80, 0 < b_min <= b_max <= 80",
            ),
            ("vesicle_density", 0 <= self.vesicle_density <= 1, "0..1"),
            (
                "vesicle_radius",
                1 <= self.vesicle_radius[0] <= self.vesicle_radius[1] <= 6,
                "1 <= lo <= hi <= 6",
            ),
            ("blur_sigma", 0 <= self.blur_sigma <= 4, "0..4"),
            ("illumination", 0 <= self.illumination <= 1, "0..1"),
            ("photons", self.photons > 0, "> 0"),
            ("read_noise", 0 <= self.read_noise <= 1, "0..1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise OptionError(
                    f"synth parameter {name}={getattr(self, name)!r} is out of range; use {allowed}"
                )


#: Independent random streams, one key each (their order fixes the bytes: append, never reorder).
STREAMS = (
    "cell",
    "drift",
    "split",
    "warp_y",
    "warp_x",
    "width",
    "texture",
    "grain",
    "vesicle",
    "vesicle_field",
    "mito",
    "gain",
    "noise",
    "section",
    "tone",
    "smudge",
)


@dataclass(frozen=True)
class SynthContext:
    """Per-volume constants derived from the parameters, the seed and the volume shape."""

    params: SynthParams
    keys: dict[str, np.ndarray]
    margin_cells: int  # seeds this many grid cells beyond the volume can still shape it
    grid: tuple[int, int]  # grid rows, columns covered by ids (volume plus margins)
    slots: int  # ids per grid cell: the parent and one daughter per split window
    reach: float  # px around a region within which every seed that matters lies
    max_weight: float  # largest power-diagram weight
    theta: float  # distances to membranes are exact up to this value (px)
    tile: int = 16
    halo: int = 4


def make_context(params: SynthParams, seed: int, full_shape: Sequence[int]) -> SynthContext:
    """The constants of a volume of ``full_shape`` from ``seed`` (refused when ids overflow uint32)."""
    p, g = params, params.cell_size
    disp = p.drift * g + p.split_distance * g / 2  # per-axis drift of a seed off its home grid cell
    # a pixel's nearest seed is never farther (see seeds.section_seeds)
    nearest = math.sqrt(2.0) * (2 * g + disp)
    nearest = math.sqrt(nearest**2 + (p.size_variation * g) ** 2)  # a seed farther than this never wins
    theta = max(p.corner_radius[1], p.membrane_width[1] / 2 + p.vesicle_radius[1] + 3.0) + 1.0
    tile = 16
    halo = int(4.0 * p.blur_sigma + 0.5)
    reach = nearest + math.sqrt(2.0) * tile + 2 * theta + disp + p.warp + p.wiggle + 2.0
    margin = math.ceil((reach + tile + halo) / g) + 1
    grid = (math.ceil(full_shape[1] / g) + 2 * margin + 1, math.ceil(full_shape[2] / g) + 2 * margin + 1)
    slots = 2 + full_shape[0] // p.split_sections
    if grid[0] * grid[1] * slots >= 2**32 - 1:
        raise OptionError(
            f"synth shape {tuple(full_shape)}: too many cells for uint32 ids; use a larger cell_size"
        )
    keys, max_weight = stream_keys(seed, STREAMS), (p.size_variation * g) ** 2
    return SynthContext(p, keys, margin, grid, slots, reach, max_weight, theta, tile, halo)


def as_shape(value: Any, name: str) -> tuple[int, int, int]:
    """Three integers ``(Z, Y, X)`` from ``value``, else an :class:`OptionError` naming ``name``."""
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise OptionError(f"synth {name} {value!r}: expected three integers (Z, Y, X)") from None
    if len(shape) != 3:
        raise OptionError(f"synth {name} {value!r}: expected three integers (Z, Y, X)")
    return shape  # type: ignore[return-value]


def check_seed(seed: Any) -> int:
    """``seed`` as a Python int in ``0..2**64-1``, else an :class:`OptionError`."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise OptionError(f"synth seed {seed!r}: expected an integer in 0..2**64-1")
    return int(seed)
