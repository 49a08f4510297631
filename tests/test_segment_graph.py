"""``segment --method agglo``: affinity volumes (c, z, y, x), fragments and agglomeration with global ids.

References: the truth the affinities were made from (adapted Rand error 0 on clean and noisy affinities),
cells worked out by hand, and the same labels bit for bit from other block sizes and from one block
holding the whole volume (:mod:`volseg.core.blockgraph`'s claim).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from volseg.app.cli import app
from volseg.core import blockgraph
from volseg.core.affinities import affinities
from volseg.core.agglomeration import mutex_watershed
from volseg.core.metrics import Contingency
from volseg.errors import IncompleteRunError, InputError, OptionError
from volseg.stages.segment import SegmentOptions, segment
from volseg.stages.segment import graph as graph_stage
from volseg.storage.volumes import create_volume, open_volume, volume_info

OFFSETS = [(0, -1, 0), (0, 0, -1), (-1, 0, 0), (0, -3, 0)]


def _cells(shape=(6, 60, 70), n=25, seed=0, z_step=8.0):
    """3-D Voronoi cells touching without membranes (ids 1..n)."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    pts = rng.random((n, 3)) * (z * z_step, y, x)
    zz, yy, xx = np.meshgrid(np.arange(z) * z_step, np.arange(y), np.arange(x), indexing="ij")
    d = (zz[..., None] - pts[:, 0]) ** 2 + (yy[..., None] - pts[:, 1]) ** 2 + (xx[..., None] - pts[:, 2]) ** 2
    return (np.argmin(d, -1) + 1).astype(np.uint32)


def _affs(labels, offsets=OFFSETS, noise=0.0, seed=1):
    targets, _ = affinities(labels, offsets)
    a = targets.astype(np.float64) * 255
    if noise:
        a = a + np.random.default_rng(seed).normal(0, noise * 255, a.shape)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _write(path, affs, offsets=OFFSETS, chunks=(2, 32, 32), record_offsets=True, complete=True):
    extra = {"offsets": [list(o) for o in offsets]} if record_offsets else {}
    vol = create_volume(
        path, affs.shape[1:], affs.dtype, chunks, channels=affs.shape[0], kind="affinity",
        voxel_size=(50, 4, 4), extra=extra,
    )  # fmt: skip
    for b in vol.block_ids():
        vol.write_block(b, affs[(slice(None), *vol.block_region(b))])
    if complete:
        vol.mark_complete()
    return vol


def _labels(path):
    return np.asarray(open_volume(path).array[:])


