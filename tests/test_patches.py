"""Random training patches: determinism per (seed, n), lazy reads, rejection sampling, label checks."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore, LoggingStore

from volseg.core.augment import AugmentConfig
from volseg.core.weights import border_weights, instances_from_mask
from volseg.errors import InputError, OptionError
from volseg.nn.inference import PAD_MODE
from volseg.nn.intensity import normalize
from volseg.nn.patches import (
    BatchIndices,
    PatchConfig,
    PatchDataset,
    context_sections,
    intensity_stats,
    scan_labels,
    split_sections,
)
from volseg.stages.synth import synth_block

SHAPE = (6, 96, 96)
CHUNKS = (1, 32, 32)


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    """Image and ISBI-style labels (255 cell, 0 membrane) as plain Zarr v3 arrays on disk."""
    root = tmp_path_factory.mktemp("patches")
    image, _, membranes = synth_block(SHAPE, seed=7)
    out = []
    for name, data in (("image", image), ("labels", membranes)):
        a = zarr.create_array(str(root / name), shape=SHAPE, chunks=CHUNKS, dtype="uint8")
        a[:] = data
        out.append(a)
    return root, out[0], out[1]


def make_config(image, **kw) -> PatchConfig:
    kw.setdefault("augment", AugmentConfig.preset("heavy"))
    return PatchConfig(
        sections=(0, 1, 2, 3),
        patch_size=32,
        foreground=(0,),
        stats=intensity_stats(image, (0, 1, 2, 3)),
        seed=5,
        **kw,
    )


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_patch_depends_only_on_seed_and_index(arrays):
    _, image, labels = arrays
    ds = PatchDataset(image, labels, make_config(image, context=1, border_weights=True))
    first = ds[11]
    assert first["image"].shape == (3, 32, 32) and first["target"].shape == (1, 32, 32)
    assert first["weight"].shape == (1, 32, 32) and first["image"].dtype == np.float32
    assert set(np.unique(first["target"])) <= {0.0, 1.0}
    for _ in range(3):
        ds[int(np.random.default_rng().integers(100))]  # draws in between change nothing
    assert same(ds[11], first)
    fresh = PatchDataset(image, labels, make_config(image, context=1, border_weights=True))
    assert same(fresh[11], first)
    worker_copy = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker gets
    assert same(worker_copy[11], first)
    assert not same(ds[12], first)
    other_seed = PatchDataset(image, labels, PatchConfig(**{**ds.config.__dict__, "seed": 6}))
    assert not same(other_seed[11], first)


def test_patch_matches_the_volume_without_augmentation(arrays):
    _, image, labels = arrays
    config = make_config(image, augment=AugmentConfig.preset("none"), border_weights=True)
    ds = PatchDataset(image, labels, config)
    item = ds[3]
    (z, ys, xs), _ = ds.draw(np.random.default_rng([config.seed, 3]))
    raw = np.asarray(image[z, ys, xs])
    np.testing.assert_allclose(item["image"][0], normalize(raw, config.stats.normalization), atol=1e-5)
    np.testing.assert_array_equal(item["target"][0], np.asarray(labels[z, ys, xs]) == 0)
    cells = instances_from_mask(np.asarray(labels[z]) != 0)
    np.testing.assert_allclose(
        item["weight"][0], border_weights(cells, config.w0, config.sigma)[ys, xs], rtol=1e-6
    )


def test_context_sections_mirror_like_inference():
    for n, c in ((6, 1), (6, 2), (3, 2)):
        padded = np.pad(np.arange(n), c, mode=PAD_MODE)
        for z in range(n):
            np.testing.assert_array_equal(context_sections(z, c, n), padded[z : z + 2 * c + 1])


def counting(root, name):
    store = LoggingStore(LocalStore(str(root / name), read_only=True), log_handler=logging.NullHandler())
    array = zarr.open_array(store, mode="r")
    return array, array.store.counter


def test_reads_only_the_chunks_a_patch_touches(arrays):
    root, image, _ = arrays
    img, img_count = counting(root, "image")
    lab, lab_count = counting(root, "labels")
    ds = PatchDataset(img, lab, make_config(image, cache_bytes=0))  # nothing fits the cache
    for n in range(5):
        before = img_count["get"], lab_count["get"]
        ds[n]
        # a 32 x 32 patch on 32 x 32 chunks touches at most 2 x 2 chunks of each volume
        assert img_count["get"] - before[0] <= 4 and lab_count["get"] - before[1] <= 4


def test_small_volumes_are_read_once(arrays):
    root, image, _ = arrays
    img, img_count = counting(root, "image")
    lab, lab_count = counting(root, "labels")
    ds = PatchDataset(img, lab, make_config(image))
    ds[0]
    after_first = img_count["get"], lab_count["get"]
    assert after_first[0] >= int(np.prod([s // c for s, c in zip(SHAPE, CHUNKS, strict=True)]))
    for n in range(1, 6):
        ds[n]
    assert (img_count["get"], lab_count["get"]) == after_first
    assert pickle.loads(pickle.dumps(ds)).image._data is None  # the cache is not shipped to workers


def test_rejection_sampler_is_bounded_and_works(arrays):
    _, image, labels = arrays
    impossible = PatchDataset(image, labels, make_config(image, min_foreground=1.0, max_attempts=7))
    impossible[0]
    assert impossible.attempts == 7
    none = AugmentConfig.preset("none")
    picky = PatchDataset(image, labels, make_config(image, augment=none, min_foreground=0.2))
    fractions = [picky[n]["target"].mean() for n in range(20)]
    plain = PatchDataset(image, labels, make_config(image, augment=none))
    assert np.mean(fractions) > np.mean([plain[n]["target"].mean() for n in range(20)])
    assert sum(f >= 0.2 for f in fractions) >= 17  # about 30 % of plain patches pass; 10 draws each


def test_batch_indices():
    assert list(BatchIndices(3, start=2, stop=4)) == [[6, 7, 8], [9, 10, 11]]
    assert len(BatchIndices(3, start=2, stop=4)) == 2
    endless = iter(BatchIndices(2, start=5))
    assert [next(endless) for _ in range(2)] == [[10, 11], [12, 13]]


def test_sections_and_split():
    """--val-slices takes the grammar of --sections (core.sections.parse_sections), sorted for training."""
    assert split_sections(30, "25:30") == (tuple(range(25)), tuple(range(25, 30)))
    assert split_sections(30, "-2:")[1] == (28, 29)
    assert split_sections(30, "0,4,10:12")[1] == (0, 4, 10, 11)
    assert split_sections(30, "0:30:5")[1] == (0, 5, 10, 15, 20, 25)  # steps, as --sections takes them
    assert split_sections(30, "12,3,-1")[1] == (3, 12, 29)  # sorted, whatever the order given
    assert split_sections(30, "0:30:5")[0] == tuple(z for z in range(30) if z % 5)
    assert split_sections(30, val_fraction=0.1) == (tuple(range(27)), (27, 28, 29))
    assert split_sections(5, val_fraction=0.0) == (tuple(range(5)), ())
    with pytest.raises(OptionError, match="leaves none for training"):
        split_sections(30, "0:30")
    with pytest.raises(OptionError, match="--val-slices '40:50': range 40:50 reaches outside"):
        split_sections(30, "40:50")
    with pytest.raises(OptionError, match="--val-slices '30': section 30 is outside"):
        split_sections(30, "30")
    with pytest.raises(OptionError, match="--val-slices 'a:b': expected indices like 0,5,10 or a range"):
        split_sections(30, "a:b")
    with pytest.raises(OptionError, match="selects no section"):
        split_sections(30, " , ")


def test_scan_labels_checks(arrays):
    _, _, labels = arrays
    summary = scan_labels(labels, [0], label_values=[0, 255])
    assert summary.values == (0, 255) and 0.05 < summary.positive_fraction < 0.5
    with pytest.raises(InputError, match=r"outside the declared --label-values \[0, 1\]"):
        scan_labels(labels, [0], label_values=[0, 1])
    with pytest.raises(InputError, match="no pixel holds a --foreground value"):
        scan_labels(labels, [7])
    flat = zarr.create_array(zarr.storage.MemoryStore(), shape=(2, 8, 8), chunks=(1, 8, 8), dtype="uint8")
    flat[:] = 255
    with pytest.raises(InputError, match="empty label volume"):
        scan_labels(flat, [0])


def test_patch_larger_than_sections_is_refused(arrays):
    _, image, labels = arrays
    with pytest.raises(OptionError, match="larger than the sections"):
        PatchDataset(image, labels, PatchConfig(**{**make_config(image).__dict__, "patch_size": 128}))
