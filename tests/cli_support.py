"""Helpers shared by the CLI tests (not a test module): run a command in-process, read its one-line error."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from volseg.app.cli import app

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
    from volseg.storage.volumes import open_volume

    vol = open_volume(path, mode="r+")
    ome = dict(vol.group.attrs["ome"])
    for dataset in ome["multiscales"][0]["datasets"]:
        scale = dataset["coordinateTransformations"][0]["scale"]
        dataset["coordinateTransformations"].append(
            {"type": "translation", "translation": [float(o * s) for o, s in zip(offset, scale, strict=True)]}
        )
    vol.group.attrs.update({"ome": ome})
    return path
