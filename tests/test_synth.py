"""Synthetic EM stacks: deterministic, chunk-independent bit for bit, labels that match the image."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import ndimage as ndi
from typer.testing import CliRunner

from volseg.app.cli import app
from volseg.core.synth import INTERIOR, MEMBRANE, SynthParams, synth_block
from volseg.errors import OptionError, OutputError
from volseg.stages.synth import SynthResult, synth
from volseg.storage.conventions import Convention, truth_membrane_values
from volseg.storage.volumes import open_volume

SHAPE = (4, 230, 150)


@pytest.fixture(scope="module")
def whole() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return synth_block(SHAPE, seed=11)


@pytest.fixture(scope="module")
def stack() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return synth_block((6, 256, 256), seed=3)


def _read(out) -> list[np.ndarray]:
    return [
        np.asarray(open_volume(out / name).array[...])
        for name in ("image.zarr", "cells.zarr", "membranes.zarr")
    ]


def test_dtypes_and_values(whole):
    image, cells, membranes = whole
    assert image.shape == cells.shape == membranes.shape == SHAPE
    assert (image.dtype, cells.dtype, membranes.dtype) == (np.uint8, np.uint32, np.uint8)
    assert set(np.unique(membranes)) == {MEMBRANE, INTERIOR}
    assert cells.min() >= 1  # a complete partition: no background
    assert 20 < image.std() < 80  # EM-like contrast, not flat and not saturated


def test_same_seed_same_bytes_other_seed_differs(whole):
    again = synth_block(SHAPE, seed=11)
    for a, b in zip(whole, again, strict=True):
        assert np.array_equal(a, b)
    other = synth_block(SHAPE, seed=12)
    assert np.mean(other[0] != whole[0]) > 0.9
    assert np.mean(other[2] != whole[2]) > 0.1


@pytest.mark.parametrize(("chunks", "workers"), [((1, 64, 64), 1), ((3, 200, 100), 2)])
def test_chunked_volume_equals_whole_generation(tmp_path, whole, chunks, workers):
    result = synth(tmp_path / "s", shape=SHAPE, seed=11, chunks=chunks, workers=workers)
    assert result.shape == SHAPE
    for name, stored, ref in zip(("image", "cells", "membranes"), _read(tmp_path / "s"), whole, strict=True):
        assert np.array_equal(stored, ref), f"{name} differs with chunks {chunks}"


def test_any_sub_block_equals_its_crop(whole):
    for offset, size in [((1, 37, 51), (2, 61, 45)), ((3, 0, 149), (1, 230, 1)), ((0, 229, 0), (4, 1, 150))]:
        block = synth_block(size, seed=11, offset=offset, full_shape=SHAPE)
        crop = tuple(slice(o, o + s) for o, s in zip(offset, size, strict=True))
        for a, b in zip(block, whole, strict=True):
            assert np.array_equal(a, b[crop])


def _boundaries(ids: np.ndarray) -> np.ndarray:
    """Pixels 4-adjacent to a different cell id."""
    b = np.zeros(ids.shape, bool)
    for axis in (0, 1):
        diff = np.diff(ids, axis=axis) != 0
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        b[tuple(lo)] |= diff
        b[tuple(hi)] |= diff
    return b


def test_membranes_are_the_dilated_cell_boundaries(stack):
    _, cells, membranes = stack
    for ids, mem in zip(cells, membranes == MEMBRANE, strict=True):
        edge = _boundaries(ids)
        assert np.mean(mem[edge]) > 0.995  # every boundary is drawn ...
        far = ndi.distance_transform_edt(~edge)[12:-12, 12:-12]
        assert far[mem[12:-12, 12:-12]].max() <= 14  # ... and nothing else (widths, rounded junctions)
        interior, n = ndi.label(~mem)
        owners = ndi.maximum(ids, interior, np.arange(1, n + 1)) != ndi.minimum(
            ids, interior, np.arange(1, n + 1)
        )
        assert not owners.any(), "an interior region spans two cells: a membrane has a gap"


def test_membranes_are_dark_in_the_image(stack):
    image, _, membranes = stack
    mem = image[membranes == MEMBRANE].mean()
    cell = image[membranes == INTERIOR].mean()
    assert mem < 0.75 * cell, (mem, cell)


def test_membrane_fraction_near_isbi(stack):
    fraction = np.mean(stack[2] == MEMBRANE)
    assert 0.12 < fraction < 0.32  # ISBI 2012 train labels: 0.2196


def test_cells_drift_slowly(stack):
    from skimage.metrics import adapted_rand_error

    cells = stack[1].astype(np.int64)
    for z in range(cells.shape[0] - 1):
        error, _, _ = adapted_rand_error(cells[z], cells[z + 1])
        assert 1 - error > 0.7, f"sections {z} and {z + 1} share too little"
    assert np.mean(cells[0] != cells[-1]) > 0.02  # ... but they do move


def test_cells_are_sized_like_isbi_neurites(stack):
    _, cells, _ = stack
    sizes = np.bincount(cells[0].ravel())
    sizes = sizes[sizes > 0]
    diameters = 2 * np.sqrt(sizes / np.pi)
    assert 25 < np.median(diameters) < 110
    assert 10 < sizes.size < 80  # cells in a 256 x 256 section


def test_bad_arguments_are_option_errors(tmp_path):
    with pytest.raises(OptionError, match="shape"):
        synth_block((0, 10, 10))
    with pytest.raises(OptionError, match="seed"):
        synth_block((1, 10, 10), seed=-1)
    with pytest.raises(OptionError, match="does not fit"):
        synth_block((1, 10, 10), offset=(0, 5, 0), full_shape=(1, 10, 10))
    with pytest.raises(OptionError, match="cell_size"):
        synth_block((1, 10, 10), params=SynthParams(cell_size=3))
    synth(tmp_path / "s", shape=(1, 16, 16))
    with pytest.raises(OutputError, match="--overwrite"):
        synth(tmp_path / "s", shape=(1, 16, 16))
    synth(tmp_path / "s", shape=(1, 16, 16), overwrite=True)


def test_result_progress_and_recorded_convention(tmp_path):
    updates = []
    result = synth(tmp_path / "s", shape=(2, 40, 30), seed=1, chunks=(1, 40, 16), progress=updates.append)
    assert isinstance(result, SynthResult)
    data = result.to_dict()
    assert data == json.loads(json.dumps(data))  # plain JSON data
    assert data["membranes"] == str(tmp_path / "s" / "membranes.zarr") and data["shape"] == [2, 40, 30]
    assert data["mvox_per_s"] == result.mvox_per_s
    assert [(u.done, u.total, u.unit) for u in updates] == [(n, 4, "chunks") for n in range(5)] + [
        (4, 4, "chunks")
    ]
    assert updates[-1].finished and not any(u.finished for u in updates[:-1])
    membranes = open_volume(result.membranes)
    convention = Convention.from_dict(membranes.meta["convention"])
    assert convention.foreground == (MEMBRANE,) and convention.foreground_kind == "boundary"
    assert convention.scale == pytest.approx(1 / 255) and convention.offset == 0
    assert truth_membrane_values(membranes) == (MEMBRANE,)


def test_cli_writes_three_complete_volumes(tmp_path):
    runner = CliRunner()
    out = tmp_path / "synth"
    result = runner.invoke(
        app, ["synth", str(out), "--shape", "2,96,80", "--seed", "4", "--chunks", "1,48,48"]
    )
    assert result.exit_code == 0, result.output
    volumes = [open_volume(out / n) for n in ("image.zarr", "cells.zarr", "membranes.zarr")]
    assert [v.kind for v in volumes] == ["image", "label", "mask"]
    for vol in volumes:
        assert vol.complete and vol.shape == (2, 96, 80) and vol.voxel_size == (50.0, 4.0, 4.0)
        assert vol.meta["synth"]["seed"] == 4
    assert volumes[2].meta["label_convention"] == {"255": "cell interior", "0": "membrane"}
    for stored, ref in zip(_read(out), synth_block((2, 96, 80), seed=4), strict=True):
        assert np.array_equal(stored, ref)


@pytest.mark.parametrize("shape", ["2,96", "a,b,c", "0,64,64"])
def test_cli_bad_shape_is_one_line_exit_2(tmp_path, shape):
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "s"), "--shape", shape])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("volseg: error:") and "--shape" in lines[0]
    assert not (tmp_path / "s").exists()


def test_generation_is_independent_of_block_order():
    # blocks generated in a scrambled order, as dask workers would, still tile the whole
    full = (2, 70, 90)
    ref = synth_block(full, seed=5)
    blocks = list(itertools.product(range(2), range(0, 70, 32), range(0, 90, 40)))
    out = np.empty(full, np.uint8)
    for z, y, x in reversed(blocks):
        size = (1, min(32, 70 - y), min(40, 90 - x))
        out[z, y : y + size[1], x : x + size[2]] = synth_block(size, 5, (z, y, x), full)[0][0]
    assert np.array_equal(out, ref[0])
