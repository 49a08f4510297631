"""preview: the PNG exists, has the expected size, shows the overlay where it is set, reads pyramid levels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import volseg.preview as pv
from volseg.cli import app
from volseg.errors import InputError, OptionError
from volseg.preview import GAP, TITLE_HEIGHT, PreviewOptions, label_colours, parse_sections, preview
from volseg.volume import create_volume

runner = CliRunner()


def _write(path, data, chunks=None, kind="image"):
    data = np.asarray(data)
    vol = create_volume(path, data.shape, data.dtype, chunks or (1, *data.shape[1:]), kind=kind)
    for b in vol.block_ids():
        vol.write_block(b, data[vol.block_region(b)])
    vol.mark_complete()
    return vol


def _image(shape=(4, 50, 100), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(60, 200, shape).astype(np.uint8)


def _panel(png, column, row, panel_hw, rows):
    """The pixels of one panel (without its title) of a montage."""
    h, w = panel_hw
    x = GAP + column * (w + GAP)
    y = GAP + row * (TITLE_HEIGHT + h + GAP) + TITLE_HEIGHT
    return np.asarray(png)[y : y + h, x : x + w]


def test_png_has_the_expected_size_and_titles(tmp_path):
    _write(tmp_path / "i.zarr", _image())
    info = preview(
        tmp_path / "i.zarr", tmp_path / "p.png", options=PreviewOptions(sections=(0, 2, 3), panel=100)
    )
    png = Image.open(tmp_path / "p.png")
    assert png.format == "PNG" and png.mode == "RGB"
    assert (
        png.size
        == (GAP + 3 * (100 + GAP), GAP + (TITLE_HEIGHT + 50 + GAP))
        == (info["width"], info["height"])
    )
    assert info["sections"] == [0, 2, 3]
    title = np.asarray(png)[GAP : GAP + TITLE_HEIGHT, GAP : GAP + 60]
    assert (title > 200).any()  # the title text is drawn
    again = preview(
        tmp_path / "i.zarr", tmp_path / "q.png", options=PreviewOptions(sections=(0, 2, 3), panel=100)
    )
    assert again["width"] == info["width"]
    assert (tmp_path / "p.png").read_bytes() == (tmp_path / "q.png").read_bytes()  # deterministic


def test_mask_colour_appears_where_the_mask_is_set_and_nowhere_else(tmp_path):
    image = _image((2, 50, 100))
    mask = np.zeros(image.shape, np.uint8)
    mask[:, 10:30, 20:60] = 1
    _write(tmp_path / "i.zarr", image)
    _write(tmp_path / "m.zarr", mask, kind="mask")
    preview(
        tmp_path / "i.zarr",
        tmp_path / "p.png",
        overlay=tmp_path / "m.zarr",
        options=PreviewOptions(sections=(1,), panel=100, alpha=0.5),
    )
    panel = _panel(Image.open(tmp_path / "p.png"), 0, 1, (50, 100), 2).astype(int)
    raw = _panel(Image.open(tmp_path / "p.png"), 0, 0, (50, 100), 2).astype(int)
    r, g, b = panel[..., 0], panel[..., 1], panel[..., 2]
    coloured = (g - r) > 60
    np.testing.assert_array_equal(coloured, mask[1] > 0)
    outside = mask[1] == 0
    assert (r[outside] == g[outside]).all() and (g[outside] == b[outside]).all()  # plain greys
    np.testing.assert_array_equal(panel[outside], raw[outside])  # the raw data, unchanged
    assert raw.std() > 20  # contrast-stretched raw section


def test_cells_are_drawn_in_their_colours(tmp_path):
    image = _image((1, 40, 40))
    labels = np.zeros(image.shape, np.uint32)
    labels[0, 5:20, 5:20] = 3
    labels[0, 22:38, 10:35] = 8
    _write(tmp_path / "i.zarr", image)
    _write(tmp_path / "c.zarr", labels, kind="label")
    preview(
        tmp_path / "i.zarr",
        tmp_path / "p.png",
        overlay=tmp_path / "c.zarr",
        options=PreviewOptions(sections=(0,), panel=40, style="outline"),
    )
    panel = _panel(Image.open(tmp_path / "p.png"), 0, 1, (40, 40), 2)
    colours = label_colours(np.array([[3, 8]]))[0]
    assert (panel[5, 10] == colours[0]).all() and (panel[22, 20] == colours[1]).all()  # outlines
    assert not (colours[0] == colours[1]).all()
    grey = panel[0, 0]
    assert grey[0] == grey[1] == grey[2]  # background stays grey


def test_probability_is_a_heat_map(tmp_path):
    prob = np.zeros((1, 32, 32), np.uint8)
    prob[0, :, 16:] = 255
    _write(tmp_path / "p.zarr", prob, kind="probability")
    preview(tmp_path / "p.zarr", tmp_path / "p.png", options=PreviewOptions(panel=32))
    panel = _panel(Image.open(tmp_path / "p.png"), 0, 0, (32, 32), 1).astype(int)
    assert panel[:, :14].sum(axis=2).max() < 40  # dark where p = 0
    assert (panel[:, 18:, 0] > 240).all() and (panel[:, 18:, 1] > 240).all()  # bright yellow where p = 1


def test_huge_volume_path_reads_only_drawn_sections_of_a_pyramid_level(tmp_path, monkeypatch):
    vol = _write(tmp_path / "i.zarr", _image((6, 256, 192)), chunks=(1, 64, 64))
    vol.add_pyramid(3)
    reads = []
    real = pv._read_section
    monkeypatch.setattr(
        pv, "_read_section", lambda v, level, z: (reads.append((level, z)), real(v, level, z))[1]
    )
    info = preview(tmp_path / "i.zarr", tmp_path / "p.png", options=PreviewOptions(sections=(1, 4), panel=64))
    assert info["level"] == 2  # 256 / 4 = 64 px: the smallest level that still fills a 64 px panel
    assert sorted(set(reads)) == [(2, 1), (2, 4)]
    assert Image.open(tmp_path / "p.png").size == (GAP + 2 * (48 + GAP), GAP + TITLE_HEIGHT + 64 + GAP)
    fixed = preview(
        tmp_path / "i.zarr", tmp_path / "q.png", options=PreviewOptions(sections=(1,), panel=64, level=1)
    )
    assert fixed["level"] == 1


def test_parse_sections():
    assert parse_sections("0,5,10", 30) == (0, 5, 10)
    assert parse_sections("0:30:10", 30) == (0, 10, 20)
    assert parse_sections("-2:", 30) == (28, 29)
    assert parse_sections(None, 30) is None
    for bad in ("x", "40", "0:40", "5:5"):
        with pytest.raises(OptionError, match="--sections"):
            parse_sections(bad, 30)


def test_training_curves(tmp_path):
    log = tmp_path / "train.log.jsonl"
    lines = [{"kind": "step", "step": s, "loss": 1.0 / s, "lr": 1e-3} for s in range(1, 30)]
    lines += [{"kind": "val", "step": 10, "pixel_error": 0.2, "dice": 0.7, "v_rand": 0.8, "v_info": 0.85}]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    result = runner.invoke(app, ["preview", "--curves", str(log), "-o", str(tmp_path / "curves.png")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "curves.png").size[0] > 300


def test_cli_preview_and_its_errors(tmp_path):
    _write(tmp_path / "i.zarr", _image((3, 20, 30)))
    _write(tmp_path / "m.zarr", np.zeros((2, 20, 30), np.uint8), kind="mask")
    ok = runner.invoke(
        app,
        [
            "preview",
            str(tmp_path / "i.zarr"),
            "--sections",
            "0:3:2",
            "-o",
            str(tmp_path / "a.png"),
            "--panel",
            "60",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert Image.open(tmp_path / "a.png").size == (GAP + 2 * (60 + GAP), GAP + TITLE_HEIGHT + 40 + GAP)
    for args, needle in [
        (["--sections", "7"], "--sections"),
        (["--overlay", str(tmp_path / "m.zarr")], "shape"),
        (["--level", "x"], "--level"),
        (["-o", str(tmp_path / "a.jpg")], ".png"),
    ]:
        argv = ["preview", str(tmp_path / "i.zarr"), *args]
        if "-o" not in args:
            argv += ["-o", str(tmp_path / "b.png")]
        result = runner.invoke(app, argv)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0]


def test_missing_inputs(tmp_path):
    with pytest.raises(InputError, match="nothing.zarr"):
        preview(tmp_path / "nothing.zarr", tmp_path / "p.png")
    with pytest.raises(InputError, match="training log"):
        preview(None, tmp_path / "p.png", curves=tmp_path / "none.jsonl")
