"""Paired augmentation: alignment, exactness, determinism, presets, option parsing, defects."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage as ndi

from volseg.core.augment import (
    DEFECTS,
    GEOMETRIC,
    PRESETS,
    TRANSFORMS,
    AugmentConfig,
    Augmenter,
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    dihedral,
    dihedral_inverse,
    fold,
    gaussian_blur,
    gaussian_noise,
    low_contrast,
    missing_region,
    missing_section,
    parse_probabilities,
    smear,
    warp,
    warp_coordinates,
)
from volseg.errors import OptionError

NONE = AugmentConfig.preset("none")


def only(*names: str, **params) -> AugmentConfig:
    """A config in which exactly ``names`` always fire."""
    return dataclasses.replace(NONE, **{f"p_{n}": 1.0 for n in names}, **params)


def regions(shape=(96, 96), n=7, seed=0, values=None) -> np.ndarray:
    """A label image of ``n`` Voronoi regions with distinct values (uint16 by default)."""
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, shape, size=(n, 2))
    yy, xx = np.indices(shape)
    nearest = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    values = np.arange(1, 2 * n + 1, 2, dtype=np.uint16) if values is None else values
    return values[nearest]


def interior(label: np.ndarray, size: int = 5) -> np.ndarray:
    """Pixels whose ``size`` x ``size`` neighbourhood holds one label value (away from borders)."""
    return ndi.maximum_filter(label, size) == ndi.minimum_filter(label, size)


def agreement(image: np.ndarray, label: np.ndarray) -> float:
    inside = interior(label)
    return float(np.mean(np.rint(image[inside]) == label[inside]))


# --------------------------------------------------------------------------- dihedral
@settings(max_examples=60, deadline=None)
@given(
    array=arrays(np.int32, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=st.integers(-5, 5)),
    k=st.integers(0, 7),
)
def test_dihedral_is_exact_and_invertible(array, k):
    out = dihedral(array, k)
    assert out.dtype == array.dtype and out.flags.c_contiguous
    assert sorted(out.ravel()) == sorted(array.ravel())  # a permutation of the pixels
    np.testing.assert_array_equal(dihedral(out, dihedral_inverse(k)), array)


def test_dihedral_gives_eight_distinct_transforms_and_moves_channels_alike():
    square = np.arange(16).reshape(4, 4)
    images = {dihedral(square, k).tobytes() for k in range(8)}
    assert len(images) == 8
    stack = np.stack([square, square * 10, square * 100])
    for k in range(8):
        out = dihedral(stack, k)
        for c in range(3):
            np.testing.assert_array_equal(out[c], dihedral(stack[c], k))


def test_dihedral_rejects_bad_index():
    with pytest.raises(ValueError, match="0 to 7"):
        dihedral(np.zeros((2, 2)), 8)


# --------------------------------------------------------------------------- warp
def test_identity_warp_is_exact():
    label = regions((40, 50))
    coords = warp_coordinates(label.shape)
    np.testing.assert_array_equal(warp(label, coords), label)
    np.testing.assert_allclose(warp(label.astype(np.float32), coords), label, atol=1e-4)


def test_quarter_turn_warp_matches_dihedral():
    label = regions((41, 41))
    coords = warp_coordinates(label.shape, angle=90.0)
    np.testing.assert_array_equal(warp(label, coords), dihedral(label, 3))
    np.testing.assert_allclose(warp(label.astype(np.float32), coords), dihedral(label, 3), atol=1e-3)


def test_constant_control_displacement_is_a_shift():
    shape = (30, 40)
    grid = np.empty((2, 4, 4))
    grid[0], grid[1] = 3.0, -2.0
    coords = warp_coordinates(shape, grid)
    yy, xx = np.indices(shape)
    np.testing.assert_allclose(coords[0], yy + 3.0, atol=1e-4)
    np.testing.assert_allclose(coords[1], xx - 2.0, atol=1e-4)


def test_warp_reflects_at_the_boundary_like_scipy():
    image = np.random.default_rng(1).random((20, 24), dtype=np.float32)
    label = (image * 1000).astype(np.int64)
    coords = warp_coordinates(image.shape, angle=30.0, scale=0.7)  # reaches well outside the patch
    nearest = ndi.map_coordinates(label.astype(np.float64), np.round(coords), order=0, mode="reflect")
    np.testing.assert_array_equal(warp(label, coords), nearest.astype(np.int64))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("image_order", [1, 3])
def test_geometric_transforms_keep_image_and_label_aligned(seed, image_order):
    label = regions(seed=seed)
    augment = Augmenter(only(*GEOMETRIC, image_order=image_order))
    image, out = augment(label.astype(np.float32), label, np.random.default_rng(seed))
    assert out.dtype == label.dtype and image.dtype == np.float32 and image.shape == label.shape
    assert not np.array_equal(out, label)  # something moved
    assert agreement(image, out) > 0.995
    assert agreement(np.roll(image, 1, axis=1), out) < 0.995  # the check sees a one-pixel misalignment


def test_channels_and_weights_move_with_the_label():
    label = regions((64, 80), seed=3)  # not square: quarter turns are skipped
    image = np.stack([label * 1.0, label * 2.0, label * 3.0]).astype(np.float32)
    weight = label.astype(np.float32) / 2
    augment = Augmenter(only(*GEOMETRIC, elastic_sigma=6.0))
    out_image, (out_label, out_weight) = augment(image, (label, weight), np.random.default_rng(5))
    assert out_image.shape == image.shape and out_label.shape == label.shape
    assert out_weight.dtype == np.float32
    for c in range(3):
        assert agreement(out_image[c] / (c + 1), out_label) > 0.995
    assert agreement(out_weight * 2, out_label) > 0.995


@pytest.mark.parametrize("preset", PRESETS)
def test_label_values_stay_in_the_original_set(preset):
    # values that float64 cannot hold exactly: nearest neighbour must not go through floats
    values = np.array([3, 2**40 + 1, 2**53 + 3, 2**63 + 5, 9, 11, 13], dtype=np.uint64)
    label = regions((48, 48), seed=2, values=values)
    augment = Augmenter(AugmentConfig.preset(preset))
    for seed in range(10):
        _, out = augment(label.astype(np.float32), label, np.random.default_rng(seed))
        assert out.dtype == np.uint64
        assert set(np.unique(out)) <= set(values)


# --------------------------------------------------------------------------- the augmenter
@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    channels=st.sampled_from([0, 1, 3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_transform_on_any_patch_shape(shape, channels, seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, shape).astype(np.int16) * 7
    image = rng.random((channels, *shape) if channels else shape, dtype=np.float32)
    config = dataclasses.replace(AugmentConfig.preset("heavy"), **{f"p_{n}": 1.0 for n in TRANSFORMS})
    out_image, out_label = Augmenter(config)(image, label, rng)
    assert out_image.shape == image.shape and out_image.dtype == np.float32
    assert np.isfinite(out_image).all()
    assert out_label.shape == label.shape and out_label.dtype == label.dtype
    assert set(np.unique(out_label)) <= set(np.unique(label))


def test_none_preset_is_the_identity_and_draws_nothing():
    label = regions()
    image = np.random.default_rng(0).random((3, *label.shape), dtype=np.float32)
    rng = np.random.default_rng(9)
    state = rng.bit_generator.state
    out_image, (out_label, out_weight) = Augmenter(NONE)(image, (label, label * 0.5), rng)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)
    np.testing.assert_array_equal(out_weight, label * 0.5)
    assert rng.bit_generator.state == state


def test_same_seed_same_output_other_seed_differs():
    label = regions()
    image = np.random.default_rng(0).random(label.shape, dtype=np.float32)
    augment = Augmenter(AugmentConfig.preset("heavy"))
    first = augment(image, label, np.random.default_rng(42))
    again = augment(image, label, np.random.default_rng(42))
    other = augment(image, label, np.random.default_rng(43))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_inputs_are_never_modified():
    label = regions()
    image = np.random.default_rng(0).random((2, *label.shape), dtype=np.float32)
    weight = np.ones(label.shape, np.float32)
    copies = image.copy(), label.copy(), weight.copy()
    config = dataclasses.replace(AugmentConfig.preset("heavy"), **{f"p_{n}": 1.0 for n in TRANSFORMS})
    for seed in range(5):
        Augmenter(config)(image, [label, weight], np.random.default_rng(seed))
    for original, copy in zip((image, label, weight), copies, strict=True):
        np.testing.assert_array_equal(original, copy)


def test_defects_leave_the_label_untouched():
    label = regions()
    image = np.random.default_rng(0).random(label.shape, dtype=np.float32)
    augment = Augmenter(only(*DEFECTS))
    for seed in range(5):
        out_image, out_label = augment(image, label, np.random.default_rng(seed))
        assert out_label is label
        assert not np.array_equal(out_image, image)


def test_augmenter_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="label 0 shape"):
        Augmenter()(np.zeros((8, 8), np.float32), np.zeros((8, 9), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="image shape"):
        Augmenter()(np.zeros((8,), np.float32), np.zeros((8, 8), np.uint8), np.random.default_rng(0))


# --------------------------------------------------------------------------- intensity and defects
def test_intensity_transforms():
    image = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    np.testing.assert_allclose(adjust_brightness(image, 0.1), image + 0.1, atol=1e-6)
    contrast = adjust_contrast(image, 0.5)
    assert contrast.mean() == pytest.approx(image.mean(), abs=1e-5)
    assert contrast.std() == pytest.approx(0.5 * image.std(), rel=1e-4)
    gamma = adjust_gamma(image + 0.5, 2.0)
    assert gamma.min() >= 0.0 and gamma.max() <= 1.0
    assert gaussian_blur(image, 1.0).std() < 0.6 * image.std()
    noisy = gaussian_noise(image, 0.1, np.random.default_rng(1))
    assert (noisy - image).std() == pytest.approx(0.1, rel=0.1)
    for out in (contrast, gamma, noisy):
        assert out.dtype == np.float32


def test_section_defects():
    section = np.random.default_rng(0).random((40, 60), dtype=np.float32)
    assert low_contrast(section, 0.2).std() == pytest.approx(0.2 * section.std(), rel=1e-4)
    np.testing.assert_array_equal(missing_section(section, 0.0), 0.0)
    assert np.ptp(missing_section(section)) == 0.0

    box = (slice(5, 15), slice(10, 40))
    holed = missing_region(section, box, fill=0.25)
    assert np.all(holed[box] == 0.25)
    outside = np.ones(section.shape, bool)
    outside[box] = False
    np.testing.assert_array_equal(holed[outside], section[outside])

    smeared = smear(section, axis=1, start=12, width=6, length=20)
    outside = np.r_[0:12, 18:40]
    np.testing.assert_array_equal(smeared[outside], section[outside])
    assert smeared[12:18].std(axis=1).mean() < 0.5 * section[12:18].std(axis=1).mean()

    folded = fold(section, angle=0.0, offset=0.0, width=4.0, darkness=0.8)  # a horizontal line at the centre
    assert np.all(folded <= section + 1e-7)
    changed = np.any(folded != section, axis=1)
    assert changed.sum() <= 5 and changed[19] and changed[20]


def test_defects_hit_channels_independently():
    image = np.random.default_rng(0).random((4, 32, 32), dtype=np.float32)
    config = only("missing_section")
    config = dataclasses.replace(config, p_missing_section=0.5)
    hit = set()
    for seed in range(20):
        out, _ = Augmenter(config)(image, np.zeros((32, 32), np.uint8), np.random.default_rng(seed))
        hit.add(tuple(bool(np.ptp(c) == 0) for c in out))
    assert len(hit) > 2  # different channels blanked in different draws


# --------------------------------------------------------------------------- configuration
def test_presets():
    assert AugmentConfig() == AugmentConfig.preset("default")
    for name in PRESETS:
        assert isinstance(AugmentConfig.preset(name), AugmentConfig)
    assert all(p == 0.0 for p in NONE.probabilities().values())
    heavy, default = AugmentConfig.preset("heavy").probabilities(), AugmentConfig().probabilities()
    assert all(heavy[n] >= default[n] for n in TRANSFORMS)
    with pytest.raises(OptionError, match="unknown preset.*none, light, default, heavy"):
        AugmentConfig.preset("strong")


def test_probability_overrides_parse():
    assert parse_probabilities("elastic=0.5, noise=0") == {"elastic": 0.5, "noise": 0.0}
    assert parse_probabilities("") == {}
    config = AugmentConfig().with_probabilities("elastic=0.25,missing_section=1")
    assert (config.p_elastic, config.p_missing_section) == (0.25, 1.0)
    assert config.p_noise == AugmentConfig().p_noise
    assert AugmentConfig().with_probabilities({"fold": 0.5}).p_fold == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("elastik=0.5", "unknown transform 'elastik'; use one of dihedral, elastic"),
        ("elastic", "write NAME=PROBABILITY"),
        ("elastic=lots", "'lots' is not a probability"),
        ("noise=1.5", "'1.5' is not a probability"),
        ("noise=nan", "is not a probability"),
        ("noise=-0.1", "is not a probability"),
    ],
)
def test_probability_overrides_reject_bad_input(text, message):
    with pytest.raises(OptionError, match=message) as info:
        parse_probabilities(text)
    assert str(info.value).startswith(f"augment_prob {text!r}")  # the argument; the CLI shows the flag
    assert "\n" not in str(info.value)


def test_config_validates_its_fields():
    with pytest.raises(OptionError, match="p_noise|noise=1.5"):
        AugmentConfig(p_noise=1.5)
    with pytest.raises(OptionError, match="scale_range"):
        AugmentConfig(scale_range=(1.1, 0.9))
    with pytest.raises(OptionError, match="elastic_grid"):
        AugmentConfig(elastic_grid=1)
    with pytest.raises(OptionError, match="unknown transform"):
        AugmentConfig().with_probabilities({"warp": 0.5})