def _same_partition(a, b):
    """Equal up to renaming (and 0 stays 0)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return np.unique(pairs[0]).size == pairs.shape[1] == np.unique(pairs[1]).size and np.array_equal(
        a == 0, b == 0
    )


# ------------------------------------------------------------------------- channel volumes
def test_channel_volume_metadata_and_refusal(tmp_path):
    affs = _affs(_cells((4, 20, 30), n=6))
    vol = _write(tmp_path / "a.zarr", affs, chunks=(2, 16, 16))
    again = open_volume(tmp_path / "a.zarr", channels=True)
    assert again.channels == 4 and again.shape == (4, 20, 30) and again.chunks == (2, 16, 16)
    assert again.voxel_size == (50.0, 4.0, 4.0) and again.complete
    np.testing.assert_array_equal(np.asarray(again.array[:]), affs)
    attrs = json.loads((tmp_path / "a.zarr" / "zarr.json").read_text())["attributes"]["ome"]
    ms = attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"] and ms["axes"][0]["type"] == "channel"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 50.0, 4.0, 4.0]
    meta = json.loads((tmp_path / "a.zarr" / "0" / "zarr.json").read_text())
    assert meta["dimension_names"] == ["c", "z", "y", "x"] and meta["shape"] == [4, 4, 20, 30]
    info = volume_info(tmp_path / "a.zarr")
    assert info["channels"] == 4 and info["completion"]["blocks_done"] == vol.n_blocks
    with pytest.raises(InputError, match="4 channels per voxel.*--method agglo"):
        open_volume(tmp_path / "a.zarr")


def test_channel_volume_read_by_an_ome_zarr_reader(tmp_path):
    models = pytest.importorskip("ome_zarr_models.v05.image")
    _write(tmp_path / "a.zarr", _affs(_cells((2, 16, 16), n=4)), chunks=(1, 16, 16))
    image = models.Image.from_zarr(zarr.open_group(tmp_path / "a.zarr", mode="r"))
    axes = image.ome_attributes.multiscales[0].axes
    assert [a.name for a in axes] == ["c", "z", "y", "x"] and axes[0].type == "channel"


# ------------------------------------------------------------------------- known answers
def test_two_touching_cells_are_split_by_their_affinities(tmp_path):
    labels = np.ones((1, 12, 20), np.uint32)
    labels[:, :, 10:] = 2  # no membrane between them: only the affinities say where one ends
    _write(tmp_path / "a.zarr", _affs(labels), chunks=(1, 12, 20))
    segment(tmp_path / "a.zarr", tmp_path / "c.zarr", SegmentOptions(method="agglo", min_size=0))
    out = _labels(tmp_path / "c.zarr")
    assert set(np.unique(out)) == {1, 2}
    assert (out[:, :, :10] == 1).all() and (out[:, :, 10:] == 2).all()  # numbered by first voxel


def test_a_cell_across_four_sections_is_one_id_in_3d_and_four_in_2d(tmp_path):
    labels = np.zeros((4, 16, 16), np.uint32)
    labels[:, 3:12, 3:12] = 5  # one cell through the stack, in a background of 0 (boundary)
    _write(tmp_path / "a.zarr", _affs(labels), chunks=(1, 8, 8))
    segment(tmp_path / "a.zarr", tmp_path / "c3.zarr", SegmentOptions(mode="3d", method="agglo", min_size=0))
    segment(tmp_path / "a.zarr", tmp_path / "c2.zarr", SegmentOptions(mode="2d", method="agglo", min_size=0))
    three, two = _labels(tmp_path / "c3.zarr"), _labels(tmp_path / "c2.zarr")
    assert set(np.unique(three)) == {0, 1} and np.array_equal(three > 0, labels > 0)
    assert [set(np.unique(two[z])) - {0} for z in range(4)] == [{1}, {2}, {3}, {4}]
    # the cell crosses the block faces at y = 8 and x = 8 in every section: its fragments were joined there
    assert open_volume(tmp_path / "c3.zarr").meta["graph"]["nodes"] == 4


def test_merge_threshold_keeps_a_weak_face_apart():
    """Mean affinity across the face decides: 0.6 merges at 0.5, not at 0.7 (worked out by hand)."""
    affs = np.full((2, 1, 4, 8), 1.0, np.float32)  # channels (0,-1,0), (0,0,-1)
    affs[1, 0, :, 4] = 0.6  # the pairs (x=3, x=4) are stored at x = 4 for offset (0, 0, -1)
    offs = [(0, -1, 0), (0, 0, -1)]
    p = blockgraph.block_pieces(
        affs, offs, (slice(0, 1), slice(0, 4), slice(0, 8)), (0, 0, 0), (1, 4, 8), fragment_threshold=0.9,
        merge_threshold=0.5,
    )  # fmt: skip
    assert p.count == 2 and p.sizes.tolist() == [16, 16]
    assert p.edges[3].tolist() == [4] and p.edges[2].tolist() == [4 * round(0.6 * blockgraph.Q_MAX)]
    for merge, cells in ((0.5, 1), (0.7, 2)):
        sol = blockgraph.solve({(0, 0, 0): 2}, {(0, 0, 0): p}.__getitem__, (1, 1, 1), merge_threshold=merge)
        assert sol.segments == cells


def test_a_voxel_that_can_join_nothing_is_boundary():
    affs = np.ones((2, 1, 5, 5), np.float32)
    offs = [(0, -1, 0), (0, 0, -1)]
    # voxel (2, 2): every pair it is in, below 0.5 (the pair with (2, 3) is stored at (2, 3), and so on)
    affs[0, 0, 2, 2] = affs[0, 0, 3, 2] = affs[1, 0, 2, 2] = affs[1, 0, 2, 3] = 0.2
    p = blockgraph.block_pieces(affs, offs, (slice(0, 1), slice(0, 5), slice(0, 5)), (0, 0, 0), (1, 5, 5))
    assert p.fragments[0, 2, 2] == 0 and (np.delete(p.fragments.ravel(), 12) == 1).all()


def test_options_refused():
    with pytest.raises(OptionError, match="--fragment-threshold 0.4 is below --merge-threshold 0.5"):
        SegmentOptions(method="agglo", fragment_threshold=0.4)
    with pytest.raises(OptionError, match="--merge-threshold 1.0"):
        SegmentOptions(method="agglo", merge_threshold=1.0)
    with pytest.raises(OptionError, match="no nearest-neighbour offset along z"):
        blockgraph.pair_channels([(0, -1, 0), (0, 0, -1)], (0, 1, 2))


# ------------------------------------------------------------------------- block-size invariance
@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_labels_are_the_same_bit_for_bit_whatever_the_blocks(tmp_path, mode):
    labels = _cells()
    _write(tmp_path / "a.zarr", _affs(labels, noise=0.15), chunks=(2, 32, 32))
    outs = {}
    for chunks in ((2, 32, 32), (1, 17, 70), (3, 60, 9), (6, 60, 70)):
        name = tmp_path / f"c{'x'.join(map(str, chunks))}.zarr"
        segment(tmp_path / "a.zarr", name, SegmentOptions(mode=mode, method="agglo"), chunks=chunks)
        outs[chunks] = _labels(name)
    whole = outs[(6, 60, 70)]  # one block: the whole volume at once
    for chunks, out in outs.items():
        assert np.array_equal(out, whole), chunks
    table = Contingency().add(labels, whole)
    if mode == "3d":  # noisy affinities (sigma 0.15), the cells come back exactly
        assert table.adapted_rand().error == 0.0 and int(whole.max()) == 25
    else:  # each section on its own: the truth's 3-D cells are split into their sections
        per_section = [Contingency().add(labels[z], whole[z]).adapted_rand().error for z in range(6)]
        assert max(per_section) < 1e-4  # only cut-offs of cells smaller than --min-size 20 px go to 0
        assert int(whole.max()) <= sum(np.unique(labels[z]).size for z in range(6))
    assert not (tmp_path / "c2x32x32.zarr" / ".volseg" / "segment").exists()  # scratch removed


def test_pure_steps_equal_one_block_run():
    """The core steps alone, in memory: 4 blocks vs 1, the same labels."""
    labels = _cells((3, 30, 30), n=8)
    affs = _affs(labels, noise=0.1)
    shape = labels.shape

    def run(block):
        grid = tuple(-(-s // b) for s, b in zip(shape, block, strict=True))
        pieces = {}

        def where(idx):
            return tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(idx, block, shape, strict=True))

        for idx in np.ndindex(*grid):
            region = where(idx)
            grown, inner = graph_stage._halo(region, shape)
            pieces[idx] = blockgraph.block_pieces(
                affs[(slice(None), *grown)], OFFSETS, inner, [s.start for s in region], shape, link_z=True
            )
        sol = blockgraph.solve({k: p.count for k, p in pieces.items()}, pieces.__getitem__, grid, link_z=True)
        out = np.zeros(shape, np.uint32)
        for idx, p in pieces.items():
            out[where(idx)] = blockgraph.relabel(p.fragments, sol.lookup, sol.bases[idx], np.uint32)
        return out, sol

    one, sol1 = run(shape)
    four, sol4 = run((3, 15, 15))
    assert np.array_equal(one, four) and sol1.segments == sol4.segments == 8
    assert sol4.fragments > sol4.nodes  # pieces cut by the faces were joined into nodes
    assert _same_partition(one, labels)


# ------------------------------------------------------------------------- resume
def test_a_failed_run_resumes_to_the_same_labels_without_solving_again(tmp_path, monkeypatch):
    labels = _cells((4, 40, 40), n=10)
    _write(tmp_path / "a.zarr", _affs(labels, noise=0.1), chunks=(1, 20, 20))
    opts = SegmentOptions(mode="3d", method="agglo")
    segment(tmp_path / "a.zarr", tmp_path / "ref.zarr", opts)
    calls = {"n": 0}
    real = graph_stage._labels_task

    def flaky(out, scratch, lookup, bases, index):
        calls["n"] += 1
        if index[0] >= 2:
            raise OSError("disk full")
        real(out, scratch, lookup, bases, index)

    monkeypatch.setattr(graph_stage, "_labels_task", flaky)
    with pytest.raises(IncompleteRunError, match="8 of 16 blocks failed"):
        segment(tmp_path / "a.zarr", tmp_path / "c.zarr", opts)
    half = open_volume(tmp_path / "c.zarr")
    assert not half.complete and len(half.done_blocks()) == 8
    assert (tmp_path / "c.zarr" / ".volseg" / "segment" / "lookup.npz").is_file()
    monkeypatch.setattr(graph_stage, "_labels_task", real)
    monkeypatch.setattr(blockgraph, "solve", lambda *a, **k: pytest.fail("solved again on resume"))
    result = segment(tmp_path / "a.zarr", tmp_path / "c.zarr", opts, resume=True)
    assert result.resumed_blocks == 8 and result.labels == 10
    assert np.array_equal(_labels(tmp_path / "c.zarr"), _labels(tmp_path / "ref.zarr"))
    with pytest.raises(Exception, match="merge_threshold"):  # other options: refused, not mixed
        segment(tmp_path / "a.zarr", tmp_path / "c.zarr", SegmentOptions(mode="3d", method="agglo",
                merge_threshold=0.6), resume=True)  # fmt: skip


# ------------------------------------------------------------------------- the CLI
def test_cli_agglo_and_its_one_line_refusals(tmp_path):
    labels = _cells((2, 24, 24), n=5)
    _write(tmp_path / "a.zarr", _affs(labels), chunks=(1, 24, 24))
    _write(tmp_path / "bare.zarr", _affs(labels), chunks=(1, 24, 24), record_offsets=False)
    runner = CliRunner()
    ok = runner.invoke(app, ["segment", str(tmp_path / "a.zarr"), str(tmp_path / "c.zarr"), "--method",
                             "agglo", "--mode", "3d", "--json"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["labels"] == 5 and _same_partition(_labels(tmp_path / "c.zarr"), labels)
    info = runner.invoke(app, ["info", str(tmp_path / "a.zarr")])
    assert info.exit_code == 0
    assert "4 (axes c, z, y, x; offsets 0,-1,0; 0,0,-1; -1,0,0; 0,-3,0)" in info.output
    for args, words in (
        (["segment", str(tmp_path / "bare.zarr"), str(tmp_path / "d.zarr"), "--method", "agglo"],
         "records no affinity offsets"),
        (["segment", str(tmp_path / "a.zarr"), str(tmp_path / "e.zarr")], "4 channels per voxel"),
        (["segment", str(tmp_path / "c.zarr"), str(tmp_path / "f.zarr"), "--method", "agglo"],
         "--method agglo and mws read affinities"),
        (["evaluate", str(tmp_path / "a.zarr"), str(tmp_path / "c.zarr")], "4 channels per voxel"),
        (["segment", str(tmp_path / "a.zarr"), str(tmp_path / "g.zarr"), "--method", "agglo", "--part",
          "1/2"], "--part: not with --method agglo"),
    ):  # fmt: skip
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert words in r.output and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "d.zarr").exists() and not (tmp_path / "e.zarr").exists()


# ------------------------------------------------------------------------- mws, block by block
def test_block_wise_mutex_watershed_finds_the_cells_whatever_the_blocks(tmp_path):
    pytest.importorskip("mwatershed")
    labels = np.repeat(_cells((1, 48, 48), n=12, seed=3), 4, axis=0)  # columnar cells through 4 sections
    offsets = [(0, -1, 0), (0, 0, -1), (-1, 0, 0), (0, -4, 0), (0, 0, -4)]
    affs = _affs(labels, offsets, noise=0.1)
    _write(tmp_path / "a.zarr", affs, offsets, chunks=(1, 24, 24))
    whole = mutex_watershed(affs, offsets)  # the pure function on the whole volume: the reference
    outs = []
    for chunks in ((1, 24, 24), (2, 48, 17), (4, 48, 48)):
        name = tmp_path / f"m{chunks[2]}.zarr"
        segment(tmp_path / "a.zarr", name, SegmentOptions(mode="3d", method="mws", min_size=0), chunks=chunks)
        outs.append(_labels(name))
    for out in outs:  # each block's cuts stand, the faces are joined: the whole-volume answer
        assert _same_partition(out, whole)
    assert Contingency(ignore_labels=()).add(labels, whole).adapted_rand().error < 1e-4
    two = tmp_path / "m2d.zarr"
    segment(tmp_path / "a.zarr", two, SegmentOptions(mode="2d", method="mws", min_size=0), chunks=(1, 24, 24))
    per_section = _labels(two)
    assert all(int(per_section[z].max()) > 0 for z in range(4))
    assert len(set(np.unique(per_section[0])) & set(np.unique(per_section[1])) - {0}) == 0  # 2-D: new ids


def test_a_long_range_offset_keeps_apart_what_a_weak_nearest_neighbour_face_would_merge(tmp_path):
    """Two cells whose nearest-neighbour affinities across their face are ambiguous (0.6): agglomeration
    at 0.5 merges them; the mutex watershed, told by the 4-px offsets that they differ, keeps them apart."""
    pytest.importorskip("mwatershed")
    labels = np.ones((1, 16, 24), np.uint32)
    labels[:, :, 12:] = 2
    offsets = [(0, -1, 0), (0, 0, -1), (0, -4, 0), (0, 0, -4)]
    affs = _affs(labels, offsets).astype(np.float32) / 255
    affs[1, :, :, 12] = 0.6  # the nearest-neighbour pairs across the face: stored at x = 12 for (0,0,-1)
    _write(tmp_path / "a.zarr", affs, offsets, chunks=(1, 16, 24))
    for method, cells in (("agglo", 1), ("mws", 2)):
        out = tmp_path / f"{method}.zarr"
        segment(tmp_path / "a.zarr", out, SegmentOptions(method=method, min_size=0, fragment_threshold=0.9))
        assert int(_labels(out).max()) == cells, method
