"""Training curves: a PNG of the loss and the validation metrics from a run's JSON-lines log.

The log (``MODEL.log.jsonl``, written by :mod:`volseg.train`) holds one object per line:
``{"kind": "step", "step", "loss", "lr", ...}`` and ``{"kind": "val", "step", "pixel_error",
"dice", "v_rand", "v_info", ...}``. :func:`plot_curves` draws three panels against the step:
the loss (raw and smoothed), the learning rate, and the validation metrics.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from volseg.errors import InputError, OutputError

__all__ = ["plot_curves", "read_log", "smooth"]

VAL_METRICS = ("pixel_error", "pixel_error_isbi", "dice", "v_rand", "v_info")

_TRAIN_LOG = (
    "a train log is the MODEL.log.jsonl that 'volseg train' writes, one JSON object per line such as "
    '{"kind": "step", "step": 1, "loss": 0.69, "lr": 0.001}'
)
_SNIFF = 8192  # bytes in which a NUL marks a binary file (when no step record follows)
_LINE = 1 << 16  # longer lines are read in pieces (and are not records)
_GIVE_UP = (1000, 1 << 22)  # lines, bytes without a step record after which a file is something else
_LARGEST = 1e100  # larger values are not drawn: the axes cannot span them
_JSON_TYPES = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a JSON number (not a boolean), else None; NaN and inf are numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond the float range
        return math.inf if value > 0 else -math.inf


def _drawable(value: Any) -> float:
    """``value`` as a float that the axes can draw, NaN (a gap) for anything else."""
    x = _number(value)
    return x if x is not None and abs(x) <= _LARGEST else math.nan


def _record(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The record of one log line, or None and what is wrong with the line."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None, "is not JSON"
    if not isinstance(record, dict):
        return None, f"is a JSON {_JSON_TYPES.get(type(record), 'value')}, not an object"
    kind = record.get("kind", "step")
    if kind not in ("step", "val"):
        return None, "is a record of another kind"
    step = _number(record.get("step"))
    if step is None or not abs(step) <= _LARGEST:  # also NaN
        return None, "has no number 'step'"
    if kind == "step" and _number(record.get("loss")) is None:
        return None, "has no number 'loss'"
    return record, ""


def _check_path(path: Path) -> None:
    from volseg.storage.paths import local_path

    local_path(path, "--curves")  # URLs, empty, non-UTF-8 and over-long names: one line
    if not path.exists():
        raise InputError(f"{path}: no such training log; {_TRAIN_LOG}")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a training log; {_TRAIN_LOG}")
    if not path.is_file():
        raise InputError(f"{path}: is not a regular file, so not a training log; {_TRAIN_LOG}")


def read_log(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(steps, validations)``: the usable records of a train log (``MODEL.log.jsonl``).

    A step record is a JSON object with a number ``step``, a number ``loss`` (NaN where the
    run diverged) and ``"kind": "step"`` (or no kind); a validation record has ``"kind": "val"``
    and a number ``step``. Other lines (blank, torn by a killed run, of another kind or missing
    a field) are skipped, but only in a file that holds at least one step record: a file
    without one is not a train log.

    Raises
    ------
    InputError
        For a missing path, a folder, an unreadable or binary file, and a file without a step
        record (the message names its first unusable line).
    """
    path = Path(path)
    _check_path(path)
    try:
        with open(path, "rb") as f:
            binary = b"\0" in f.read(_SNIFF)
            f.seek(0)
            steps, vals, lines, first_bad = _scan(f)
    except OSError as exc:
        raise InputError(
            f"{path}: cannot be read ({exc.strerror or exc}); check the path and its permissions"
        ) from None
    if steps:  # a train log, perhaps with a torn line (even NUL bytes left by a crash)
        return steps, vals
    if binary:
        raise InputError(f"{path}: is a binary file, not a training log; {_TRAIN_LOG}")
    if not lines:
        raise InputError(f"{path}: the file is empty, not a training log; {_TRAIN_LOG}")
    why = f"line {first_bad[0]} {first_bad[1]}" if first_bad else "it has validation records only"
    raise InputError(f"{path}: not a training log, it holds no step record ({why}); {_TRAIN_LOG}")


