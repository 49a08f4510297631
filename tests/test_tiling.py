"""Property tests of the pure block / halo arithmetic (volseg.core.tiling)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volseg.core import tiling
from volseg.errors import OptionError

sizes = st.integers(1, 40)
shapes = st.tuples(sizes, sizes, sizes)


@settings(max_examples=150, deadline=None)
@given(shape=shapes, chunks=st.tuples(*(st.integers(2, 17),) * 3), per=st.tuples(*(st.integers(1, 4),) * 3))
def test_blocks_cover_every_voxel_once_and_own_whole_chunks(shape, chunks, per):
    count = np.zeros(shape, np.int32)
    owner: dict[tuple[int, ...], tuple[int, ...]] = {}
    for block in tiling.blocks(shape, chunks, per):
        count[block.out] += 1
        assert block.size == int(np.prod(block.shape))
        inside = 0
        for cid in block.chunk_ids:
            assert cid not in owner, "a chunk belongs to two blocks"
            owner[cid] = block.index
            region = tiling.region(shape, chunks, cid)
            assert all(b.start <= r.start < r.stop <= b.stop for r, b in zip(region, block.out, strict=True))
            inside += int(np.prod([r.stop - r.start for r in region]))
        assert inside == block.size  # the block is exactly its chunks
    assert (count == 1).all()
    assert len(owner) == int(np.prod(tiling.grid_shape(shape, chunks)))


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 40),
    lo=st.integers(-120, 40),
    length=st.integers(1, 150),
    mode=st.sampled_from(["symmetric", "reflect"]),
)
def test_pad_indices_match_numpy_pad(n, lo, length, mode):
    hi = lo + length
    pad = max(0, -lo, hi - n)
    expected = np.pad(np.arange(n), pad, mode=mode)[lo + pad : hi + pad]
    np.testing.assert_array_equal(tiling.pad_indices(lo, hi, n, mode), expected)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 40), lo=st.integers(-120, 40), length=st.integers(1, 150))
def test_source_window_reads_the_smallest_range(n, lo, length):
    data = np.arange(100, 100 + n)
    read, take = tiling.source_window(lo, lo + length, n)
    assert 0 <= read.start < read.stop <= n
    src = tiling.pad_indices(lo, lo + length, n)
    assert read.start == src.min() and read.stop == src.max() + 1
    np.testing.assert_array_equal(data[read][take], data[src])


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(0, 500), length=st.integers(1, 300), halo=st.integers(0, 100), depth=st.integers(0, 5)
)
def test_aligned_window_sits_on_the_global_pooling_grid(start, length, halo, depth):
    divisor = 2**depth
    w = tiling.aligned_window(start, start + length, halo, divisor)
    assert w.origin % divisor == 0 and 0 <= w.crop < divisor
    assert w.origin + w.crop == start
    assert w.lo == w.origin - halo and w.hi == start + length + halo
    # the window's first pixel is where the whole-section reference's first window starts, mod divisor
    assert (w.lo - (-halo)) % divisor == 0


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 3000), k=st.integers(1, 64), depth=st.integers(0, 5))
def test_tile_starts_cover_once_on_the_grid(length, k, depth):
    divisor = 2**depth
    tile = k * divisor
    tiles = tiling.tile_starts(length, tile, divisor)
    covered = np.zeros(length, np.int32)
    for s, n in tiles:
        assert s % divisor == 0 and 1 <= n <= tile
        covered[s : s + n] += 1
    assert (covered == 1).all()


@settings(max_examples=100, deadline=None)
@given(tile=st.integers(1, 64).map(lambda k: 16 * k), halo=st.integers(0, 200))
def test_overhead_formula(tile, halo):
    assert tiling.halo_overhead(tile, halo) == pytest.approx((tile + 2 * halo) ** 2 / tile**2)
    # a region of whole tiles costs exactly the formula when tile + 2 halo is on the grid
    halo16 = halo // 16 * 16
    assert tiling.window_overhead((3 * tile, 2 * tile), tile, halo16, 16) == pytest.approx(
        tiling.halo_overhead(tile, halo16)
    )


@settings(max_examples=200, deadline=None)
@given(shape=shapes, data=st.data())
def test_roi_resolution(shape, data):
    spans = []
    for n in shape:
        a = data.draw(st.integers(0, n - 1))
        b = data.draw(st.integers(a + 1, n))
        spans.append((a, b))
    text = ",".join(f"{a}:{b}" for a, b in spans)
    assert tiling.resolve_roi(tiling.parse_roi(text), shape) == tuple(spans)


def test_roi_edges_and_errors():
    assert tiling.resolve_roi(tiling.parse_roi(":,5:,:-1"), (4, 10, 10)) == ((0, 4), (5, 10), (0, 9))
    assert tiling.resolve_roi(None, (2, 3, 4)) == ((0, 2), (0, 3), (0, 4))
    with pytest.raises(OptionError, match="y range 0:20 is outside the volume"):
        tiling.resolve_roi(tiling.parse_roi("0:1,0:20,0:5"), (4, 10, 10))
    with pytest.raises(OptionError, match="x range 5:5"):
        tiling.resolve_roi(tiling.parse_roi("0:1,0:2,5:5"), (4, 10, 10))
    for bad in ("0:1,0:2", "0:1,a:2,0:3", "0-1,0:2,0:3"):
        with pytest.raises(OptionError, match="^roi"):  # the argument; the CLI shows --roi
            tiling.parse_roi(bad)


@settings(max_examples=150, deadline=None)
@given(
    extent=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    block=st.tuples(st.integers(1, 200), st.integers(1, 200)),
    offset=st.tuples(st.integers(0, 100), st.integers(0, 100)),
    k=st.integers(1, 8),
    halo_k=st.integers(0, 4),
    depth=st.integers(0, 4),
)
def test_plan_overhead_adds_up_every_block(extent, block, offset, k, halo_k, depth):
    divisor = 2**depth
    tile, halo = k * divisor, halo_k * divisor
    computed = 0.0
    for b in tiling.blocks((1, *extent), (1, *block)):
        inner = []
        for span, o in zip(b.out[1:], offset, strict=True):
            w = tiling.aligned_window(o + span.start, o + span.stop, halo, divisor)
            inner.append(o + span.stop - w.origin)
        computed += tiling.window_overhead(inner, tile, halo, divisor) * inner[0] * inner[1]
    expected = computed / (extent[0] * extent[1])
    assert tiling.plan_overhead(extent, block, offset, tile, halo, divisor) == pytest.approx(expected)


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(0, 500),
    length=st.integers(1, 300),
    extra=st.integers(0, 300),
    halo_k=st.integers(0, 6),
    edge_k=st.integers(0, 8),
    depth=st.integers(0, 5),
)
def test_window_clipped_to_the_sections_frame(start, length, extra, halo_k, edge_k, depth):
    divisor = 2**depth
    halo, edge, size = halo_k * divisor, edge_k * divisor, start + length + extra
    w = tiling.aligned_window(start, start + length, halo, divisor, size, edge)
    reach = min(edge, halo)
    assert w.lo == max(w.origin - halo, -reach) and w.hi == min(start + length + halo, size + reach)
    assert w.lo % divisor == 0  # the frame [-edge, size + edge) starts on the pooling grid too
    assert w.origin + w.crop == start and w.lo <= w.origin and w.hi >= start + length


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 700), tile_k=st.integers(1, 64), halo_k=st.integers(0, 8), depth=st.integers(2, 4))
def test_plan_overhead_at_the_volume_edges(n, tile_k, halo_k, depth):
    divisor = 2**depth
    tile, halo = tile_k * divisor, halo_k * divisor
    whole = tiling.plan_overhead((n, n), (n, n), (0, 0), max(tile, n), halo, divisor, (n, n), edge=0)
    rounded = -(-n // divisor) * divisor
    assert whole == pytest.approx((rounded / n) ** 2)  # one window, the section itself
    # mirroring the whole halo costs what reading a halo everywhere costs
    mirrored = tiling.plan_overhead((n, n), (n, n), (0, 0), tile, halo, divisor, (n, n), edge=halo)
    assert mirrored == pytest.approx(tiling.plan_overhead((n, n), (n, n), (0, 0), tile, halo, divisor))
    assert tiling.plan_overhead((n, n), (n, n), (0, 0), tile, halo, divisor, (n, n), edge=0) <= mirrored
