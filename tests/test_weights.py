"""The U-Net border weight map against configurations with a known answer and a brute-force reference."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from volseg.core.weights import border_weights, class_weights, instances_from_mask, two_nearest_distances

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012"


def two_squares(gap: int) -> np.ndarray:
    """Cells 1 and 2: 20 x 20 squares side by side, ``gap`` background columns apart."""
    cells = np.zeros((64, 60 + gap), np.int32)
    cells[20:40, 10:30] = 1
    cells[20:40, 30 + gap : 50 + gap] = 2
    return cells


def brute_force(cells: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """Equation 2 the slow way: one full distance transform per cell."""
    ids = [i for i in np.unique(cells) if i != 0]
    distances = np.sort(np.stack([ndi.distance_transform_edt(cells != i) for i in ids]), axis=0)
    d1, d2 = distances[0], distances[1] if len(ids) > 1 else np.inf
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    return class_weights(cells) + np.where(cells == 0, border, 0.0)


@pytest.mark.parametrize("gap", [1, 3, 5, 9])
@pytest.mark.parametrize("class_balance", [True, False])
def test_gap_between_two_cells(gap, class_balance):
    cells = two_squares(gap)
    w = border_weights(cells, w0=10.0, sigma=5.0, class_balance=class_balance)
    assert w.dtype == np.float32 and w.shape == cells.shape
    w_c = class_weights(cells) if class_balance else np.ones(cells.shape, np.float32)
    # The middle of the gap lies (gap + 1) / 2 pixel centres from each cell (distances between pixel
    # centres); continuous edges would give gap / 2.
    centre = (30, 30 + (gap - 1) // 2)
    d = (gap + 1) / 2
    assert w[centre] == pytest.approx(w_c[centre] + 10.0 * math.exp(-((2 * d) ** 2) / (2 * 5.0**2)), rel=1e-5)
    # Far from both cells the border term vanishes, and inside a cell there is none.
    assert w[0, -1] == pytest.approx(w_c[0, -1], abs=1e-3)
    np.testing.assert_array_equal(w[cells > 0], w_c[cells > 0])


def test_border_term_is_flat_across_a_straight_gap_and_grows_as_it_narrows():
    # Between parallel cell edges d1 + d2 is the same at every pixel of the gap.
    wide = border_weights(two_squares(9), class_balance=False)
    np.testing.assert_allclose(wide[30, 30:39], wide[30, 34], rtol=1e-6)
    narrow = border_weights(two_squares(3), class_balance=False)
    assert narrow[30, 31] > wide[30, 34] > 1.0
    # Above the cells only one cell is near, d2 is large, and the term is small.
    assert wide[10, 20] - 1 < 0.05 * (wide[30, 34] - 1)


def voronoi_cells(shape: tuple[int, int], n: int, seed: int) -> np.ndarray:
    """Cells of a Voronoi tessellation separated by membranes about 2 px wide."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, shape, size=(n, 2))
    yy, xx = np.indices(shape)
    region = np.argmin((yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2, axis=-1)
    membrane = ndi.maximum_filter(region, 3) != ndi.minimum_filter(region, 3)
    return instances_from_mask(~membrane)


@pytest.mark.parametrize("seed", range(3))
def test_matches_brute_force_on_random_cells(seed):
    cells = voronoi_cells((80, 96), n=12, seed=seed)
    assert cells.max() >= 10
    np.testing.assert_allclose(border_weights(cells), brute_force(cells), atol=2e-3)


def test_two_nearest_distances_are_exact_without_a_limit():
    rng = np.random.default_rng(4)
    cells = np.zeros((40, 50), np.int32)
    for i in range(1, 6):
        y, x = rng.integers(0, 36), rng.integers(0, 46)
        cells[y : y + 4, x : x + 4] = i
    d1, d2 = two_nearest_distances(cells)
    present = [i for i in range(1, 6) if (cells == i).any()]
    ref = np.sort(np.stack([ndi.distance_transform_edt(cells != i) for i in present]), axis=0)
    np.testing.assert_allclose(d1, ref[0], rtol=1e-6)
    np.testing.assert_allclose(d2, ref[1], rtol=1e-6)


def test_sparse_ids_give_the_same_map():
    cells = voronoi_cells((48, 48), n=6, seed=1)
    sparse = np.where(cells > 0, cells.astype(np.uint64) * 2**40 + 7, 0)
    np.testing.assert_array_equal(border_weights(sparse), border_weights(cells))


def test_class_balance_sums():
    cells = two_squares(5)
    w_c = class_weights(cells)
    n = cells.size
    assert w_c[cells == 0].sum() == pytest.approx(n / 2, rel=1e-5)
    assert w_c[cells > 0].sum() == pytest.approx(n / 2, rel=1e-5)
    assert w_c.mean() == pytest.approx(1.0, rel=1e-5)
    assert len(np.unique(w_c[cells > 0])) == 1  # one weight per class, whatever the cell


def test_degenerate_maps():
    np.testing.assert_array_equal(border_weights(np.zeros((16, 16), np.int32)), 1.0)
    np.testing.assert_array_equal(border_weights(np.ones((16, 16), np.int32)), 1.0)
    one_cell = np.zeros((16, 16), np.int32)
    one_cell[4:8, 4:8] = 1
    np.testing.assert_allclose(
        border_weights(one_cell, class_balance=False), 1.0, atol=1e-3
    )  # needs two cells
    np.testing.assert_array_equal(border_weights(two_squares(3), w0=0.0), class_weights(two_squares(3)))


def test_instances_from_mask_keeps_diagonal_neighbours_apart():
    mask = np.full((6, 6), 255, np.uint8)
    mask[np.arange(6), np.arange(6)] = 0  # a one-pixel diagonal membrane
    cells = instances_from_mask(mask)
    assert cells.dtype == np.int32
    assert cells.max() == 2 and cells[0, 5] != cells[5, 0]
    assert instances_from_mask(mask, connectivity=2).max() == 1  # 8-connectivity leaks through it


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="instances_from_mask"):
        border_weights(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="negative label"):
        border_weights(np.full((8, 8), -1))
    with pytest.raises(ValueError, match="sigma"):
        border_weights(np.zeros((8, 8), np.int32), sigma=0.0)
    with pytest.raises(ValueError, match=r"\(Y, X\)"):
        instances_from_mask(np.zeros((2, 8, 8)))


@pytest.mark.isbi
@pytest.mark.skipif(not (ISBI / "train-labels.tif").exists(), reason="ISBI 2012 data not present")
def test_isbi_section_matches_brute_force():
    import tifffile

    labels = tifffile.imread(ISBI / "train-labels.tif", key=0)[:160, :160]
    cells = instances_from_mask(labels)
    w = border_weights(cells)
    np.testing.assert_allclose(w, brute_force(cells), atol=2e-3)
    assert w[cells == 0].mean() > 2 * w[cells > 0].mean()  # membranes weigh more
