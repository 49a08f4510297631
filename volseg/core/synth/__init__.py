"""Synthetic serial-section EM with exact labels: the pure kernels (arrays in, arrays out).

The generator draws neurite cross-sections the way an ssTEM stack shows them: cells are
the Voronoi regions of seeds on a jittered grid, bent by a smooth domain warp, with
rounded corners, dark membranes of varying width, textured cytoplasm, vesicles,
mitochondria, uneven illumination, blur and Poisson-Gaussian noise. Seeds drift
smoothly from section to section and now and then a cell splits in two (a second
seed diverging from its parent) and merges back later.

Every random quantity is a hash of the seed and of *global* coordinates (lattice
points, grid cells, pixels; see :mod:`volseg.core.noise`), never a draw from a stateful
generator, and every neighbourhood operation is computed on a tile-aligned margin around
the block. A block therefore comes out bit for bit the same whatever the chunking, and
memory stays bounded by the block.

Modules, in the order a section is made: :mod:`~volseg.core.synth.params` (parameters and
per-volume constants), :mod:`~volseg.core.synth.seeds` (seeds, drift, splits),
:mod:`~volseg.core.synth.tessellation` (power diagram per tile),
:mod:`~volseg.core.synth.geometry` (ids and distances to the membrane),
:mod:`~volseg.core.synth.render` (intensities, optics, noise; :func:`synth_block`).
Writing volumes is the stage's work (:mod:`volseg.stages.synth`).
"""

from __future__ import annotations

from volseg.core.synth.params import SynthParams, as_shape, check_seed
from volseg.core.synth.render import INTERIOR, MEMBRANE, synth_block

__all__ = ["INTERIOR", "MEMBRANE", "SynthParams", "as_shape", "check_seed", "synth_block"]
