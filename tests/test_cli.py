"""CLI plumbing: version, help, one-line errors, exit codes, --debug."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from volseg import __version__
from volseg.app.cli import app
from volseg.storage.volumes import create_volume

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"volseg {__version__}"


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "volseg", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_every_command_has_help_with_example():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name, cmd in ((c.name or c.callback.__name__, c) for c in app.registered_commands):
        doc = cmd.callback.__doc__ or ""
        assert "Example: volseg" in doc, f"command {name} has no example in its help"


def test_volseg_error_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path / "missing.zarr")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("volseg: error:") and "missing.zarr" in lines[0]
    assert "Traceback" not in result.output


def test_debug_shows_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "volseg", "--debug", "info", str(tmp_path / "missing.zarr")],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "Traceback" in out.stderr and "InputError" in out.stderr


def test_info_json(tmp_path):
    vol = create_volume(tmp_path / "v.zarr", (2, 8, 8), "uint8", (1, 8, 8), voxel_size=(50, 4, 4))
    for b in vol.block_ids():
        vol.write_block(b, np.ones((1, 8, 8), "uint8"))
    vol.mark_complete()
    result = runner.invoke(app, ["info", str(tmp_path / "v.zarr"), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["shape"] == [2, 8, 8] and data["completion"]["status"] == "complete"
    human = runner.invoke(app, ["info", str(tmp_path / "v.zarr")])
    assert human.exit_code == 0 and "2 x 8 x 8" in human.stdout and "complete" in human.stdout


def test_unexpected_exception_exits_non_zero(tmp_path):
    """A bug (not a VolsegError) is never reported as success: traceback and a non-zero exit."""
    code = (
        "import sys, volseg.storage.volumes as v\n"
        "def boom(*a, **k):\n"
        "    raise RuntimeError('boom: a bug')\n"
        "v.open_volume = boom\n"
        "from volseg.app.cli import main\n"
        f"main(['info', {str(tmp_path / 'x.zarr')!r}])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode not in (0, 2) and "RuntimeError: boom: a bug" in out.stderr


def test_the_cli_names_the_flag_where_the_api_names_the_argument():
    """Pure modules name the API argument; the CLI's one line names the flag in its place."""
    from volseg.app.base import one_line
    from volseg.core import tiling
    from volseg.errors import OptionError, renamed

    with pytest.raises(OptionError) as info:
        tiling.parse_roi("0:1,0:2")
    assert str(info.value).startswith("roi '0:1,0:2':") and info.value.argument == "roi"
    assert one_line(info.value).startswith("--roi '0:1,0:2': write three ranges")
    err = OptionError("val_slices '40:50': range 40:50\n reaches outside", argument="val_slices")
    assert one_line(err) == "--val-slices '40:50': range 40:50 reaches outside"
    assert one_line(OptionError("--tile 5: not a multiple")) == "--tile 5: not a multiple"
    moved = renamed(err, "--val-slices")
    assert type(moved) is OptionError and str(moved).startswith("--val-slices '40:50'")
