"""segment: toy configurations, chunked == whole array, 3-D labels across chunk borders, resume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.metrics import adapted_rand_error
from skimage.segmentation import find_boundaries
from support import same_partition, write_volume
from typer.testing import CliRunner

import volseg.stages.segment.passes as seg
from volseg.app.cli import app
from volseg.core.segmentation import label_dtype, segment_array, segment_section
from volseg.errors import IncompleteRunError, InputError, OptionError, OutputError
from volseg.stages.segment import SegmentOptions, segment
from volseg.storage.volumes import create_volume, open_volume

runner = CliRunner()


def _write(path, data, chunks, kind="probability", **extra):
    return write_volume(path, data, chunks, kind, voxel_size=(50, 4, 4), extra=extra or None)


def _toy_cells(shape, n_cells, seed):
    """Voronoi cells per section with 2-pixel membranes: (truth cells, membrane probability uint8)."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    cells = np.zeros(shape, np.uint32)
    prob = np.zeros(shape, np.float32)
    for k in range(z):
        pts = np.zeros((y, x), np.int32)
        coords = rng.integers(0, [y, x], size=(n_cells, 2))
        pts[coords[:, 0], coords[:, 1]] = np.arange(1, n_cells + 1)
        _, (iy, ix) = ndi.distance_transform_edt(pts == 0, return_indices=True)
        voronoi = pts[iy, ix]
        membrane = find_boundaries(voronoi, mode="thick")
        cells[k] = np.where(membrane, 0, voronoi + k * n_cells)
        prob[k] = np.clip(membrane * 0.9 + rng.normal(0, 0.08, (y, x)), 0, 1)
    return cells, (prob * 255).astype(np.uint8)


# ----------------------------------------------------------------- pure functions
@pytest.mark.parametrize(
    "opts", [SegmentOptions(), SegmentOptions(seeds="distance"), SegmentOptions(method="cc")]
)
def test_two_cells_split_by_a_membrane_are_two_labels(opts):
    boundary = np.zeros((40, 60), np.float32)
    boundary[:, 29:31] = 1.0
    labels = segment_section(boundary, opts)
    assert labels.dtype == np.uint32
    left, right = np.unique(labels[:, :25]), np.unique(labels[:, 35:])
    assert len(left) == len(right) == 1 and left[0] != right[0] and 0 not in (left[0], right[0])
    assert set(np.unique(labels)) <= {0, left[0], right[0]}


def test_small_segments_go_to_their_neighbours():
    boundary = np.zeros((40, 40), np.float32)
    boundary[:, 19:21] = 1.0
    boundary[5:9, 5:9] = 1.0  # a membrane ring ...
    boundary[6:8, 6:8] = 0.0  # ... around a 2x2 pocket, far below min_size
    keep = segment_section(boundary, SegmentOptions(sigma=0, seeds="hminima", min_size=1))
    assert len(np.unique(keep)) == 3
    labels = segment_section(boundary, SegmentOptions(sigma=0, seeds="hminima", min_size=20))
    assert len(np.unique(labels)) == 2 and labels.min() > 0 and labels[7, 7] == labels[0, 0]


def test_toy_stack_recovers_known_cells():
    # Small cells (~27 px) whose thin membranes have gaps after smoothing: the h-minima seeds'
    # case (distance seeds merge small cells across gaps; docs/segment.md, "Choosing the options").
    truth, prob = _toy_cells((3, 96, 96), 12, seed=1)
    labels = segment_array(prob / 255.0, SegmentOptions(seeds="hminima", keep_boundaries=True))
    error, _, _ = adapted_rand_error(truth, labels)
    assert error < 0.01
    flooded = segment_array(prob / 255.0, SegmentOptions(seeds="hminima"))
    assert adapted_rand_error(truth, flooded)[0] < 0.01


@pytest.mark.parametrize("seeds", ["hminima", "distance"])
def test_synthetic_em_cells_are_recovered(tmp_path, seeds):
    import volseg

    stack = volseg.synth(tmp_path, shape=(2, 160, 160), seed=3)
    membrane = open_volume(stack.membranes).data.compute() == 0
    truth = np.stack(
        [ndi.label(~m, ndi.generate_binary_structure(2, 1))[0] + 1000 * z for z, m in enumerate(membrane)]
    )
    truth[membrane] = 0
    rng = np.random.default_rng(0)  # a soft, noisy membrane map like a U-Net's
    boundary = np.clip(
        ndi.gaussian_filter(membrane * 1.3, (0, 1.5, 1.5)) + rng.normal(0, 0.15, truth.shape), 0, 1
    )
    labels = segment_array(boundary, SegmentOptions(seeds=seeds))
    assert adapted_rand_error(truth, labels)[0] < 0.01


