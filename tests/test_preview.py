"""preview: the PNG exists, has the expected size, shows the overlay where it is set, reads pyramid levels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from support import translate, write_volume
from typer.testing import CliRunner

import volseg.stages.preview as pv
from volseg.app.cli import app
from volseg.core.montage import GAP, TITLE_HEIGHT, label_colours
from volseg.errors import InputError, OptionError
from volseg.stages.preview import PreviewOptions, parse_sections, preview
from volseg.storage.volumes import open_volume

runner = CliRunner()


def _write(path, data, chunks=None, kind="image"):
    return open_volume(write_volume(path, data, chunks, kind), mode="r+")


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
    assert png.size == (GAP + 3 * (100 + GAP), GAP + (TITLE_HEIGHT + 50 + GAP)) == (info.width, info.height)
    assert info.sections == [0, 2, 3]
    title = np.asarray(png)[GAP : GAP + TITLE_HEIGHT, GAP : GAP + 60]
    assert (title > 200).any()  # the title text is drawn
    again = preview(
        tmp_path / "i.zarr", tmp_path / "q.png", options=PreviewOptions(sections=(0, 2, 3), panel=100)
    )
    assert again.width == info.width
    assert (tmp_path / "p.png").read_bytes() == (tmp_path / "q.png").read_bytes()  # deterministic


def test_result_and_progress(tmp_path):
    _write(tmp_path / "i.zarr", _image())
    updates = []
    info = preview(
        tmp_path / "i.zarr", tmp_path / "p.png", PreviewOptions(sections=(0, 2)), progress=updates.append
    )
    assert [u.done for u in updates] == [0, 1, 2, 2] and updates[-1].finished
    assert info.to_dict() == {
        "path": str(tmp_path / "p.png"),
        "width": info.width,
        "height": info.height,
        "sections": [0, 2],
        "level": 0,
        "overlay_level": None,
        "overlay_region": None,
    }


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
    assert info.level == 2  # 256 / 4 = 64 px: the smallest level that still fills a 64 px panel
    assert sorted(set(reads)) == [(2, 1), (2, 4)]
    assert Image.open(tmp_path / "p.png").size == (GAP + 2 * (48 + GAP), GAP + TITLE_HEIGHT + 64 + GAP)
    fixed = preview(
        tmp_path / "i.zarr", tmp_path / "q.png", options=PreviewOptions(sections=(1,), panel=64, level=1)
    )
    assert fixed.level == 1


def test_parse_sections():
    assert parse_sections("0,5,10", 30) == (0, 5, 10)
    assert parse_sections("0:30:10", 30) == (0, 10, 20)
    assert parse_sections("-2:", 30) == (28, 29)
    assert parse_sections(None, 30) is None
    for bad in ("x", "40", "0:40", "5:5"):
        with pytest.raises(OptionError, match="^sections"):  # the argument; the CLI shows the flag
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
    translate(tmp_path / "m.zarr", (3, 0, 0))  # lies beyond the image's 3 sections
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
        (["--overlay", str(tmp_path / "m.zarr")], "does not overlap"),
        (["--level", "x"], "--level"),
        (["-o", str(tmp_path / "a.jpg")], ".png"),
        (["--panel", "2147483648"], "--panel 2147483648: must be 16..8192"),  # found by the fuzz suite
        (["--columns", "99999999999999999999"], "--columns"),
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


# ------------------------------------------------------ overlays placed by translation


def test_translated_overlay_is_drawn_where_it_lies(tmp_path):
    image = _image((5, 40, 60))
    _write(tmp_path / "i.zarr", image)
    roi = np.ones((2, 20, 30), np.uint8)  # a mask over z 2:4, y 10:30, x 20:50 of the image
    roi[:, :, :5] = 0  # its first 5 columns are off
    _write(tmp_path / "m.zarr", roi, kind="mask")
    translate(tmp_path / "m.zarr", (2, 10, 20))
    info = preview(
        tmp_path / "i.zarr",
        tmp_path / "p.png",
        overlay=tmp_path / "m.zarr",
        options=PreviewOptions(panel=60, alpha=0.5),
    )
    assert info.sections == [2, 3]  # by default, sections where the overlay lies
    assert info.overlay_region == {"z": [2, 4], "y": [10, 30], "x": [20, 50]}
    png = Image.open(tmp_path / "p.png")
    expected = np.zeros((40, 60), bool)
    expected[10:30, 25:50] = True
    for column in (0, 1):
        panel = _panel(png, column, 1, (40, 60), 2).astype(int)
        raw = _panel(png, column, 0, (40, 60), 2).astype(int)
        np.testing.assert_array_equal((panel[..., 1] - panel[..., 0]) > 60, expected)
        np.testing.assert_array_equal(panel[~expected], raw[~expected])  # the raw data around it
    with pytest.raises(OptionError, match="section 1 .*2:4"):
        preview(
            tmp_path / "i.zarr",
            tmp_path / "q.png",
            overlay=tmp_path / "m.zarr",
            options=PreviewOptions(sections=(1, 2)),
        )


def test_overlay_over_a_translated_base_and_probabilities_of_a_roi(tmp_path):
    # an ROI prediction shown over the ROI's cells: both lie at the same place
    prob = np.zeros((2, 16, 24), np.uint8)
    prob[:, :, 12:] = 255
    labels = np.zeros((2, 16, 24), np.uint32)
    labels[:, 2:10, 2:10] = 5
    _write(tmp_path / "p.zarr", prob, kind="probability")
    _write(tmp_path / "c.zarr", labels, kind="label")
    for name in ("p.zarr", "c.zarr"):
        translate(tmp_path / name, (3, 8, 8))
    info = preview(
        tmp_path / "p.zarr",
        tmp_path / "a.png",
        overlay=tmp_path / "c.zarr",
        options=PreviewOptions(panel=24, style="fill", alpha=1.0),
    )
    assert info.sections == [0, 1] and info.overlay_region == {"z": [0, 2], "y": [0, 16], "x": [0, 24]}
    panel = _panel(Image.open(tmp_path / "a.png"), 0, 1, (16, 24), 2)
    assert (panel[5, 5] == label_colours(np.array([[5]]))[0, 0]).all()
    # the ROI's probabilities over the whole image: a heat map where they lie, the raw data elsewhere
    _write(tmp_path / "i.zarr", _image((6, 32, 48)))
    preview(
        tmp_path / "i.zarr",
        tmp_path / "b.png",
        overlay=tmp_path / "p.zarr",
        options=PreviewOptions(panel=48, sections=(4,)),
    )
    panel = _panel(Image.open(tmp_path / "b.png"), 0, 1, (32, 48), 2).astype(int)
    raw = _panel(Image.open(tmp_path / "b.png"), 0, 0, (32, 48), 2).astype(int)
    assert (panel[8:24, 22:32, 0] > 240).all() and panel[8:24, 8:18].sum(axis=2).max() < 40  # heat map
    np.testing.assert_array_equal(panel[:8], raw[:8])
    np.testing.assert_array_equal(panel[:, :8], raw[:, :8])


def test_overlay_that_does_not_overlap_is_refused(tmp_path):
    _write(tmp_path / "i.zarr", _image((3, 20, 30)))
    _write(tmp_path / "m.zarr", np.ones((2, 10, 10), np.uint8), kind="mask")
    translate(tmp_path / "m.zarr", (0, 20, 0))
    result = runner.invoke(
        app,
        [
            "preview",
            str(tmp_path / "i.zarr"),
            "--overlay",
            str(tmp_path / "m.zarr"),
            "-o",
            str(tmp_path / "p.png"),
        ],
    )
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "does not overlap" in lines[0]
    assert not (tmp_path / "p.png").exists()


# ------------------------------------------------------------- curves: bad logs
def _train_log_lines() -> list[str]:
    records = [{"kind": "step", "step": s, "loss": 1.0 / s, "lr": 1e-3, "time": 0.1 * s} for s in range(1, 9)]
    records.insert(
        4, {"kind": "val", "step": 4, "pixel_error": 0.2, "dice": 0.7, "v_rand": 0.8, "v_info": 0.85}
    )
    return [json.dumps(r) for r in records]


def test_curves_refuse_what_is_not_a_train_log(tmp_path):
    cases = {
        "binary.jsonl": (bytes(range(256)) * 4, "binary"),
        "empty.jsonl": (b"", "empty"),
        "blank.jsonl": (b"\n  \n\n", "empty"),
        "text.jsonl": (b"step,loss\n1,0.5\n", "line 1 is not JSON"),
        "latin1.jsonl": (
            '{"step": 1, "loss": 0.5, "note": "\u00e9"}\n'.encode("latin-1"),
            "line 1 is not JSON",
        ),
        "lists.jsonl": (b"\n[1, 2]\n3\n", "line 2 is a JSON array, not an object"),
        "no loss.jsonl": (b'{"step": 3}\n', "line 1 has no number 'loss'"),
        "loss text.jsonl": (b'{"loss": "x"}\n', "line 1 has no number 'step'"),
        "loss str.jsonl": (b'{"step": 1, "loss": "x"}\n', "line 1 has no number 'loss'"),
        "step bool.jsonl": (b'{"step": true, "loss": 1}\n', "line 1 has no number 'step'"),
        "only val.jsonl": (b'{"kind": "val", "step": 3, "v_rand": 0.5}\n', "no step record"),
        "deep.jsonl": (b"[" * 100000 + b"\n", "line 1 is not JSON"),
        "missing.jsonl": (None, "no such training log"),
        "folder.jsonl": ("dir", "is a folder"),
    }
    out = tmp_path / "out" / "curves.png"
    for name, (content, needle) in cases.items():
        log = tmp_path / name
        if content == "dir":
            log.mkdir()
        elif content is not None:
            log.write_bytes(content)
        result = runner.invoke(app, ["preview", "--curves", str(log), "-o", str(out)])
        assert result.exit_code == 2, (name, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"volseg: error: {log}: "), (name, result.stderr)
        assert needle in lines[0], (name, lines[0])
        assert "MODEL.log.jsonl" in lines[0] and "Traceback" not in result.output, (name, result.output)
        assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir())), name


def test_curves_skip_unusable_lines_of_a_train_log(tmp_path):
    from volseg.storage.curves import read_log

    lines = _train_log_lines()
    lines[2:2] = ["", '{"kind": "note", "text": "resumed"}', "[1]", '{"step": "x", "loss": 1}']
    lines.append('{"kind": "step", "step": 9, "loss": NaN, "lr": "x"}')  # a diverged step
    lines.append('{"kind": "val", "step": 9, "v_rand": "x", "dice": true}')
    lines.append('{"kind": "step", "step": 10, "lo')  # torn by a killed run
    lines.append("\0" * 64)  # what a crash can leave at the end of a file
    log = tmp_path / "m.log.jsonl"
    log.write_text("\n".join(lines))
    steps, vals = read_log(log)
    assert [r["step"] for r in steps] == list(range(1, 10)) and [r["step"] for r in vals] == [4, 9]
    out = tmp_path / "c.png"
    result = runner.invoke(app, ["preview", "--curves", str(log), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size[0] > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "m.log.jsonl"]  # no temporary left


_ODD_VALUES = [None, "x", [], {}, True, 1e308, -1e308, 1e300, float("nan"), float("inf"), 10**400, -3, 0]


def _mutated_log(lines: list[str], kind: int, rng: np.random.Generator) -> bytes:
    if kind == 0:
        return rng.bytes(int(rng.integers(0, 300)))
    text = "\n".join(lines).encode()
    if kind == 1:  # bytes changed anywhere
        data = bytearray(text)
        for _ in range(int(rng.integers(1, 10))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        return bytes(data)
    if kind == 2:  # truncated
        return text[: int(rng.integers(0, len(text)))]
    if kind == 3:  # some lines dropped, repeated or shuffled
        picked = rng.choice(len(lines), size=int(rng.integers(1, len(lines) + 3)))
        return "\n".join(lines[i] for i in picked).encode()
    records = [json.loads(line) for line in lines]  # odd values in every record
    for record in records:
        key = ["step", "loss", "lr", "kind", "v_rand", "dice"][int(rng.integers(6))]
        record[key] = _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]
    return "\n".join(json.dumps(r) for r in records).encode()


def test_curves_of_fuzzed_logs_are_drawn_or_one_error(tmp_path):
    import warnings

    from volseg.errors import VolsegError
    from volseg.storage.curves import plot_curves, read_log

    rng = np.random.default_rng(7)
    lines = _train_log_lines()
    log, png = tmp_path / "f.log.jsonl", tmp_path / "f.png"
    drawn, refused = 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would reach the user's stderr
        for i in range(200):
            log.write_bytes(_mutated_log(lines, i % 5, rng))
            try:
                read_log(log)
                if drawn < 3 and i % 5 == 4:  # drawing takes ~0.4 s: a few of the odd-value logs
                    plot_curves(log, png)
                    drawn += 1
            except VolsegError as exc:
                refused += 1
                message = str(exc)
                assert message.startswith(f"{log}: ") and "\n" not in message and message.isprintable(), (
                    message
                )
    assert drawn == 3 and 20 < refused < 180


def test_the_png_is_never_written_into_an_input(tmp_path):
    from volseg.errors import OutputError

    _write(tmp_path / "i.zarr", _image((2, 20, 30)))
    _write(tmp_path / "m.zarr", np.zeros((2, 20, 30), np.uint8), kind="mask")
    before = sorted(p.name for p in (tmp_path / "m.zarr").iterdir())
    for out in (tmp_path / "i.zarr" / "p.png", tmp_path / "m.zarr" / "p.png"):
        with pytest.raises(OutputError, match="-o"):
            preview(tmp_path / "i.zarr", out, overlay=tmp_path / "m.zarr")
    assert sorted(p.name for p in (tmp_path / "m.zarr").iterdir()) == before
    assert not (tmp_path / "i.zarr" / "p.png").exists()
    with pytest.raises(InputError, match="is a URL"):
        preview(tmp_path / "i.zarr", "s3://bucket/p.png")
