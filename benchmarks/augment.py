"""Time the augmentations and the border weight map on one thread; draw the docs figure.

    python benchmarks/augment.py [--patch 256] [--repeat 300] [--isbi DIR]
    python benchmarks/augment.py --figure docs/images/augmentations.png

The timing prints a Markdown table: mean milliseconds per patch for each preset and for
each transform alone (always applied), then the time of ``border_weights`` on a 512 x 512
section. docs/augmentation.md quotes its output.

``--figure`` draws one 256 x 256 patch under each transform, with its label outline.
The geometric panels move image and label with the same call, so the outline staying on
the membranes shows that they stay aligned.

Both use the first ISBI 2012 training section when the data is present (default
``../shared/data/isbi2012`` beside the checkout), else a synthetic Voronoi section with a
similar number of cells.
"""

# ruff: noqa: E402  (the thread limits must be set before numpy loads)
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread: a data-loader worker's budget

import argparse
import dataclasses
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from volseg.core.augment import (
    PRESETS,
    TRANSFORMS,
    AugmentConfig,
    Augmenter,
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    dihedral,
    fold,
    gaussian_blur,
    gaussian_noise,
    low_contrast,
    missing_region,
    missing_section,
    smear,
    warp,
    warp_coordinates,
)
from volseg.core.weights import border_weights, instances_from_mask

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ISBI = ROOT.parent / "shared" / "data" / "isbi2012"