def _scan(f: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, tuple[int, str] | None]:
    """Records of a log opened as bytes: ``(steps, vals, non-blank lines, first unusable line)``.

    The first unusable line is ``(its number, what is wrong)``, or None.
    """
    steps: list[dict[str, Any]] = []
    vals: list[dict[str, Any]] = []
    first_bad: tuple[int, str] | None = None
    lines = 0
    for number, raw in enumerate(iter(lambda: f.readline(_LINE), b""), 1):
        if not raw.strip():
            continue
        lines += 1
        record, problem = _record(raw)
        if record is not None:
            (vals if record.get("kind") == "val" else steps).append(record)
        elif first_bad is None:
            first_bad = (number, problem)
        if not steps and (lines >= _GIVE_UP[0] or f.tell() >= _GIVE_UP[1]):
            break
    return steps, vals, lines, first_bad


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` values (shorter at the start), same length as ``values``."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def _series(steps: list[dict[str, Any]], vals: list[dict[str, Any]]) -> dict[str, Any]:
    """What the panels draw, as float arrays (NaN where a value cannot be drawn): pure, no figure."""
    metrics = {}
    for name in VAL_METRICS:
        points = [(_drawable(r["step"]), _drawable(r.get(name))) for r in vals]
        points = [(x, y) for x, y in points if math.isfinite(y)]
        if points:
            metrics[name] = np.array(points, dtype=np.float64).T
    best = [(v, _drawable(r["step"])) for r in vals if math.isfinite(v := _drawable(r.get("v_rand")))]
    return {
        "step": np.array([_drawable(r["step"]) for r in steps], dtype=np.float64),
        "loss": np.array([_drawable(r["loss"]) for r in steps], dtype=np.float64),
        "lr": np.array([_drawable(r.get("lr")) for r in steps], dtype=np.float64),
        "metrics": metrics,
        "best_step": max(best)[1] if best else None,
    }


def plot_curves(log: str | os.PathLike, png: str | os.PathLike, title: str | None = None) -> Path:
    """Draw the loss, learning rate and validation metrics of ``log`` into ``png`` (written atomically).

    The log is read and checked first (:func:`read_log`): a file that is not a train log raises
    :class:`InputError` and writes nothing. The folder of ``png`` is created if needed; a PNG
    that cannot be written raises :class:`OutputError`.

    Returns the PNG path.
    """
    steps, vals = read_log(log)
    data = _series(steps, vals)
    png = Path(png)
    tmp = png.with_name(f".{png.name}.{os.getpid()}.tmp.png")
    try:
        png.parent.mkdir(parents=True, exist_ok=True)
        _figure(data, title or Path(log).name.removesuffix(".log.jsonl")).savefig(tmp, dpi=80)
        os.replace(tmp, png)
    except OSError as exc:
        raise OutputError(
            f"{png}: cannot write the PNG ({exc.strerror or exc}); choose a writable location"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return png


def _figure(data: dict[str, Any], title: str) -> Any:
    """The three panels of :func:`plot_curves` for the arrays of :func:`_series`."""
    # The object API with the Agg canvas: no pyplot state, no GUI backend, safe in any process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4))
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.86, wspace=0.25)
    FigureCanvasAgg(fig)
    ax_loss, ax_lr, ax_val = fig.subplots(1, 3)
    x, loss = data["step"], data["loss"]
    ax_loss.plot(x, loss, color="0.75", lw=0.6, label="loss")
    ax_loss.plot(x, smooth(loss, max(1, len(loss) // 50)), color="C0", lw=1.5, label="smoothed")
    ax_lr.plot(x, data["lr"], color="C1")
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    ax_loss.legend(loc="upper right")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for i, name in enumerate(VAL_METRICS):
        if name in data["metrics"]:
            xs, ys = data["metrics"][name]
            ax_val.plot(xs, ys, marker="o", ms=3, color=f"C{i + 2}", label=name)
    ax_val.set(xlabel="step", title="validation", ylim=(0.0, 1.0))
    if data["metrics"]:
        ax_val.legend(loc="center right")
    else:
        ax_val.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax_val.transAxes)
    if data["best_step"] is not None and math.isfinite(data["best_step"]):
        ax_val.axvline(data["best_step"], color="0.6", ls="--", lw=0.8)
    fig.suptitle(title)
    return fig
