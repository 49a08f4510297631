"""Make ``docs/images/affinities_agglo.png``: affinities cut into fragments, cells, and cells linked in 3-D.

A small synthetic stack (``volseg synth``, seed 3) and the affinities of its truth with noise (as in
``benchmarks/segment3d.py``); each column is one section: the image, the boundary map of the affinities,
the fragments (``segment --method agglo``'s first step, the whole stack as one block, at a fragment
threshold of 0.85 so that they over-segment), the cells of
``--mode 2d`` (each section on its own: new colours in every section) and of ``--mode 3d`` (the fragments
linked across sections: a cell keeps its colour). Everything is seeded, so the picture is the same on every
run. Run from the repository root::

    python docs/make_affinity_figure.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

import volseg
from volseg.core import blockgraph
from volseg.core.affinities import affinities, boundaries_from_affinities, default_offsets, synth_instances
from volseg.core.montage import compose, heat, label_colours, stretch
from volseg.stages.segment import SegmentOptions
from volseg.storage.volumes import create_volume, open_volume

OUT = Path(__file__).resolve().parent / "images" / "affinities_agglo.png"
SHAPE = (4, 192, 192)
#: Above the default (0.7), so that the fragments over-segment and the agglomeration has merges to make.
FRAGMENT_THRESHOLD = 0.85


def _grey(section: np.ndarray) -> np.ndarray:
    g = stretch(section.astype(np.float32))
    return np.repeat(g[..., None], 3, axis=2) if g.ndim == 2 else g


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = volseg.synth(tmp, shape=SHAPE, seed=3)
        image = np.asarray(open_volume(stack.image).array[:])
        truth = synth_instances(
            np.asarray(open_volume(stack.cells).array[:]), np.asarray(open_volume(stack.membranes).array[:])
        )
        offsets = default_offsets()
        target, _ = affinities(truth, offsets, dtype=np.float32)
        noise = ndi.gaussian_filter(
            np.random.default_rng(3).normal(size=target.shape).astype(np.float32), (0, 0, 1, 1)
        )
        noise /= noise.std()
        affs = np.rint(np.clip(0.1 + 0.8 * target + 0.1 * noise, 0, 1) * 255).astype(np.uint8)
        vol = create_volume(
            Path(tmp) / "affs.zarr", SHAPE, np.uint8, SHAPE, channels=len(offsets), kind="affinity",
            extra={"offsets": [list(o) for o in offsets]},
        )  # fmt: skip
        vol.write_block((0, 0, 0), affs)
        vol.mark_complete()
        whole = tuple(slice(0, s) for s in SHAPE)
        fragments = blockgraph.block_pieces(
            affs, offsets, whole, (0, 0, 0), SHAPE, link_z=True, fragment_threshold=FRAGMENT_THRESHOLD
        ).fragments
        cells = {}
        for mode in ("2d", "3d"):
            out = Path(tmp) / f"cells-{mode}.zarr"
            volseg.segment(
                vol.path,
                out,
                SegmentOptions(method="agglo", mode=mode, fragment_threshold=FRAGMENT_THRESHOLD),
            )
            cells[mode] = np.asarray(open_volume(out).array[:])
        boundary = boundaries_from_affinities(affs.astype(np.float32) / 255, offsets)
        columns = [
            [
                (f"section {z}", _grey(image[z])),
                ("boundary of the affinities", heat(boundary[z])),
                (f"fragments (threshold {FRAGMENT_THRESHOLD})", label_colours(fragments[z])),
                ("cells, --mode 2d", label_colours(cells["2d"][z])),
                ("cells, --mode 3d", label_colours(cells["3d"][z])),
            ]
            for z in range(SHAPE[0])
        ]
        picture = compose(columns, columns=SHAPE[0])
        picture.save(OUT, optimize=True)
        print(
            f"{OUT}: {picture.width} x {picture.height} px; fragments {int(fragments.max())} in the stack, "
            f"cells 2d {int(cells['2d'].max())}, 3d {int(cells['3d'].max())}"
        )


if __name__ == "__main__":
    main()