def test_label_dtype_grows_with_the_id_space():
    assert label_dtype(512 * 512 * 30) == np.uint32
    assert label_dtype(2**32) == np.uint64


def test_bad_options_name_the_option():
    with pytest.raises(OptionError, match="--threshold"):
        SegmentOptions(threshold=1.5)
    with pytest.raises(OptionError, match="--mode"):
        SegmentOptions(mode="4d")
    with pytest.raises(OptionError, match="--scheduler"):
        segment("missing.zarr", "out.zarr", scheduler="gpu")


# --------------------------------------------------------------------- blockwise
@pytest.mark.parametrize("relabel", [False, True])
def test_2d_chunked_equals_whole_array(tmp_path, relabel):
    _, prob = _toy_cells((5, 70, 90), 9, seed=2)
    _write(tmp_path / "p.zarr", prob, (2, 32, 32))
    opts = SegmentOptions(relabel=relabel)
    info = segment(tmp_path / "p.zarr", tmp_path / "c.zarr", options=opts, chunks=(2, 24, 40))
    out = open_volume(tmp_path / "c.zarr")
    np.testing.assert_array_equal(out.data.compute(), segment_array(prob / 255.0, opts))
    assert out.complete and out.kind == "label" and out.dtype == np.uint32
    assert "image-label" in out.group.attrs["ome"] and out.voxel_size == (50.0, 4.0, 4.0)
    assert info.ids == ("consecutive" if relabel else "sparse")
    assert not (tmp_path / "c.zarr" / ".volseg" / "segment").exists()  # scratch removed


def test_3d_labels_are_consistent_across_chunk_borders(tmp_path):
    interior = np.zeros((12, 40, 40), bool)
    interior[1:11, 3:37, 18:22] = True  # one bar through 2 x 2 x 1 chunks ...
    interior[5:7, 18:22, 3:37] = True  # ... crossed by another: one object in 4 chunks
    rng = np.random.default_rng(3)
    interior |= ndi.binary_opening(rng.random(interior.shape) > 0.55)  # many small blobs
    prob = np.where(interior, 20, 230).astype(np.uint8)
    _write(tmp_path / "p.zarr", prob, (6, 20, 20))
    segment(tmp_path / "p.zarr", tmp_path / "c.zarr", options=SegmentOptions(mode="3d", sigma=0, min_size=0))
    labels = open_volume(tmp_path / "c.zarr").data.compute()
    reference, n = ndi.label(interior)
    assert same_partition(labels, reference)
    assert labels.max() == n and len(np.unique(labels)) == n + 1  # consecutive ids
    cross = labels[1:11, 3:37, 18:22]
    assert len(np.unique(cross)) == 1 and cross.min() > 0


def test_3d_size_filter_and_smoothing_match_whole_array(tmp_path):
    rng = np.random.default_rng(4)
    prob = (ndi.gaussian_filter(rng.random((8, 50, 45)), (0, 2, 2)) * 255).astype(np.uint8)
    _write(tmp_path / "p.zarr", prob, (3, 16, 16))
    opts = SegmentOptions(mode="3d", sigma=1.5, min_size=30, threshold=0.48)
    segment(tmp_path / "p.zarr", tmp_path / "c.zarr", options=opts)
    labels = open_volume(tmp_path / "c.zarr").data.compute()
    reference = segment_array(prob / 255.0, opts)
    assert same_partition(labels, reference)
    assert np.bincount(labels.ravel())[1:].min() >= 30


