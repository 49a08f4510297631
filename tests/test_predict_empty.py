"""Blocks whose input is one value (empty resin, a black border) are written as background, not computed.

Only blocks whose whole input window (with the halo) is constant are skipped: a block beside texture sees it
in its halo and is computed, bit for bit as without skipping.
"""

from __future__ import annotations

import numpy as np
import pytest
from predict_support import em_like, unet_file, write_volume
from support import cli
from support import write_volume as write_kind

from volseg.errors import OutputError
from volseg.stages.predict import predict
from volseg.storage.volumes import open_volume

OPTS = {"device": "cpu", "precision": "fp32", "backend": "torch", "block": (1, 64, 64), "chunks": (1, 64, 64)}


@pytest.fixture()
def inputs(tmp_path):
    img = em_like((5, 128, 192), seed=6)
    img[0:2] = 17  # two sections of empty resin
    img[2, :, :64] = 0  # a black border beside texture: its block sees the texture in the halo
    img[3, :, 128:] = 255  # a saturated band wider than the halo on one side only
    image = write_volume(tmp_path / "img.zarr", img, (1, 64, 64))
    return img, image, unet_file(tmp_path / "m.pt", base=4, depth=3)


def test_constant_blocks_are_background_and_every_other_block_is_unchanged(inputs, tmp_path):
    img, image, model = inputs
    full = predict(model, image, tmp_path / "full.zarr", skip_empty=False, **OPTS)
    skip = predict(model, image, tmp_path / "skip.zarr", threshold=0.5, **OPTS)
    a = open_volume(tmp_path / "full.zarr").array[:]
    b = open_volume(tmp_path / "skip.zarr").array[:]
    assert full.blocks_empty == 0 and skip.blocks_written == full.blocks_written == 5 * 2 * 3
    assert skip.blocks_empty == 2 * 2 * 3  # the two resin sections, 6 blocks each
    assert not b[0:2].any() and a[0:2].any()  # background there; the model would have said something
    np.testing.assert_array_equal(a[2:], b[2:])  # border and band blocks see texture: computed as before
    mask = open_volume(tmp_path / "skip-mask.zarr")
    assert mask.complete and not mask.array[0:2].any()
    assert open_volume(tmp_path / "skip.zarr").complete
    assert "12 empty: background" in skip.summary() and "empty: background" not in full.summary()


def test_a_skipping_run_is_not_resumed_by_one_that_computes_everything(inputs, tmp_path):
    _, image, model = inputs
    predict(model, image, tmp_path / "p.zarr", **OPTS)
    with pytest.raises(OutputError, match="skip_empty"):
        predict(model, image, tmp_path / "p.zarr", skip_empty=False, **OPTS)


def test_cli_reports_empty_blocks_and_can_turn_skipping_off(inputs, tmp_path):
    _, image, model = inputs
    args = ["--block", "1,64,64", "--chunks", "1,64,64", "--device", "cpu", "--backend", "torch"]
    args.append("--no-progress")
    on = cli("predict", model, image, tmp_path / "on.zarr", *args)
    assert on.exit_code == 0, on.output
    assert "12 empty: background" in on.stdout
    off = cli("predict", model, image, tmp_path / "off.zarr", "--no-skip-empty", *args)
    assert off.exit_code == 0, off.output
    assert "empty: background" not in off.stdout


# ------------------------------------------------------------------------- --mask
def test_a_coarse_tissue_mask_skips_the_blocks_outside_it_and_leaves_the_rest_unchanged(inputs, tmp_path):
    img, image, model = inputs
    tissue = np.zeros((5, 32, 48), np.uint8)  # a quarter of the resolution in y and x
    tissue[:, :, 16:] = 1  # the left 64 px column of blocks is outside the tissue
    tissue[4] = 0  # and the last section
    mask = write_kind(tmp_path / "tissue.zarr", tissue, (1, 32, 48), "mask")
    predict(model, image, tmp_path / "full.zarr", skip_empty=False, **OPTS)
    masked = predict(model, image, tmp_path / "m.zarr", skip_empty=False, tissue_mask=str(mask), **OPTS)
    a = open_volume(tmp_path / "full.zarr").array[:]
    b = open_volume(tmp_path / "m.zarr").array[:]
    assert masked.blocks_empty == 4 * 2 + 2 * 3  # 2 blocks per section in the left column, and section 4
    assert not b[:, :, :64].any() and not b[4].any()
    np.testing.assert_array_equal(a[:4, :, 64:], b[:4, :, 64:])  # inside: computed whole, as without the mask
    assert open_volume(tmp_path / "m.zarr").complete
    ident = open_volume(tmp_path / "m.zarr").meta["predict"]["identity"]
    assert ident["tissue_mask"] == str(mask.resolve())


def test_a_mask_that_does_not_map_onto_the_image_is_one_line(inputs, tmp_path):
    from support import one_line_error

    _, image, model = inputs
    bad = write_kind(tmp_path / "bad.zarr", np.ones((5, 30, 48), np.uint8), None, "mask")
    result = cli("predict", model, image, tmp_path / "o.zarr", "--mask", bad, "--device", "cpu")
    one_line_error(result, "--mask", "whole factors")
    assert not (tmp_path / "o.zarr").exists()
    missing = cli("predict", model, image, tmp_path / "o.zarr", "--mask", tmp_path / "nope.zarr")
    one_line_error(missing, "nope.zarr")
