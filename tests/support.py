"""Helpers shared by the test modules (not a test module itself).

Volumes written from arrays, the in-process CLI and its one-line error contract, OME placement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

from volseg.app.cli import app
from volseg.storage.volumes import create_volume, open_volume

runner = CliRunner()


def cli(*args: object):
    """``volseg ARGS...`` in-process (typer's runner): ``exit_code``, ``stdout``, ``stderr``."""
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *needles: str, code: int = 2) -> str:
    """A refused command: exit ``code``, one ``volseg: error:`` line holding every needle; the line."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("volseg: error:"), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def translate(path: Path, offset) -> Path:
    """Record a voxel offset as 'volseg predict --roi' does: a translation after the scale (physical)."""
    vol = open_volume(path, mode="r+")
    ome = dict(vol.group.attrs["ome"])
    for dataset in ome["multiscales"][0]["datasets"]:
        scale = dataset["coordinateTransformations"][0]["scale"]
        dataset["coordinateTransformations"].append(
            {"type": "translation", "translation": [float(o * s) for o, s in zip(offset, scale, strict=True)]}
        )
    vol.group.attrs.update({"ome": ome})
    return path


def write_volume(
    path: Path,
    data: Any,
    chunks: Sequence[int] | None = None,
    kind: str = "image",
    *,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    extra: Mapping[str, Any] | None = None,
    complete: bool = True,
) -> Path:
    """Write ``data`` ``(Z, Y, X)`` as a complete volume of ``kind`` (chunks: one section by default)."""
    data = np.asarray(data)
    chunks = tuple(chunks) if chunks is not None else (1, *data.shape[1:])
    vol = create_volume(path, data.shape, data.dtype, chunks, kind=kind, voxel_size=voxel_size, extra=extra)
    for block in vol.block_ids():
        vol.write_block(block, data[vol.block_region(block)], fsync=False)  # tests need no durability
    if complete:
        vol.mark_complete()
    return path


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label arrays are equal up to a renumbering of the ids (0 stays 0)."""
    if ((a == 0) != (b == 0)).any():
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