# ------------------------------------------------------------------------ resume
@pytest.mark.parametrize("mode,relabel", [("2d", False), ("2d", True), ("3d", False)])
def test_resume_after_a_crash_is_identical(tmp_path, monkeypatch, mode, relabel):
    _, prob = _toy_cells((6, 48, 48), 6, seed=5)
    _write(tmp_path / "p.zarr", prob, (1, 24, 24))
    opts = SegmentOptions(mode=mode, relabel=relabel, sigma=0.5)
    segment(tmp_path / "p.zarr", tmp_path / "clean.zarr", options=opts)

    real = seg._label_unit
    calls = []

    def flaky(prob_vol, convert, unit, o):
        calls.append(unit.index)
        if len(calls) % 3 == 0:
            raise RuntimeError("simulated crash")
        return real(prob_vol, convert, unit, o)

    monkeypatch.setattr(seg, "_label_unit", flaky)
    with pytest.raises(IncompleteRunError, match="rerun"):
        segment(tmp_path / "p.zarr", tmp_path / "c.zarr", options=opts, scheduler="synchronous")
    assert not open_volume(tmp_path / "c.zarr").complete
    first = len(calls)
    calls.clear()
    monkeypatch.setattr(seg, "_label_unit", lambda *a: (calls.append(a[2].index), real(*a))[1])
    segment(tmp_path / "p.zarr", tmp_path / "c.zarr", options=opts, resume=True)
    assert len(calls) == first // 3  # exactly the failed units are redone
    np.testing.assert_array_equal(
        open_volume(tmp_path / "c.zarr").data.compute(), open_volume(tmp_path / "clean.zarr").data.compute()
    )


def test_crash_in_the_second_pass_resumes(tmp_path, monkeypatch):
    _, prob = _toy_cells((4, 40, 40), 5, seed=6)
    _write(tmp_path / "p.zarr", prob, (2, 20, 20))
    opts = SegmentOptions(mode="3d")
    segment(tmp_path / "p.zarr", tmp_path / "clean.zarr", options=opts)
    real = seg._pass2_task
    monkeypatch.setattr(
        seg,
        "_pass2_task",
        lambda out, s, b, *a: (_ for _ in ()).throw(OSError("disk")) if b[1] == 1 else real(out, s, b, *a),
    )
    with pytest.raises(IncompleteRunError):
        segment(tmp_path / "p.zarr", tmp_path / "c.zarr", options=opts)
    monkeypatch.setattr(seg, "_pass2_task", real)
    info = segment(tmp_path / "p.zarr", tmp_path / "c.zarr", options=opts, resume=True)
    assert info.resumed_blocks > 0
    np.testing.assert_array_equal(
        open_volume(tmp_path / "c.zarr").data.compute(), open_volume(tmp_path / "clean.zarr").data.compute()
    )


def test_existing_output_needs_resume_or_overwrite(tmp_path):
    _, prob = _toy_cells((2, 32, 32), 4, seed=7)
    _write(tmp_path / "p.zarr", prob, (1, 32, 32))
    segment(tmp_path / "p.zarr", tmp_path / "c.zarr")
    with pytest.raises(OutputError, match="--overwrite"):
        segment(tmp_path / "p.zarr", tmp_path / "c.zarr")
    assert segment(tmp_path / "p.zarr", tmp_path / "c.zarr", resume=True).resumed_blocks == 2  # nothing to do
    with pytest.raises(OutputError, match="threshold"):
        segment(tmp_path / "p.zarr", tmp_path / "c.zarr", options=SegmentOptions(threshold=0.3), resume=True)
    segment(tmp_path / "p.zarr", tmp_path / "c.zarr", options=SegmentOptions(threshold=0.3), overwrite=True)
    with pytest.raises(OptionError, match="exclude"):
        segment(tmp_path / "p.zarr", tmp_path / "c.zarr", overwrite=True, resume=True)


