"""Training curves: a PNG of the loss and the validation metrics from a run's JSON-lines log.

The log (``MODEL.log.jsonl``, written by :mod:`volseg.train`) holds one object per line:
``{"kind": "step", "step", "loss", "lr", ...}`` and ``{"kind": "val", "step", "pixel_error",
"dice", "v_rand", "v_info", ...}``. :func:`plot_curves` draws three panels against the step:
the loss (raw and smoothed), the learning rate, and the validation metrics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_curves", "read_log", "smooth"]

VAL_METRICS = ("pixel_error", "pixel_error_isbi", "dice", "v_rand", "v_info")


def read_log(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(steps, validations)`` records of a JSON-lines training log; torn or foreign lines are skipped."""
    steps, vals = [], []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "step" in record:
                (vals if record.get("kind") == "val" else steps).append(record)
    return steps, vals


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` values (shorter at the start), same length as ``values``."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def plot_curves(log: str | os.PathLike, png: str | os.PathLike, title: str | None = None) -> Path:
    """Draw the loss, learning rate and validation metrics of ``log`` into ``png`` (written atomically).

    Returns the PNG path.
    """
    # The object API with the Agg canvas: no pyplot state, no GUI backend, safe in any process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps, vals = read_log(log)
    png = Path(png)
    fig = Figure(figsize=(15, 4))
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.86, wspace=0.25)
    FigureCanvasAgg(fig)
    ax_loss, ax_lr, ax_val = fig.subplots(1, 3)
    if steps:
        x = np.array([r["step"] for r in steps])
        loss = np.array([r["loss"] for r in steps], dtype=np.float64)
        ax_loss.plot(x, loss, color="0.75", lw=0.6, label="loss")
        ax_loss.plot(x, smooth(loss, max(1, len(loss) // 50)), color="C0", lw=1.5, label="smoothed")
        ax_lr.plot(x, [r["lr"] for r in steps], color="C1")
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    ax_loss.legend(loc="upper right")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for i, name in enumerate(VAL_METRICS):
        points = [(r["step"], r[name]) for r in vals if isinstance(r.get(name), (int, float))]
        if points:
            xs, ys = zip(*points, strict=True)
            ax_val.plot(xs, ys, marker="o", ms=3, color=f"C{i + 2}", label=name)
    ax_val.set(xlabel="step", title="validation", ylim=(0.0, 1.0))
    if vals:
        ax_val.legend(loc="center right")
        best = max(vals, key=lambda r: r.get("v_rand", -1.0))
        ax_val.axvline(best["step"], color="0.6", ls="--", lw=0.8)
    else:
        ax_val.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax_val.transAxes)
    fig.suptitle(title or Path(log).name.removesuffix(".log.jsonl"))
    tmp = png.with_name(f".{png.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=80)
        os.replace(tmp, png)
    finally:
        tmp.unlink(missing_ok=True)
    return png
