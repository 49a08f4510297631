"""Print the table of segmentation options in ``docs/segment.md`` (adapted Rand error / V_rand).

A 6 x 384 x 384 synthetic stack (``volseg synth``, seed 3); the true cells are the 4-connected
components of each section's non-membrane pixels. Three membrane maps are segmented with each option
set (``volseg.core.segmentation.segment_array``, 2-D): the exact membrane mask; a "soft" map (the mask blurred
with sigma 1.5 px, x 1.3, plus Gaussian noise of sd 0.15, clipped to 0..1), a stand-in for a U-Net's
output; and a "gappy" map (the soft map with 15 random 6 x 6 px patches per section dimmed to 30 %).
Run from the repository root (about a minute)::

    python docs/segment_options.py
"""

from __future__ import annotations

import tempfile

import numpy as np
from scipy import ndimage as ndi

import volseg
from volseg.core.metrics import Contingency
from volseg.core.segmentation import segment_array
from volseg.stages.segment import SegmentOptions
from volseg.storage.volumes import open_volume

CONFIGS = [
    ("defaults (h-minima seeds, h 0.1, sigma 1)", SegmentOptions()),
    ("h 0.05", SegmentOptions(h=0.05)),
    ("h 0.2", SegmentOptions(h=0.2)),
    ("sigma 0", SegmentOptions(sigma=0)),
    ("sigma 2", SegmentOptions(sigma=2)),
    ("distance seeds (min distance 8, distance h 2)", SegmentOptions(seeds="distance")),
    ("distance seeds, min distance 4", SegmentOptions(seeds="distance", min_distance=4)),
    ("distance seeds, distance h 1", SegmentOptions(seeds="distance", distance_h=1)),
    ("--keep-boundaries", SegmentOptions(keep_boundaries=True)),
    ("--method cc", SegmentOptions(method="cc")),
]


def maps(membrane: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    exact = membrane.astype(np.float32)
    soft = ndi.gaussian_filter(exact, (0, 1.5, 1.5)) * 1.3 + rng.normal(0, 0.15, exact.shape)
    soft = np.clip(soft, 0, 1).astype(np.float32)
    gappy = soft.copy()
    for z in range(gappy.shape[0]):
        for y, x in rng.integers(0, gappy.shape[1:], (15, 2)):
            gappy[z, max(0, y - 3) : y + 3, max(0, x - 3) : x + 3] *= 0.3
    return {"exact": exact, "soft": soft, "gappy": gappy}


def score(truth: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    table = Contingency()
    for z in range(truth.shape[0]):  # 2-D: make both sides' ids section-specific
        offset = np.uint64(z) * np.uint64(truth[z].size + 1)
        table.add(
            np.where(truth[z] > 0, truth[z] + offset, 0), np.where(labels[z] > 0, labels[z] + offset, 0)
        )
    return table.adapted_rand().error, table.v_rand()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = volseg.synth(tmp, (6, 384, 384), seed=3)
        membrane = open_volume(stack.membranes).data.compute() == 0
    four = ndi.generate_binary_structure(2, 1)
    truth = np.stack([ndi.label(~m, four)[0] for m in membrane]).astype(np.uint64)
    boundary = maps(membrane, np.random.default_rng(0))
    print("| options | " + " | ".join(f"{name}: ARE / V_rand" for name in boundary) + " |")
    print("| --- | " + " | ".join("---" for _ in boundary) + " |")
    for label, opts in CONFIGS:
        cells = [score(truth, segment_array(b, opts)) for b in boundary.values()]
        print(f"| {label} | " + " | ".join(f"{e:.4f} / {v:.4f}" for e, v in cells) + " |")


if __name__ == "__main__":
    main()