def test_result_and_progress(tmp_path):
    _, prob = _toy_cells((2, 32, 32), 4, seed=14)
    _write(tmp_path / "p.zarr", prob, (1, 32, 32))
    updates = []
    result = segment(tmp_path / "p.zarr", tmp_path / "c.zarr", progress=updates.append)
    assert {u.task for u in updates} == {"segment"}
    assert [u.message for u in updates if u.message] == ["labelling 2 of 2 sections bands"]
    assert updates[-1].finished and updates[-1].done == updates[-1].total == result.blocks == 2
    assert result.to_dict() == {
        "path": result.path,
        "mode": "2d",
        "ids": "sparse",
        "labels": 2 * 32 * 32,
        "dtype": "uint32",
        "blocks": 2,
        "resumed_blocks": 0,
    }
    updates.clear()
    again = segment(tmp_path / "p.zarr", tmp_path / "c.zarr", resume=True, progress=updates.append)
    assert again.resumed_blocks == 2 and [u.message for u in updates if u.message] == ["already complete"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        again.labels = 0


def test_incomplete_input_is_refused(tmp_path):
    create_volume(tmp_path / "p.zarr", (1, 8, 8), "uint8", (1, 8, 8), kind="probability")
    with pytest.raises(InputError, match="incomplete"):
        segment(tmp_path / "p.zarr", tmp_path / "c.zarr")


# ---------------------------------------------------------------- input conventions
def test_cell_probability_float_and_mask_inputs(tmp_path):
    _, prob = _toy_cells((2, 48, 48), 5, seed=8)
    expected = segment_array(prob / 255.0, SegmentOptions(method="cc"))
    cellprob = (1.0 - prob / 255.0).astype(np.float32)
    model = {
        "foreground": [255],
        "label_convention": "probability of labels in [255] (objects: membrane probability = 1 - p)",
    }  # what 'volseg predict' records from an object model
    _write(tmp_path / "f.zarr", cellprob, (1, 48, 48), predict={"model": model})
    segment(tmp_path / "f.zarr", tmp_path / "a.zarr", options=SegmentOptions(method="cc"))
    np.testing.assert_array_equal(open_volume(tmp_path / "a.zarr").data.compute(), expected)
    _write(tmp_path / "g.zarr", cellprob, (1, 48, 48))  # no record: --invert says it
    segment(tmp_path / "g.zarr", tmp_path / "b.zarr", options=SegmentOptions(method="cc", invert=True))
    np.testing.assert_array_equal(open_volume(tmp_path / "b.zarr").data.compute(), expected)
    mask = np.where(prob > 127, 0, 255).astype(np.uint8)  # ISBI-like: 255 = interior
    _write(tmp_path / "m.zarr", mask, (1, 48, 48), kind="mask")
    segment(
        tmp_path / "m.zarr", tmp_path / "c.zarr", options=SegmentOptions(method="cc", sigma=0, invert=True)
    )
    np.testing.assert_array_equal(open_volume(tmp_path / "c.zarr").data.compute() > 0, mask > 0)


def test_label_input_is_refused(tmp_path):
    _write(tmp_path / "l.zarr", np.ones((1, 8, 8), np.uint32), (1, 8, 8), kind="label")
    with pytest.raises(InputError, match="label volume"):
        segment(tmp_path / "l.zarr", tmp_path / "c.zarr")


# ---------------------------------------------------------------------------- CLI
def test_cli_segment(tmp_path):
    _, prob = _toy_cells((2, 40, 40), 5, seed=9)
    _write(tmp_path / "p.zarr", prob, (1, 40, 40))
    result = runner.invoke(
        app,
        [
            "segment",
            str(tmp_path / "p.zarr"),
            str(tmp_path / "c.zarr"),
            "--mode",
            "3d",
            "--min-size",
            "10",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["mode"] == "3d"
    again = runner.invoke(
        app, ["segment", str(tmp_path / "p.zarr"), str(tmp_path / "c.zarr"), "--mode", "2d"]
    )
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    bad = runner.invoke(
        app, ["segment", str(tmp_path / "p.zarr"), str(tmp_path / "d.zarr"), "--threshold", "2"]
    )
    assert bad.exit_code == 2 and "--threshold" in bad.stderr
    missing = runner.invoke(app, ["segment", str(tmp_path / "none.zarr"), str(tmp_path / "e.zarr")])
    assert missing.exit_code == 2 and "none.zarr" in missing.stderr


def test_cli_defaults_are_the_api_defaults():
    import inspect

    from volseg.app.commands.segment import segment_cmd

    defaults = SegmentOptions().record()
    params = inspect.signature(segment_cmd).parameters
    for name, value in defaults.items():
        default = params[name].default
        assert getattr(default, "value", default) == value, name


# ------------------------------------------------------------- what segment accepts
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_raw_em_image_is_refused(tmp_path, dtype):
    # raw EM has dark membranes and bright cells: taken as membrane probabilities it gives nonsense
    _write(tmp_path / "i.zarr", np.full((1, 16, 16), 120, dtype), (1, 16, 16), kind="image")
    with pytest.raises(InputError, match="image .*volume.*volseg predict.*--input-kind"):
        segment(tmp_path / "i.zarr", tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()
    result = runner.invoke(app, ["segment", str(tmp_path / "i.zarr"), str(tmp_path / "c.zarr")])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "--input-kind" in lines[0]
    assert not (tmp_path / "c.zarr").exists()


def test_unrecorded_kind_is_refused_unless_input_kind_says(tmp_path):
    _, prob = _toy_cells((2, 40, 40), 5, seed=10)
    _write(tmp_path / "p.zarr", prob, (1, 40, 40))
    foreign = open_volume(tmp_path / "p.zarr", mode="r+")  # another tool wrote it: no volseg block
    del foreign.group.attrs["volseg"]
    with pytest.raises(InputError, match="unrecorded kind.*--input-kind"):
        segment(tmp_path / "p.zarr", tmp_path / "c.zarr")
    segment(tmp_path / "p.zarr", tmp_path / "c.zarr", input_kind="probability")
    np.testing.assert_array_equal(
        open_volume(tmp_path / "c.zarr").data.compute(), segment_array(prob / 255.0, SegmentOptions())
    )


def test_input_kind_says_what_an_image_volume_holds(tmp_path):
    # probabilities from another tool, converted to zarr (recorded as an image)
    _, prob = _toy_cells((2, 40, 40), 5, seed=11)
    _write(tmp_path / "p.zarr", prob, (1, 40, 40), kind="image")
    result = runner.invoke(
        app,
        ["segment", str(tmp_path / "p.zarr"), str(tmp_path / "c.zarr"), "--input-kind", "probability"],
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(
        open_volume(tmp_path / "c.zarr").data.compute(), segment_array(prob / 255.0, SegmentOptions())
    )
    mask = (prob > 127).astype(np.uint8) * 7  # a mask stored as 0 / 7: on wherever non-zero
    _write(tmp_path / "m.zarr", mask, (1, 40, 40), kind="image")
    opts = SegmentOptions(method="cc", sigma=0)
    segment(tmp_path / "m.zarr", tmp_path / "d.zarr", options=opts, input_kind="mask")
    np.testing.assert_array_equal(
        open_volume(tmp_path / "d.zarr").data.compute(), segment_array(mask > 0, opts)
    )
    with pytest.raises(OptionError, match="--input-kind"):
        segment(tmp_path / "m.zarr", tmp_path / "e.zarr", input_kind="image")


def _tree(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*"))


def test_output_that_is_inside_or_holds_the_input_is_refused_before_anything(tmp_path):
    _, prob = _toy_cells((2, 32, 32), 4, seed=12)
    _write(tmp_path / "data" / "p.zarr", prob, (1, 32, 32))
    (tmp_path / "link.zarr").symlink_to(tmp_path / "data" / "p.zarr")
    before = _tree(tmp_path / "data")
    for out in (
        tmp_path / "data" / "p.zarr",
        tmp_path / "link.zarr",
        tmp_path / "data" / "p.zarr" / "cells.zarr",
        tmp_path / "data",
    ):
        for flags in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(OutputError, match="input"):
                segment(tmp_path / "data" / "p.zarr", out, **flags)
            assert _tree(tmp_path / "data") == before
    result = runner.invoke(
        app, ["segment", str(tmp_path / "link.zarr"), str(tmp_path / "data"), "--overwrite"]
    )
    assert result.exit_code == 2 and "input" in result.stderr
    assert _tree(tmp_path / "data") == before


def test_labels_carry_the_input_translation(tmp_path):
    _, prob = _toy_cells((3, 40, 48), 6, seed=13)
    _write(tmp_path / "p.zarr", prob, (1, 40, 48))
    vol = open_volume(tmp_path / "p.zarr", mode="r+")
    ome = dict(vol.group.attrs["ome"])
    ome["multiscales"][0]["datasets"][0]["coordinateTransformations"].append(
        {"type": "translation", "translation": [100.0, 32.0, 40.0]}
    )
    vol.group.attrs.update({"ome": ome})
    for mode in ("2d", "3d"):
        segment(tmp_path / "p.zarr", tmp_path / f"{mode}.zarr", options=SegmentOptions(mode=mode))
        cells = open_volume(tmp_path / f"{mode}.zarr")
        transforms = cells.group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
        assert transforms == [
            {"type": "scale", "scale": [50.0, 4.0, 4.0]},
            {"type": "translation", "translation": [100.0, 32.0, 40.0]},
        ]
        assert "image-label" in cells.group.attrs["ome"] and cells.complete
