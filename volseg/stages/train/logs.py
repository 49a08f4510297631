"""The run's log (``MODEL.log.jsonl``) and its figure (``MODEL.curves.png``).

:class:`JsonLog` appends one strict JSON object per line (:func:`volseg.storage.files.dump_json`: NaN is
written ``null``); a resumed run first rewrites the log, atomically, without the lines after its
checkpoint's step. :func:`draw_curves` redraws the figure; a figure that cannot be drawn is a warning,
never the end of a run.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

from volseg.errors import VolsegWarning
from volseg.storage.files import atomic_write_text, dump_json

__all__ = ["JsonLog", "draw_curves"]


class JsonLog:
    """Append-only JSON-lines log; a resumed run first drops the lines after its checkpoint's step."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [line for line in path.read_text().splitlines() if _line_step(line) <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        self._file = open(path, "a")  # noqa: SIM115 (closed by close())

    def write(self, record: Mapping[str, object]) -> None:
        self._file.write(dump_json(record, indent=None) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _line_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError, TypeError):
        return math.inf  # a torn last line (kill -9) is dropped


def draw_curves(log: Path, png: Path) -> None:
    """Redraw ``png`` from ``log`` (:func:`volseg.storage.curves.plot_curves`); a failure only warns."""
    from volseg.storage.curves import plot_curves

    try:
        plot_curves(log, png)
    except Exception as exc:  # noqa: BLE001 (a figure must never end a training run)
        warnings.warn(f"could not draw {png}: {exc}", VolsegWarning, stacklevel=2)
