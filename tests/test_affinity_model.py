"""Affinity models: targets of the patches, the masked loss, training, prediction into a channel volume.

References: :func:`volseg.core.affinities.affinities` on the labels themselves, a hand-computed loss,
whole-image inference of the same model (:func:`volseg.nn.inference.infer_image`), and the chain on to
``segment --method agglo``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from predict_support import write_volume
from typer.testing import CliRunner

from volseg.app.cli import app
from volseg.core.affinities import affinities, parse_offsets
from volseg.core.augment import AugmentConfig
from volseg.errors import OptionError
from volseg.nn.inference import InferOptions, infer_image
from volseg.nn.modelfile import load_model
from volseg.nn.patches import IntensityStats, PatchConfig, PatchDataset
from volseg.nn.unet import UNet, UNetConfig
from volseg.stages.predict import PredictOptions, predict
from volseg.stages.segment import SegmentOptions, segment
from volseg.stages.train.config import TrainConfig
from volseg.stages.train.losses import masked_loss
from volseg.stages.train.validation import id_boundaries
from volseg.storage.volumes import create_volume, open_volume

OFFSETS = ((0, -1, 0), (0, 0, -1), (-1, 0, 0), (0, -4, 0))
STATS = IntensityStats(mean=0.0, std=1.0, lo=0.0, hi=1.0)


def _cells(shape=(4, 48, 48), seed=0):
    """Cell ids stable through z (columnar Voronoi), with a one-pixel membrane band of 0."""
    rng = np.random.default_rng(seed)
    pts = rng.random((9, 2)) * shape[1:]
    yy, xx = np.mgrid[0 : shape[1], 0 : shape[2]]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    ids = (np.argmin(d, -1) + 1).astype(np.uint32)
    edge = np.zeros(ids.shape, bool)
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    ids[edge] = 0
    return np.repeat(ids[None], shape[0], axis=0)


def _dataset(labels, *, instance_ids, patch=32):
    image = np.zeros(labels.shape, np.float32)
    config = PatchConfig(
        sections=tuple(range(labels.shape[0])), patch_size=patch, foreground=(0,), stats=STATS,
        augment=AugmentConfig.preset("none"), offsets=OFFSETS, instance_ids=instance_ids,
    )  # fmt: skip
    return PatchDataset(image, labels, config)


# ------------------------------------------------------------------------- patches
def test_patch_targets_from_cell_ids_know_the_pairs_across_sections():
    labels = _cells()
    ds = _dataset(labels, instance_ids=True)
    for n in range(6):
        rng = np.random.default_rng([0, n])
        z, ys, xs = ds.window(rng)  # the first draw is the window (no rejection without min_foreground)
        item = ds[n]
        assert item["target"].shape == item["mask"].shape == (len(OFFSETS), 32, 32)
        zs = slice(max(z - 1, 0), z + 1)
        expect, known = affinities(labels[zs, ys, xs], OFFSETS)
        k = 1 if z > 0 else 0
        np.testing.assert_array_equal(item["target"], expect[:, k].astype(np.float32))
        if z > 0:  # the pair with the section before is known, inside the patch
            np.testing.assert_array_equal(item["mask"].astype(bool), known[:, k])
            assert item["mask"][2].all()
        else:  # no section before the first: unknown, masked
            assert not item["mask"][2].any()
        assert not item["mask"][3][:4].any() and item["mask"][3][4:].all()  # (0,-4,0) leaves the patch


def test_patch_targets_from_a_binary_truth_are_per_section():
    cells = _cells()
    binary = np.where(cells > 0, 255, 0).astype(np.uint8)  # ISBI-style: 255 cell, 0 membrane
    item = _dataset(binary, instance_ids=False)[3]
    assert not item["mask"][2].any()  # cells of different sections are unrelated: z pairs unknown
    assert item["mask"][0][1:].all() and item["target"][0].min() == 0 and item["target"][0].max() == 1


def test_masked_loss_counts_only_known_pairs():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    got = masked_loss("bce")(logits, target, mask)
    expect = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2
    assert abs(float(got) - expect) < 1e-6
    changed = masked_loss("bce")(logits, torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]]), mask)
    assert float(changed) == pytest.approx(float(got))  # what the mask hides does not count


def test_config_makes_one_channel_per_offset_and_refuses_the_rest():
    c = TrainConfig(target="affinities", offsets="0,-1,0;0,0,-1;-1,0,0")
    assert c.model.out_channels == 3 and c.offsets == "0,-1,0;0,0,-1;-1,0,0"
    assert TrainConfig(target="affinities").model.out_channels == 9  # the default offsets
    with pytest.raises(OptionError, match="affinities train with bce or bce_dice"):
        TrainConfig(target="affinities", loss="weighted_bce")
    with pytest.raises(OptionError, match="only with --target affinities"):
        TrainConfig(offsets="0,-1,0")


def test_id_boundaries():
    ids = np.array([[[1, 1, 2], [1, 1, 2], [0, 3, 3]]])
    assert id_boundaries(ids).astype(int).tolist() == [[[0, 1, 1], [1, 1, 1], [1, 1, 1]]]


# ------------------------------------------------------------------------- train -> predict -> segment
@pytest.fixture(scope="module")
def affinity_run(tmp_path_factory):
    from volseg.stages.train import train

    tmp = tmp_path_factory.mktemp("aff")
    cells = _cells((4, 64, 64))
    image = np.where(cells > 0, 200, 40).astype(np.uint8)
    write_volume(tmp / "image.zarr", image, (1, 64, 64))
    labels = create_volume(tmp / "cells.zarr", cells.shape, np.uint32, (1, 64, 64), kind="label")
    for b in labels.block_ids():
        labels.write_block(b, cells[labels.block_region(b)])
    labels.mark_complete()
    offsets = "0,-1,0;0,0,-1;-1,0,0;0,-4,0"
    train(
        image=str(tmp / "image.zarr"), labels=str(tmp / "cells.zarr"), output=str(tmp / "m.pt"),
        target="affinities", offsets=offsets, steps=4, patch_size=32, batch_size=2, val_slices="3",
        val_every=4, workers=0, base_channels=4, depth=2, context=1, seed=0, augment="none",
    )  # fmt: skip
    return tmp, cells, offsets


def test_model_file_records_offsets_and_predict_writes_a_channel_volume(affinity_run):
    tmp, cells, offsets = affinity_run
    model = load_model(tmp / "m.pt")
    extra = model.volseg_meta["extra"]
    assert extra["target"] == "affinities" and extra["offsets"] == [list(o) for o in parse_offsets(offsets)]
    assert model.config.out_channels == 4
    predict(tmp / "m.pt", tmp / "image.zarr", tmp / "affs.zarr", PredictOptions(tile=32, dtype="float32"))
    vol = open_volume(tmp / "affs.zarr", channels=True)
    assert vol.kind == "affinity" and vol.channels == 4 and vol.shape == cells.shape and vol.complete
    assert vol.meta["offsets"] == extra["offsets"]
    got = np.asarray(vol.array[:])
    image = np.asarray(open_volume(tmp / "image.zarr").array[:])
    reference = infer_image(
        model, image, InferOptions(tile=32, activation="sigmoid"), model.volseg_meta["normalization"]
    )
    assert reference.shape == got.shape
    np.testing.assert_allclose(got, reference, atol=1e-5)  # blocks and halos = the whole image at once


def test_the_affinities_go_on_to_agglomeration(affinity_run):
    tmp, cells, _ = affinity_run
    predict(tmp / "m.pt", tmp / "image.zarr", tmp / "affs8.zarr", PredictOptions(tile=32))
    assert open_volume(tmp / "affs8.zarr", channels=True).dtype == np.uint8
    result = segment(tmp / "affs8.zarr", tmp / "cells-out.zarr", SegmentOptions(method="agglo", mode="3d"))
    out = np.asarray(open_volume(tmp / "cells-out.zarr").array[:])
    assert result.labels == int(out.max()) and out.shape == cells.shape  # 4 steps: not a good model yet


def test_affinity_model_refuses_what_would_move_or_merge_its_channels(affinity_run):
    tmp, _, _ = affinity_run
    runner = CliRunner()
    for flags, words in ((["--threshold", "0.5"], "--threshold: not with an affinity model"),
                         (["--tta"], "--tta: not with an affinity model")):  # fmt: skip
        args = ["predict", str(tmp / "m.pt"), str(tmp / "image.zarr"), str(tmp / "x.zarr"), *flags]
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and words in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp / "x.zarr").exists()
    with pytest.raises(Exception, match="4 channels per voxel"):  # other stages refuse the channel volume
        open_volume(tmp / "affs8.zarr")


def test_unet_with_one_output_per_offset():
    model = UNet(UNetConfig(base_channels=4, depth=2, out_channels=4)).eval()
    out = infer_image(model, np.zeros((1, 32, 32), np.float32), InferOptions(tile=32, activation="sigmoid"))
    assert out.shape == (4, 1, 32, 32) and ((out > 0) & (out < 1)).all()