def synthetic_section(size: int, n_cells: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A Voronoi 'EM section' in [0, 1] and its binary cell mask (True = cell)."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, size, size=(n_cells, 2))
    iy, ix = np.indices((size, size))
    region = np.argmin((iy[..., None] - points[:, 0]) ** 2 + (ix[..., None] - points[:, 1]) ** 2, axis=-1)
    cells = ndi.maximum_filter(region, 3) == ndi.minimum_filter(region, 3)
    image = np.where(cells, 0.7, 0.2) + 0.08 * rng.standard_normal((size, size))
    return ndi.gaussian_filter(image, 1.0).astype(np.float32), cells


def load_section(isbi: Path, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The first ISBI training section and its cell mask, or a synthetic stand-in."""
    if (isbi / "train-volume.tif").exists() and (isbi / "train-labels.tif").exists():
        import tifffile

        image = tifffile.imread(isbi / "train-volume.tif", key=0).astype(np.float32) / 255.0
        mask = tifffile.imread(isbi / "train-labels.tif", key=0) != 0
        return image[:size, :size], mask[:size, :size], "ISBI 2012 train section 0"
    image, mask = synthetic_section(size, n_cells=size * size // 2000)
    return image, mask, "synthetic Voronoi section"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mean_ms(function: Callable[[], object], repeat: int) -> float:
    for _ in range(5):
        function()
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - start) / repeat * 1e3


def time_augmentations(image: np.ndarray, label: np.ndarray, repeat: int) -> list[tuple[str, float]]:
    rng = np.random.default_rng(0)
    rows = []
    for name in PRESETS:
        augment = Augmenter(AugmentConfig.preset(name))
        rows.append((f"preset `{name}`", mean_ms(lambda a=augment: a(image, label, rng), repeat)))
    none = AugmentConfig.preset("none")
    for name in TRANSFORMS:
        augment = Augmenter(dataclasses.replace(none, **{f"p_{name}": 1.0}))
        rows.append((f"`{name}` alone", mean_ms(lambda a=augment: a(image, label, rng), repeat)))
    cubic = Augmenter(dataclasses.replace(none, p_elastic=1.0, image_order=3))
    rows.append(("`elastic` alone, cubic image", mean_ms(lambda: cubic(image, label, rng), repeat)))
    return rows


CROP = (slice(128, 384), slice(128, 384))


def panels(
    image: np.ndarray, cells: np.ndarray, weights: np.ndarray
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(title, image, label) for each transform, with fixed parameters so the figure is reproducible."""
    rng = np.random.default_rng(3)
    none = AugmentConfig.preset("none")
    elastic = Augmenter(dataclasses.replace(none, p_elastic=1.0))(image, cells, np.random.default_rng(7))
    affine = warp_coordinates(image.shape, angle=15.0, scale=1.1)
    combined = warp_coordinates(image.shape, rng.normal(0, 10, (2, 3, 3)), angle=-12.0, scale=0.9)
    heavy = Augmenter(AugmentConfig.preset("heavy"))(image, cells, np.random.default_rng(11))
    box = (slice(40, 120), slice(90, 200))
    return [
        ("original", image, cells),
        ("dihedral k=5 (turn + flip)", dihedral(image, 5), dihedral(cells, 5)),
        ("elastic (3x3 grid, sigma 10 px)", *elastic),
        ("rotate 15 deg, scale 1.1", warp(image, affine), warp(cells, affine)),
        ("elastic + rotate + scale, 1 resampling", warp(image, combined), warp(cells, combined)),
        ("brightness +0.1, contrast x1.25", adjust_contrast(adjust_brightness(image, 0.1), 1.25), cells),
        ("gamma 1.5", adjust_gamma(image, 1.5), cells),
        ("Gaussian blur, sigma 1.5 px", gaussian_blur(image, 1.5), cells),
        ("Gaussian noise, sigma 0.05", gaussian_noise(image, 0.05, rng), cells),
        ("defect: low contrast x0.25", low_contrast(image, 0.25), cells),
        ("defect: missing region", missing_region(image, box), cells),
        ("defect: smear / streak", smear(image, axis=1, start=150, width=18, length=30), cells),
        ("defect: fold", fold(image, angle=60.0, offset=-30.0, width=5.0, darkness=0.85), cells),
        ("defect: missing section", missing_section(image), cells),
        ('preset "heavy", seed 11', *heavy),
        ("border weights w (label outline)", weights, cells),
    ]


def draw_figure(rows: list[tuple[str, np.ndarray, np.ndarray]], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from skimage.segmentation import find_boundaries

    fig, axes = plt.subplots(4, 4, figsize=(12, 12.8), dpi=80)
    for ax, (name, image, cells) in zip(axes.ravel(), rows, strict=True):
        is_weight = name.startswith("border weights")
        limits = {} if is_weight else {"vmin": 0.0, "vmax": 1.0}  # fixed, so intensity changes show
        shown = ax.imshow(image, cmap="magma" if is_weight else "gray", **limits)
        outline = np.ma.masked_where(~find_boundaries(cells, mode="inner"), np.ones(cells.shape))
        ax.imshow(outline, cmap="autumn", alpha=0.25 if is_weight else 0.45, interpolation="nearest")
        if is_weight:
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    plt.close(fig)
    # A 256-colour palette keeps the committed PNG near 300 kB instead of 1.2 MB.
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).quantize(256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=256, help="patch side in px (default 256)")
    parser.add_argument("--repeat", type=int, default=300, help="patches per measurement (default 300)")
    parser.add_argument("--isbi", type=Path, default=DEFAULT_ISBI, help="folder with the ISBI 2012 TIFFs")
    parser.add_argument("--figure", type=Path, metavar="PNG", help="draw the figure to PNG instead of timing")
    args = parser.parse_args()

    section, mask, source = load_section(args.isbi, 512)
    cells = instances_from_mask(mask)
    if args.figure:
        weights = border_weights(cells)  # on the whole section, then cropped: right at the crop's edges
        rows = panels(section[CROP], cells[CROP], weights[CROP])
        draw_figure(
            rows, f"volseg augmentations on a 256 x 256 patch ({source}); red: label outline", args.figure
        )
        print(f"wrote {args.figure}")
        return
    s = args.patch
    image, label = section[:s, :s], cells[:s, :s]
    machine = f"{cpu_name()}, {os.cpu_count()} cores"
    print(f"machine: {machine}, one thread; source: {source}")
    print(f"\n| {s} x {s} patch | ms per patch |\n| --- | ---: |")
    for name, ms in time_augmentations(image, label, args.repeat):
        print(f"| {name} | {ms:.2f} |")
    weights_ms = mean_ms(lambda: border_weights(cells), max(3, args.repeat // 30))
    label_ms = mean_ms(lambda: instances_from_mask(mask), max(3, args.repeat // 30))
    print(f"\n| 512 x 512 section, {cells.max()} cells | ms |\n| --- | ---: |")
    print(f"| `instances_from_mask` | {label_ms:.1f} |\n| `border_weights` | {weights_ms:.1f} |")


if __name__ == "__main__":
    main()
