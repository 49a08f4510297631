"""Figures of the docs that show synthetic data.

    python benchmarks/figures.py                      # writes docs/images/synth_vs_isbi.png
    python benchmarks/figures.py --out other.png --seed 3 --section 5

``synth_vs_isbi.png``: a 512 x 512 section of ``volseg synth`` beside ISBI 2012 training
section 0, with their membrane labels below (255 = cell interior, 0 = membrane in both).
The ISBI stack is read from ``../shared/data/isbi2012`` (or ``--isbi``) when present;
without it only the synthetic column is drawn.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from volseg.stages.synth import synth_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ISBI = ROOT.parent / "shared" / "data" / "isbi2012"


def _isbi(folder: Path, section: int) -> tuple[np.ndarray, np.ndarray] | None:
    image, labels = folder / "train-volume.tif", folder / "train-labels.tif"
    if not (image.is_file() and labels.is_file()):
        return None
    import tifffile

    return tifffile.imread(image, key=section), tifffile.imread(labels, key=section)


def synth_vs_isbi(out: Path, seed: int, section: int, isbi: Path) -> Path:
    """Draw the synthetic section (and the ISBI one, when available) with their labels below."""
    image, _, membranes = synth_block(
        (1, 512, 512), seed=seed, offset=(section, 0, 0), full_shape=(30, 512, 512)
    )
    columns = [(f"volseg synth (seed {seed}, section {section})", image[0], membranes[0])]
    real = _isbi(isbi, 0)
    if real is not None:
        columns.append(("ISBI 2012, training section 0", *real))
    fig, axes = plt.subplots(2, len(columns), figsize=(5.2 * len(columns), 10.8), squeeze=False)
    for k, (title, img, lab) in enumerate(columns):
        fraction = np.mean(lab == 0)
        axes[0, k].imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[0, k].set_title(title, fontsize=11)
        axes[1, k].imshow(lab, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[1, k].set_title(
            f"labels: 255 interior, 0 membrane ({100 * fraction:.1f} % membrane)", fontsize=10
        )
        for ax in axes[:, k]:
            ax.set_axis_off()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100)
    plt.close(fig)
    Image.open(buffer).convert("L").save(out, optimize=True)  # grey levels only: a third of the RGBA size
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "synth_vs_isbi.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--section", type=int, default=0, help="synthetic section (0..29)")
    parser.add_argument(
        "--isbi", type=Path, default=ISBI, help="folder with train-volume.tif, train-labels.tif"
    )
    args = parser.parse_args()
    print(synth_vs_isbi(args.out, args.seed, args.section, args.isbi))


if __name__ == "__main__":
    main()
