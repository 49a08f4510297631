"""convert: TIFF / PNG stacks -> OME-Zarr, compared pixel for pixel with tifffile.imread."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from support import cli, one_line_error
from typer.testing import CliRunner

from volseg.errors import InputError, OptionError, OutputError
from volseg.stages.convert import ConvertResult, convert
from volseg.storage.stacks import TiffStack
from volseg.storage.volumes import Volume, open_volume

runner = CliRunner()


def stored(path: Path) -> np.ndarray:
    return open_volume(path).data.compute()


def looks_complete(path: Path) -> bool:
    try:
        return open_volume(path).complete
    except InputError:
        return False


# ----------------------------------------------------------------------------------- ISBI
@pytest.mark.isbi
@pytest.mark.parametrize("name", ["train-volume.tif", "train-labels.tif", "test-volume.tif"])
def test_isbi_stacks_equal_tifffile(isbi_dir, tmp_path, name):
    vol = convert(isbi_dir / name, tmp_path / "v.zarr", chunks=(2, 200, 300)).volume
    expected = tifffile.imread(isbi_dir / name)
    assert vol.shape == (30, 512, 512) and vol.dtype == np.uint8 and vol.complete
    np.testing.assert_array_equal(stored(tmp_path / "v.zarr"), expected)


# ---------------------------------------------------------------------- generated stacks
def _write(kind: str, path: Path, data: np.ndarray) -> np.ndarray:
    """Write ``data`` (Z, Y, X) as a TIFF of the given kind; return what tifffile.imread reads back."""
    if kind == "imagej":
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    elif kind == "bigtiff-zlib":
        tifffile.imwrite(path, data, bigtiff=True, compression="zlib", photometric="minisblack")
    elif kind == "big-endian":
        tifffile.imwrite(path, data, byteorder=">", photometric="minisblack")
    elif kind == "tiled-zstd":
        tifffile.imwrite(path, data, tile=(64, 64), compression="zstd", photometric="minisblack")
    elif kind == "ome":
        tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZYX"})
    elif kind == "page-per-write":  # each page its own series: tifffile.imread alone would read page 0
        with tifffile.TiffWriter(path) as tw:
            for section in data:
                tw.write(section, photometric="minisblack")
        return tifffile.imread(path, key=range(len(data)))
    else:
        tifffile.imwrite(path, data, photometric="minisblack")
    return tifffile.imread(path)


@pytest.mark.parametrize(
    "kind, dtype",
    [
        ("classic", "uint8"),
        ("imagej", "float32"),
        ("bigtiff-zlib", "uint16"),
        ("big-endian", "uint16"),
        ("tiled-zstd", "uint8"),
        ("ome", "int16"),
        ("page-per-write", "uint8"),
    ],
)
def test_multipage_tiff_equals_tifffile(tmp_path, rng, kind, dtype):
    data = (rng.random((5, 150, 201)) * 3000).astype(dtype)
    expected = _write(kind, tmp_path / "s.tif", data)
    np.testing.assert_array_equal(expected, data)  # the reference itself is right
    vol = convert(tmp_path / "s.tif", tmp_path / "v.zarr", chunks=(2, 64, 100)).volume
    assert vol.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(stored(tmp_path / "v.zarr"), expected)


@pytest.mark.parametrize("chunks", [(1, 64, 64), (3, 100, 200), (7, 333, 517), (2, 1024, 1024), None])
def test_odd_shapes_any_chunks_same_values(tmp_path, rng, chunks):
    data = rng.integers(0, 2**16, (7, 333, 517), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", data, photometric="minisblack")
    vol = convert(tmp_path / "s.tif", tmp_path / "v.zarr", chunks=chunks).volume
    assert vol.chunks == (
        tuple(min(c, s) for c, s in zip(chunks, data.shape, strict=True)) if chunks else (1, 333, 517)
    )
    np.testing.assert_array_equal(stored(tmp_path / "v.zarr"), tifffile.imread(tmp_path / "s.tif"))


def test_single_2d_tiff_is_one_section(tmp_path, rng):
    data = rng.random((40, 50)).astype(np.float32)
    tifffile.imwrite(tmp_path / "one.tif", data)
    vol = convert(tmp_path / "one.tif", tmp_path / "v.zarr").volume
    assert vol.shape == (1, 40, 50)
    np.testing.assert_array_equal(stored(tmp_path / "v.zarr")[0], data)


def _spy_reads(monkeypatch) -> list[tuple[int, int, int, int]]:
    calls = []
    original = TiffStack.read

    def read(self, z0, z1, out, y0=0):
        calls.append((z0, z1, y0, out.shape[1]))
        original(self, z0, z1, out, y0)

    monkeypatch.setattr(TiffStack, "read", read)
    return calls


def test_reads_band_by_band(tmp_path, rng, monkeypatch):
    data = rng.integers(0, 255, (9, 64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", data, compression="zlib", photometric="minisblack")
    calls = _spy_reads(monkeypatch)
    convert(tmp_path / "s.tif", tmp_path / "v.zarr", chunks=(4, 32, 32))
    assert calls == [
        (0, 4, 0, 64),
        (4, 8, 0, 64),
        (8, 9, 0, 64),
    ]  # one chunk depth at a time, never the stack
    np.testing.assert_array_equal(stored(tmp_path / "v.zarr"), data)


@pytest.mark.parametrize(
    "layout, shape, channel, pick",
    [
        ({"photometric": "minisblack"}, (3, 200, 50), None, lambda a: a),
        ({"photometric": "rgb"}, (3, 200, 50, 3), 1, lambda a: a[..., 1]),  # samples interleaved
        ({"photometric": "rgb", "planarconfig": "separate"}, (3, 3, 200, 50), 1, lambda a: a[:, 1]),  # planes
    ],
)
def test_uncompressed_tiff_is_read_a_few_chunk_rows_at_a_time(
    tmp_path, rng, monkeypatch, layout, shape, channel, pick
):
    data = rng.integers(0, 2**16, shape, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", data, byteorder=">", **layout)  # big-endian: converted on the way
    monkeypatch.setattr(
        "volseg.stages.convert.available_cores", lambda limit=None: 1
    )  # 2 blocks a piece: 2 chunk rows (1 block each)
    calls = _spy_reads(monkeypatch)
    convert(tmp_path / "s.tif", tmp_path / "v.zarr", chunks=(1, 32, 64), channel=channel)
    assert calls[:4] == [(0, 1, 0, 64), (0, 1, 64, 64), (0, 1, 128, 64), (0, 1, 192, 8)]
    np.testing.assert_array_equal(stored(tmp_path / "v.zarr"), pick(tifffile.imread(tmp_path / "s.tif")))


# ---------------------------------------------------------------------------- folders
def _section_files(folder: Path, data: np.ndarray, suffix: str) -> None:
    folder.mkdir()
    for i, section in enumerate(data):  # unpadded numbers: natural order matters
        name = folder / f"sec{i + 1}{suffix}"
        if suffix == ".png":
            Image.fromarray(section).save(name)
        else:
            tifffile.imwrite(name, section)


@pytest.mark.parametrize(
    "suffix, dtype", [(".tif", "uint8"), (".tif", "float32"), (".png", "uint8"), (".png", "uint16")]
)
def test_folder_of_sections_in_natural_order(tmp_path, rng, suffix, dtype):
    data = (rng.random((12, 37, 45)) * 60000).astype(dtype)
    _section_files(tmp_path / "secs", data, suffix)
    (tmp_path / "secs" / "notes.txt").write_text("not an image")
    vol = convert(tmp_path / "secs", tmp_path / "v.zarr", chunks=(5, 16, 16)).volume
    assert vol.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(stored(tmp_path / "v.zarr"), data)  # sec2 before sec10
    assert [Path(s["path"]).name for s in vol.provenance["sources"]][:3] == [
        f"sec1{suffix}",
        f"sec2{suffix}",
        f"sec3{suffix}",
    ]


def test_png_palette_indices_and_huge_sections(tmp_path, rng, monkeypatch):
    labels = rng.integers(0, 7, (2, 30, 40), dtype=np.uint8)
    (tmp_path / "labels").mkdir()
    for i, section in enumerate(labels):
        im = Image.fromarray(section, mode="L").convert("P")
        im.putpalette([v for k in range(256) for v in (k * 30 % 256, k * 70 % 256, k * 110 % 256)])
        im.save(tmp_path / "labels" / f"{i}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's "decompression bomb" limit, shrunk
    convert(tmp_path / "labels", tmp_path / "v.zarr")
    np.testing.assert_array_equal(stored(tmp_path / "v.zarr"), labels)  # indices, not colours
    assert Image.MAX_IMAGE_PIXELS == 100


def test_glob_pattern_and_order_options(tmp_path, rng):
    data = rng.integers(0, 255, (11, 20, 30), dtype=np.uint8)
    _section_files(tmp_path / "secs", data, ".png")
    convert(str(tmp_path / "secs" / "sec*.png"), tmp_path / "glob.zarr")
    np.testing.assert_array_equal(stored(tmp_path / "glob.zarr"), data)
    by_name = sorted(range(11), key=lambda i: f"sec{i + 1}.png")  # sec1, sec10, sec11, sec2, ...
    convert(tmp_path / "secs", tmp_path / "name.zarr", order="name")
    np.testing.assert_array_equal(stored(tmp_path / "name.zarr"), data[by_name])
    (tmp_path / "order.txt").write_text(
        "# damaged sections 2 and 3 left out\nsec5.png\nsec1.png\n\nsec4.png\n"
    )
    convert(tmp_path / "secs", tmp_path / "listed.zarr", order=tmp_path / "order.txt")
    np.testing.assert_array_equal(stored(tmp_path / "listed.zarr"), data[[4, 0, 3]])
    (tmp_path / "bad.txt").write_text("sec1.png\nsec99.png\n")
    with pytest.raises(InputError, match="line 2: 'sec99.png'"):
        convert(tmp_path / "secs", tmp_path / "bad.zarr", order=tmp_path / "bad.txt")


# ------------------------------------------------------------------------- channels
def test_hyperstack_channel_and_rgb(tmp_path, rng):
    hyper = rng.integers(0, 255, (6, 3, 20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "h.tif", hyper, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(InputError, match="3 channels.*--channel"):
        convert(tmp_path / "h.tif", tmp_path / "h.zarr")
    convert(tmp_path / "h.tif", tmp_path / "h.zarr", channel=1)
    np.testing.assert_array_equal(stored(tmp_path / "h.zarr"), tifffile.imread(tmp_path / "h.tif")[:, 1])

    rgb = rng.integers(0, 255, (5, 20, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with pytest.raises(InputError, match="--channel N with N in 0..2"):
        convert(tmp_path / "rgb.tif", tmp_path / "rgb.zarr")
    with pytest.raises(OptionError, match="--channel 3"):
        convert(tmp_path / "rgb.tif", tmp_path / "rgb.zarr", channel=3)
    convert(tmp_path / "rgb.tif", tmp_path / "rgb.zarr", channel=2)
    np.testing.assert_array_equal(stored(tmp_path / "rgb.zarr"), rgb[..., 2])

    (tmp_path / "pngs").mkdir()
    for i in range(3):
        Image.fromarray(rgb[i]).save(tmp_path / "pngs" / f"{i}.png")
    convert(tmp_path / "pngs", tmp_path / "png.zarr", channel=0)
    np.testing.assert_array_equal(stored(tmp_path / "png.zarr"), rgb[:3, ..., 0])


def test_time_and_z_axes_refused(tmp_path, rng):
    tifffile.imwrite(
        tmp_path / "tz.tif", np.zeros((2, 5, 8, 8), np.uint8), imagej=True, metadata={"axes": "TZYX"}
    )
    with pytest.raises(InputError, match=r"several stack axes \(T=2, Z=5\)"):
        convert(tmp_path / "tz.tif", tmp_path / "v.zarr")


# ----------------------------------------------------------------------- voxel size
def _scale_and_units(path: Path) -> tuple[list[float], list]:
    ms = json.loads((path / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    return ms["datasets"][0]["coordinateTransformations"][0]["scale"], [a.get("unit") for a in ms["axes"]]


def test_voxel_size_from_metadata_and_overrides(tmp_path):
    data = np.zeros((5, 16, 16), np.uint8)
    tifffile.imwrite(
        tmp_path / "ij.tif",
        data,
        imagej=True,
        resolution=(0.25, 0.25),
        metadata={"axes": "ZYX", "spacing": 50, "unit": "nm"},
    )
    tifffile.imwrite(
        tmp_path / "ome.tif",
        data,
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.004, "PhysicalSizeY": 0.004, "PhysicalSizeZ": 0.05},
    )
    tags = {"photometric": "minisblack"}
    tifffile.imwrite(
        tmp_path / "cm.tif", data, resolution=(2.5e6, 2.5e6), resolutionunit="CENTIMETER", **tags
    )
    tifffile.imwrite(tmp_path / "dpi.tif", data, resolution=(72, 72), resolutionunit="INCH", **tags)
    tifffile.imwrite(tmp_path / "plain.tif", data, **tags)
    cases = {
        ("ij.tif", None, None): ([50, 4, 4], "nanometer"),
        ("ome.tif", None, None): ([0.05, 0.004, 0.004], "micrometer"),
        ("ome.tif", None, "nm"): ([50, 4, 4], "nanometer"),  # --unit alone converts
        ("cm.tif", None, None): ([1, 0.004, 0.004], "micrometer"),
        ("dpi.tif", None, None): ([1, 1, 1], None),  # 72 dpi is a writer's default, not a calibration
        ("plain.tif", None, None): ([1, 1, 1], None),  # unknown: no unit written at all
        ("plain.tif", (40, 5, 5), None): ([40, 5, 5], "nanometer"),
        ("ij.tif", (0.05, 0.004, 0.004), "micron"): ([0.05, 0.004, 0.004], "micrometer"),
    }
    for i, ((name, voxel, unit), (scale, want_unit)) in enumerate(cases.items()):
        out = tmp_path / f"v{i}.zarr"
        vol = convert(tmp_path / name, out, voxel_size=voxel, unit=unit).volume
        got_scale, units = _scale_and_units(out)
        np.testing.assert_allclose(got_scale, scale, rtol=1e-9, err_msg=name)
        assert units == [want_unit] * 3, name
        assert vol.unit == (want_unit or "")


# ------------------------------------------------------------------- resume and crashes
def _crash_after(monkeypatch, n: int) -> None:
    """Let ``n`` blocks be recorded as done, then fail like a Ctrl-C mid-run."""
    original, calls = Volume.mark_done, itertools.count(1)

    def flaky(self, index, **kw):
        if next(calls) > n:
            raise KeyboardInterrupt
        original(self, index, **kw)

    monkeypatch.setattr(Volume, "mark_done", flaky)


def test_resume_after_crash_gives_identical_volume(tmp_path, rng, monkeypatch):
    data = rng.integers(0, 2**16, (9, 70, 90), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", data, photometric="minisblack")
    out, opts = tmp_path / "v.zarr", {"chunks": (2, 32, 64)}  # grid 5 x 3 x 2 = 30 blocks
    _crash_after(monkeypatch, 13)
    with pytest.raises(KeyboardInterrupt):
        convert(tmp_path / "s.tif", out, **opts)
    monkeypatch.undo()
    vol = open_volume(out)
    assert not vol.complete and len(vol.done_blocks()) == 13

    with pytest.raises(OutputError, match="--resume"):
        convert(tmp_path / "s.tif", out, **opts)
    with pytest.raises(OutputError, match="chunks"):
        convert(tmp_path / "s.tif", out, resume=True, chunks=(1, 32, 64))

    written = []
    original = Volume.mark_done
    monkeypatch.setattr(
        Volume, "mark_done", lambda self, i, **kw: (written.append(i), original(self, i, **kw))
    )
    vol = convert(tmp_path / "s.tif", out, resume=True, **opts).volume
    assert len(written) == 30 - 13 and vol.complete  # the done blocks were skipped
    np.testing.assert_array_equal(stored(out), data)
    convert(tmp_path / "s.tif", tmp_path / "fresh.zarr", **opts)
    for key in ("0/zarr.json",):
        assert (out / key).read_text() == (tmp_path / "fresh.zarr" / key).read_text()
    assert sorted(p.relative_to(out).as_posix() for p in (out / "0").rglob("*")) == sorted(
        p.relative_to(tmp_path / "fresh.zarr").as_posix() for p in (tmp_path / "fresh.zarr" / "0").rglob("*")
    )
    assert len(vol.meta["resumed"]) == 1
    assert convert(tmp_path / "s.tif", out, resume=True, **opts).volume.complete  # complete: nothing to do


def test_shards_convert_resume_and_refuse_bad_shapes(tmp_path, rng, monkeypatch):
    data = rng.integers(0, 256, (5, 70, 90), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", data, photometric="minisblack")
    out, opts = tmp_path / "v.zarr", {"chunks": (1, 16, 32), "shards": (1, 64, 64)}
    _crash_after(monkeypatch, 4)  # blocks are shards: grid 5 x 2 x 2 = 20
    with pytest.raises(KeyboardInterrupt):
        convert(tmp_path / "s.tif", out, **opts)
    monkeypatch.undo()
    assert len(open_volume(out).done_blocks()) == 4
    with pytest.raises(OutputError, match="shards"):
        convert(tmp_path / "s.tif", out, resume=True, chunks=(1, 16, 32), shards=(1, 32, 64))
    vol = convert(tmp_path / "s.tif", out, resume=True, **opts).volume
    assert vol.complete and vol.shards == (1, 64, 64) and vol.block_grid == (5, 2, 2)
    np.testing.assert_array_equal(stored(out), data)
    assert len(list((out / "0" / "c").rglob("*"))) < 5 * 5 * 3  # shard files, not chunk files
    unsharded = convert(tmp_path / "s.tif", tmp_path / "plain.zarr", chunks=(1, 16, 32))
    np.testing.assert_array_equal(stored(unsharded.path), data)
    bad = cli(
        "convert", tmp_path / "s.tif", tmp_path / "bad.zarr", "--chunks", "1,16,32", "--shards", "1,40,64"
    )
    line = one_line_error(bad, "--shards")
    assert "multiple of the chunks" in line and not looks_complete(tmp_path / "bad.zarr")


def test_resume_after_lost_records_rewrites_exactly_those_blocks(tmp_path, rng, monkeypatch):
    data = rng.integers(0, 2**16, (3, 70, 90), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", data, photometric="minisblack")
    monkeypatch.setattr(
        "volseg.stages.convert.available_cores", lambda limit=None: 1
    )  # pieces of 2 chunk rows, two buffers in turn
    out, opts = tmp_path / "v.zarr", {"chunks": (1, 16, 90)}  # grid 3 x 5 x 1
    vol = convert(tmp_path / "s.tif", out, **opts).volume
    lost = [
        (0, 0, 0),
        (0, 4, 0),
        (1, 2, 0),
        (2, 1, 0),
        (2, 4, 0),
    ]  # pieces with and without work, interleaved
    for iz, iy, ix in lost:
        (out / ".volseg" / "done" / f"{iz}.{iy}.{ix}").unlink()
        (out / "0" / "c" / str(iz) / str(iy) / str(ix)).write_bytes(b"garbage")  # a half-written chunk
    vol.update_meta(status="incomplete")
    assert not open_volume(out).complete and open_volume(out).completion()["blocks_done"] == 10
    written = []
    original = Volume.mark_done
    monkeypatch.setattr(
        Volume, "mark_done", lambda self, i, **kw: (written.append(i), original(self, i, **kw))
    )
    assert convert(tmp_path / "s.tif", out, resume=True, **opts).volume.complete
    assert sorted(written) == lost
    np.testing.assert_array_equal(stored(out), data)


def test_resume_refuses_changed_sources(tmp_path, rng, monkeypatch):
    data = rng.integers(0, 255, (4, 30, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", data, photometric="minisblack")
    _crash_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        convert(tmp_path / "s.tif", tmp_path / "v.zarr")
    monkeypatch.undo()
    tifffile.imwrite(tmp_path / "s.tif", data[::-1], photometric="minisblack")
    os.utime(tmp_path / "s.tif", (1e9, 1e9))
    with pytest.raises(OutputError, match="sources changed"):
        convert(tmp_path / "s.tif", tmp_path / "v.zarr", resume=True)
    vol = convert(tmp_path / "s.tif", tmp_path / "v.zarr", overwrite=True).volume
    np.testing.assert_array_equal(stored(vol.path), data[::-1])


def test_kill_9_then_resume(tmp_path, rng):
    data = rng.integers(0, 255, (16, 512, 512), dtype=np.uint8)  # 256 blocks: the kill lands mid-run
    tifffile.imwrite(tmp_path / "s.tif", data, photometric="minisblack")
    out = tmp_path / "v.zarr"
    cmd = [
        sys.executable,
        "-m",
        "volseg",
        "convert",
        str(tmp_path / "s.tif"),
        str(out),
        "--chunks",
        "1,128,128",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir, deadline = out / ".volseg" / "done", time.monotonic() + 60
    while (
        not (done_dir.is_dir() and any(done_dir.iterdir()))
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    vol = open_volume(out)
    assert not vol.complete, "the run finished before it could be killed"
    assert 0 < len(vol.done_blocks()) < vol.n_blocks
    info = cli("info", out, "--json")
    assert json.loads(info.stdout)["completion"]["status"] == "incomplete"
    result = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert open_volume(out).complete
    np.testing.assert_array_equal(stored(out), tifffile.imread(tmp_path / "s.tif"))


# ------------------------------------------------------------------ metadata and readers
def test_output_is_valid_ome_zarr_with_provenance(tmp_path, rng):
    from ome_zarr_models.v05.image import Image as OmeImage

    data = rng.integers(0, 255, (4, 40, 50), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", data, photometric="minisblack")
    for name, unit in (("plain.zarr", None), ("nm.zarr", "nanometer")):
        convert(tmp_path / "s.tif", tmp_path / name, voxel_size=(50, 4, 4) if unit else None)
        image = OmeImage.from_zarr(zarr.open_group(tmp_path / name, mode="r"))
        ms = image.ome_attributes.multiscales[0]
        assert [a.name for a in ms.axes] == ["z", "y", "x"] and [a.unit for a in ms.axes] == [unit] * 3
        assert [d.path for d in ms.datasets] == ["0"]
    prov = open_volume(tmp_path / "nm.zarr").provenance
    (src,) = prov["sources"]
    assert (
        src["path"] == str((tmp_path / "s.tif").resolve())
        and src["size"] == (tmp_path / "s.tif").stat().st_size
    )
    assert "mtime" in src and "tifffile" in prov["versions"] and prov["command"]
    assert prov["config"]["chunks"] == [1, 40, 50] and prov["config"]["voxel_size"] == [50.0, 4.0, 4.0]


def test_result_is_plain_data_and_progress_counts_sections(tmp_path, rng):
    data = rng.integers(0, 2**16, (5, 40, 50), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", data, compression="zlib", photometric="minisblack")
    updates = []
    result = convert(tmp_path / "s.tif", tmp_path / "v.zarr", chunks=(2, 16, 50), progress=updates.append)
    assert isinstance(result, ConvertResult) and result.volume.complete
    assert result.to_dict() == json.loads(json.dumps(result.to_dict()))  # plain JSON data
    assert {k: v for k, v in result.to_dict().items() if k != "seconds"} == {
        "path": str(tmp_path / "v.zarr"),
        "shape": [5, 40, 50],
        "dtype": "uint16",
        "chunks": [2, 16, 50],
        "shards": None,
        "voxel_size": [1.0, 1.0, 1.0],
        "unit": None,
        "kind": "image",
    }
    assert {u.task for u in updates} == {"convert v.zarr"} and {u.unit for u in updates} == {"sections"}
    assert [u.done for u in updates] == sorted(u.done for u in updates)
    last = updates[-1]
    assert last.finished and last.total == 5 and last.done == pytest.approx(5) and "sections/s" in last.info
    np.testing.assert_array_equal(stored(result.path), data)


def test_options_as_one_dataclass_equal_the_keywords(tmp_path, rng):
    """The stage shape: convert(src, out, options) gives what the same keywords give; not both at once."""
    from volseg.stages.convert import ConvertOptions

    data = rng.integers(0, 255, (3, 20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", data, photometric="minisblack")
    opts = ConvertOptions(chunks=(1, 8, 30), voxel_size=(40.0, 4.0, 4.0), unit="nanometer")
    a = convert(tmp_path / "s.tif", tmp_path / "a.zarr", opts)
    b = convert(tmp_path / "s.tif", tmp_path / "b.zarr", chunks=(1, 8, 30), voxel_size=(40, 4, 4), unit="nm")
    assert {k: v for k, v in a.to_dict().items() if k not in ("path", "seconds")} == {
        k: v for k, v in b.to_dict().items() if k not in ("path", "seconds")
    }
    np.testing.assert_array_equal(stored(a.path), stored(b.path))
    with pytest.raises(OptionError, match="as options or as keywords, not both"):
        convert(tmp_path / "s.tif", tmp_path / "c.zarr", opts, chunks=(1, 4, 4))
    assert not (tmp_path / "c.zarr").exists()


def test_cli_convert_then_info(tmp_path, rng):
    data = rng.integers(0, 255, (6, 30, 40), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", data, photometric="minisblack")
    result = cli(
        "convert",
        tmp_path / "s.tif",
        tmp_path / "v.zarr",
        "--chunks",
        "2,16,16",
        "--voxel-size",
        "50,4,4",
        "--codec",
        "zstd:3",
    )
    assert result.exit_code == 0, result.output
    assert "6 x 30 x 40 uint8" in result.stdout and "sections/s" in result.stderr
    np.testing.assert_array_equal(stored(tmp_path / "v.zarr"), data)
    info = cli("info", tmp_path / "v.zarr")
    assert info.exit_code == 0
    for text in (
        "6 x 30 x 40",
        "uint8",
        "complete",
        "sections done    6 / 6",
        "zstd:3",
        "50.0 x 4.0 x 4.0 nanometer",
    ):
        assert text in info.stdout, text
    again = cli("convert", tmp_path / "s.tif", tmp_path / "v.zarr")
    one_line_error(again, "already exists", "--overwrite")
    assert (
        cli("convert", tmp_path / "s.tif", tmp_path / "v.zarr", "--overwrite", "--no-progress").exit_code == 0
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"chunks": (0, 64, 64)}, OptionError, "chunks"),
        ({"chunks": (1.5, 64, 64)}, OptionError, "integers"),
        ({"voxel_size": (50, 4)}, OptionError, "voxel_size"),
        ({"voxel_size": (50, float("nan"), 4)}, OptionError, "voxel_size"),
        ({"channel": -1}, OptionError, "--channel"),
        ({"unit": "parsec-ish"}, OptionError, "--unit"),
        ({"overwrite": True, "resume": True}, OptionError, "exclude each other"),
        ({"order": "natural"}, OptionError, "--order"),  # a single file has no order
    ],
)
def test_api_validates_arguments(tmp_path, kwargs, error, match):
    src = _stack(tmp_path / "s.tif", photometric="minisblack")
    with pytest.raises(error, match=match):
        convert(src, tmp_path / "v.zarr", **kwargs)
    assert not (tmp_path / "v.zarr").exists()


# ------------------------------------------------------------------------ bad input
def _stack(path: Path, n: int = 6, **kw) -> Path:
    tifffile.imwrite(path, np.arange(n * 64 * 64, dtype=np.uint16).reshape(n, 64, 64), **kw)
    return path


def test_cli_missing_path(tmp_path):
    one_line_error(cli("convert", tmp_path / "nope.tif", tmp_path / "v.zarr"), "nope.tif", "no such file")
    one_line_error(cli("convert", str(tmp_path / "*.tif"), tmp_path / "v.zarr"), "matches no files")
    assert not (tmp_path / "v.zarr").exists()


def test_cli_not_an_image(tmp_path, rng):
    (tmp_path / "noise.tif").write_bytes(rng.bytes(5000))
    one_line_error(
        cli("convert", tmp_path / "noise.tif", tmp_path / "v.zarr"), "noise.tif", "not a TIFF or PNG"
    )
    (tmp_path / "fake.tif").write_bytes(b"II*\0" + rng.bytes(5000))  # right magic, garbage after
    one_line_error(cli("convert", tmp_path / "fake.tif", tmp_path / "v.zarr"), "fake.tif")
    assert not (tmp_path / "v.zarr").exists()


@pytest.mark.parametrize(
    "writer",
    [
        {"photometric": "minisblack"},
        {"imagej": True, "metadata": {"axes": "ZYX"}},
        {"compression": "zlib", "photometric": "minisblack"},
    ],
)
def test_cli_truncated_tiff(tmp_path, writer):
    full = _stack(tmp_path / "full.tif", **writer).read_bytes()
    (tmp_path / "cut.tif").write_bytes(full[: len(full) // 2])
    one_line_error(cli("convert", tmp_path / "cut.tif", tmp_path / "v.zarr"), "cut.tif", "truncated")
    assert not looks_complete(tmp_path / "v.zarr")


def test_cli_damaged_page_mid_stack_leaves_output_incomplete(tmp_path):
    path = _stack(tmp_path / "z.tif", compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(path) as tf:
        offset, count = tf.pages[4].dataoffsets[0], tf.pages[4].databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = b"\xff" * count
    path.write_bytes(bytes(raw))
    line = one_line_error(
        cli("convert", path, tmp_path / "v.zarr", "--no-progress"), "section 4", "left incomplete"
    )
    assert "z.tif" in line
    vol = open_volume(tmp_path / "v.zarr")
    assert not vol.complete and vol.completion()["sections_done"] == 4


def test_cli_empty_folder_and_mismatched_sections(tmp_path, rng):
    (tmp_path / "empty").mkdir()
    one_line_error(cli("convert", tmp_path / "empty", tmp_path / "v.zarr"), "empty", "no .tif")
    (tmp_path / "shapes").mkdir()
    tifffile.imwrite(tmp_path / "shapes" / "1.tif", np.zeros((20, 30), np.uint8))
    tifffile.imwrite(tmp_path / "shapes" / "2.tif", np.zeros((20, 31), np.uint8))
    one_line_error(cli("convert", tmp_path / "shapes", tmp_path / "v.zarr"), "2.tif", "20 x 31", "same shape")
    (tmp_path / "dtypes").mkdir()
    tifffile.imwrite(tmp_path / "dtypes" / "1.tif", np.zeros((20, 30), np.uint8))
    Image.fromarray(np.zeros((20, 30), np.uint16)).save(tmp_path / "dtypes" / "2.png")
    one_line_error(cli("convert", tmp_path / "dtypes", tmp_path / "v.zarr"), "2.png", "uint16", "uint8")
    (tmp_path / "multi").mkdir()
    _stack(tmp_path / "multi" / "a.tif", photometric="minisblack")
    one_line_error(cli("convert", tmp_path / "multi", tmp_path / "v.zarr"), "a.tif", "one section per file")
    assert not (tmp_path / "v.zarr").exists()


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("--chunks", "1,512", "--chunks"),
        ("--chunks", "0,512,512", "--chunks"),
        ("--chunks", "a,b,c", "--chunks"),
        ("--voxel-size", "50,4", "--voxel-size"),
        ("--voxel-size", "50,-4,4", "--voxel-size"),
        ("--voxel-size", "fifty,4,4", "--voxel-size"),
        ("--unit", "furlong", "--unit"),
        ("--codec", "lzma", "--codec"),
        ("--order", "random", "--order"),
    ],
)
def test_cli_malformed_options(tmp_path, option, value, needle):
    src = _stack(tmp_path / "s.tif", photometric="minisblack") if option != "--order" else tmp_path
    if option == "--order":
        tifffile.imwrite(tmp_path / "1.tif", np.zeros((8, 8), np.uint8))
    one_line_error(cli("convert", src, tmp_path / "v.zarr", option, value), needle, value)
    assert not (tmp_path / "v.zarr").exists()


def test_cli_unwritable_output(tmp_path):
    src = _stack(tmp_path / "s.tif", photometric="minisblack")
    (tmp_path / "file").write_text("x")
    one_line_error(cli("convert", src, tmp_path / "file" / "v.zarr"), "v.zarr")
    one_line_error(cli("convert", src, src, "--overwrite"), "replace the source")
    assert src.exists()
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        one_line_error(cli("convert", src, tmp_path / "ro" / "v.zarr"), "not writable")
