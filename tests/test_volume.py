"""Volumes: OME-Zarr layout, metadata, completion record, pyramid, info."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from volseg.errors import InputError, OptionError, OutputError
from volseg.storage.volumes import create_volume, open_volume, parse_codec, volume_info


def _fill(vol, data):
    for b in vol.block_ids():
        vol.write_block(b, data[vol.block_region(b)])


@pytest.mark.parametrize("codec", ["blosc-zstd", "blosc-lz4:3", "zstd:1", "gzip", "none"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_roundtrip_codecs_dtypes(tmp_path, codec, dtype):
    rng = np.random.default_rng(0)
    data = (rng.random((5, 37, 61)) * 1000).astype(dtype)
    vol = create_volume(
        tmp_path / "v.zarr", data.shape, dtype, (2, 16, 32), codec=codec, voxel_size=(50, 4, 4)
    )
    _fill(vol, data)
    vol.mark_complete()
    back = open_volume(tmp_path / "v.zarr")
    np.testing.assert_array_equal(back.data.compute(), data)
    assert back.dtype == np.dtype(dtype)
    assert back.complete and back.voxel_size == (50.0, 4.0, 4.0)


def test_ome_metadata_shape(tmp_path):
    vol = create_volume(
        tmp_path / "v.zarr", (3, 20, 30), "uint8", (1, 20, 30), voxel_size=(50, 4, 4), unit="nanometer"
    )
    meta = json.loads((tmp_path / "v.zarr" / "zarr.json").read_text())
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert all(a["type"] == "space" and a["unit"] == "nanometer" for a in ms["axes"])
    assert ms["datasets"][0]["coordinateTransformations"] == [{"type": "scale", "scale": [50.0, 4.0, 4.0]}]
    arr_meta = json.loads((tmp_path / "v.zarr" / "0" / "zarr.json").read_text())
    assert arr_meta["dimension_names"] == ["z", "y", "x"]
    assert vol.meta["status"] == "incomplete"
    assert "versions" in vol.provenance and "command" in vol.provenance


def test_ome_zarr_models_accepts_volume(tmp_path):
    models = pytest.importorskip("ome_zarr_models.v05.image")
    vol = create_volume(tmp_path / "v.zarr", (4, 32, 48), "uint8", (1, 32, 32), voxel_size=(50, 4, 4))
    _fill(vol, np.ones(vol.shape, "uint8"))
    vol.mark_complete()
    vol.add_pyramid(2)
    image = models.Image.from_zarr(zarr.open_group(tmp_path / "v.zarr", mode="r"))
    ms = image.ome_attributes.multiscales[0]
    assert [d.path for d in ms.datasets] == ["0", "1", "2"]


def test_labels_get_image_label_metadata(tmp_path):
    vol = create_volume(tmp_path / "l.zarr", (2, 8, 8), "uint32", (1, 8, 8), kind="label")
    assert "image-label" in vol.group.attrs["ome"]


def test_completion_record_and_incomplete_status(tmp_path):
    vol = create_volume(tmp_path / "v.zarr", (4, 30, 30), "uint8", (1, 16, 16))
    assert vol.block_grid == (4, 2, 2)
    done = [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (2, 1, 1)]
    for b in done:
        vol.write_block(b, np.full([s.stop - s.start for s in vol.block_region(b)], 7, "uint8"))
    again = open_volume(tmp_path / "v.zarr", mode="r+")
    assert again.done_blocks() == set(done)
    comp = again.completion()
    assert comp["blocks_done"] == 5 and comp["blocks_total"] == 16
    assert comp["sections_done"] == 1 and comp["status"] == "incomplete"
    with pytest.raises(RuntimeError):
        again.mark_complete()
    assert not open_volume(tmp_path / "v.zarr").complete


def test_write_block_checks_shape(tmp_path):
    vol = create_volume(tmp_path / "v.zarr", (2, 30, 30), "uint8", (1, 16, 16))
    with pytest.raises(ValueError, match="needs shape"):
        vol.write_block((0, 1, 1), np.zeros((1, 16, 16), "uint8"))  # edge block is 14 x 14


def test_sharded_blocks_are_shards(tmp_path):
    data = np.arange(2 * 64 * 64, dtype="uint16").reshape(2, 64, 64)
    vol = create_volume(tmp_path / "s.zarr", data.shape, "uint16", (1, 16, 16), shards=(1, 32, 32))
    assert vol.block_shape == (1, 32, 32) and vol.block_grid == (2, 2, 2)
    _fill(vol, data)
    vol.mark_complete()
    np.testing.assert_array_equal(open_volume(tmp_path / "s.zarr").data.compute(), data)


def test_pyramid_levels(tmp_path):
    data = np.arange(3 * 40 * 50, dtype="float32").reshape(3, 40, 50)
    vol = create_volume(tmp_path / "p.zarr", data.shape, "float32", (1, 16, 16), voxel_size=(50, 4, 4))
    _fill(vol, data)
    vol.add_pyramid(2)
    back = open_volume(tmp_path / "p.zarr")
    assert back.levels == ["0", "1", "2"]
    lvl1 = back.to_dask(1).compute()
    np.testing.assert_allclose(lvl1, data.reshape(3, 20, 2, 25, 2).mean(axis=(2, 4)))
    assert back.level(2).shape == (3, 10, 13)
    ms = back.group.attrs["ome"]["multiscales"][0]
    assert ms["datasets"][2]["coordinateTransformations"][0]["scale"] == [50.0, 16.0, 16.0]


def test_existing_output_refused_then_overwritten(tmp_path):
    create_volume(tmp_path / "v.zarr", (1, 4, 4), "uint8", (1, 4, 4))
    with pytest.raises(OutputError, match="--overwrite"):
        create_volume(tmp_path / "v.zarr", (1, 4, 4), "uint8", (1, 4, 4))
    create_volume(tmp_path / "v.zarr", (1, 8, 8), "uint8", (1, 4, 4), overwrite=True)
    assert open_volume(tmp_path / "v.zarr").shape == (1, 8, 8)


def test_overwrite_refuses_non_zarr_folder(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("x")
    with pytest.raises(OutputError, match="not a Zarr volume"):
        create_volume(tmp_path / "precious", (1, 4, 4), "uint8", (1, 4, 4), overwrite=True)
    assert (tmp_path / "precious" / "thesis.txt").exists()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: None, "no such volume"),
        (lambda p: p.mkdir(), "not a Zarr v3 volume"),
        (lambda p: zarr.open_group(p, mode="w", zarr_format=3), "not an OME-Zarr volume"),
        (lambda p: zarr.create_array(p, shape=(2, 2), dtype="uint8"), "bare Zarr array"),
    ],
)
def test_open_bad_inputs(tmp_path, make, match):
    p = tmp_path / "bad.zarr"
    make(p)
    with pytest.raises(InputError, match=match):
        open_volume(p)


@pytest.mark.parametrize("spec", ["lzma", "zstd:x", "blosc-zstd:12"])
def test_bad_codec(spec):
    with pytest.raises(OptionError, match="--codec"):
        parse_codec(spec)


def test_info_reports_sizes(tmp_path):
    vol = create_volume(tmp_path / "v.zarr", (2, 64, 64), "uint8", (1, 64, 64))
    _fill(vol, np.zeros(vol.shape, "uint8") + 3)
    vol.mark_complete()
    info = volume_info(tmp_path / "v.zarr")
    assert info["raw_bytes"] == 2 * 64 * 64
    assert 0 < info["stored_bytes"] < info["raw_bytes"]
    assert info["completion"]["status"] == "complete" and info["codec"].startswith("blosc-zstd")


def test_overwrite_never_deletes_a_regular_file(tmp_path):
    precious = tmp_path / "results.zarr"
    precious.write_text("not a volume")
    with pytest.raises(OutputError, match="not a Zarr volume"):
        create_volume(precious, (1, 4, 4), "uint8", (1, 4, 4), overwrite=True)
    assert precious.read_text() == "not a volume"


def test_output_under_a_file_names_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(OutputError, match="notes.txt is a file, not a folder"):
        create_volume(tmp_path / "notes.txt" / "sub" / "v.zarr", (1, 4, 4), "uint8", (1, 4, 4))
