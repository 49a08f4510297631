"""Make ``docs/images/preview_example.png``: a small synthetic stack, its cells, and their preview.

The cells are segmented (``volseg segment``, default options) from the stack's exact membrane mask,
then drawn over the raw sections (``volseg preview``). Everything is seeded, so the picture is the
same on every run. Run from the repository root::

    python docs/make_preview_example.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import volseg
from volseg.stages.preview import PreviewOptions

OUT = Path(__file__).resolve().parent / "images" / "preview_example.png"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = volseg.synth(tmp, (12, 384, 384), seed=0)
        cells = Path(tmp) / "segmented.zarr"  # synth wrote its own cells.zarr beside it
        volseg.segment(stack.membranes, cells)
        info = volseg.preview(
            stack.image, OUT, overlay=cells, options=PreviewOptions(sections=(0, 5, 10), panel=256)
        )
    print(f"{OUT}: {info.width} x {info.height} px, sections {info.sections}")


if __name__ == "__main__":
    main()
