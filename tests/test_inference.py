"""Tiled inference equals whole-section inference; identity models come back exactly."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from volseg.core import tiling
from volseg.core.tiling import round_up
from volseg.errors import OptionError
from volseg.nn.inference import InferOptions, infer_image, infer_padded, pad_block
from volseg.nn.intensity import normalize
from volseg.nn.unet import UNet, UNetConfig

FP32 = dict(precision="fp32", activation="none")


class Shift(nn.Module):
    """Identity-like model: returns the centre section + 1 (dihedral-equivariant, any size)."""

    def __init__(self, context: int = 0, halo: int = 16, divisor: int = 16) -> None:
        super().__init__()
        self.config = SimpleNamespace(context=context, out_channels=1)
        self.divisor, self.halo = divisor, halo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2] % self.divisor == 0 and x.shape[-1] % self.divisor == 0
        c = self.config.context
        return x[:, c : c + 1] + 1


def unet(**kw) -> UNet:
    torch.manual_seed(0)
    model = UNet(UNetConfig(**{"base_channels": 4, "depth": 2, **kw}))
    x = torch.randn(4, model.config.in_channels, 64, 64)
    with torch.no_grad():
        model.train()(x)  # batch-norm statistics off their defaults
        model.head.weight /= model.eval()(x).std()  # logits of unit spread: 1e-4 means something
    return model


def whole_forward(model: UNet, image: np.ndarray, edge: int = 0) -> np.ndarray:
    """Reference: one forward over each whole section, ``edge`` px mirrored (no tiling), logits."""
    h, c = edge, model.config.context
    padded = pad_block(image, h, c)
    pad_y = round_up(padded.shape[1], model.divisor) - padded.shape[1]
    pad_x = round_up(padded.shape[2], model.divisor) - padded.shape[2]
    padded = np.pad(padded, ((0, 0), (0, pad_y), (0, pad_x)), mode="symmetric").astype(np.float32)
    stack = np.stack([padded[z : z + 2 * c + 1] for z in range(image.shape[0])])
    with torch.no_grad():
        out = model(torch.from_numpy(stack))
    out = out[:, :, h : h + image.shape[1], h : h + image.shape[2]].transpose(0, 1).numpy()
    return out[0] if model.config.out_channels == 1 else out


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 45, 61)).astype(np.float32)


# ------------------------------------------------------------------ identity models
def test_identity_through_tiler_on_odd_shapes():
    rng = np.random.default_rng(1)
    padded = rng.normal(size=(3, 333 + 32, 517 + 32)).astype(np.float32)
    out = infer_padded(Shift(), padded, 16, InferOptions(tile=64, batch_size=3, **FP32))
    assert out.shape == (3, 333, 517) and out.dtype == np.float32
    np.testing.assert_array_equal(out, padded[:, 16:-16, 16:-16] + 1)


def test_identity_with_z_context_and_tta():
    rng = np.random.default_rng(2)
    padded = rng.integers(0, 255, size=(4 + 2, 37 + 32, 50 + 32)).astype(np.uint8)
    out = infer_padded(Shift(context=1), padded, 16, InferOptions(tile=32, tta=True, **FP32))
    np.testing.assert_allclose(out, padded[1:-1, 16:-16, 16:-16] + 1.0, rtol=0, atol=1e-5)


def test_normalization_is_applied_to_raw_input():
    raw = np.random.default_rng(3).integers(0, 255, size=(1, 40, 40)).astype(np.uint8)
    norm = {"mode": "meanstd", "mean": 100.0, "std": 50.0}
    got = infer_image(Shift(halo=0), raw, InferOptions(tile=16, **FP32), normalization=norm)
    np.testing.assert_array_equal(got, normalize(raw, norm) + 1)


# ----------------------------------------------------------------------- real U-Net
@pytest.mark.parametrize(
    ("kw", "edge"), [({}, 0), ({}, None), ({"depth": 3, "upsample": "bilinear"}, 0), ({"depth": 3}, 8)]
)
def test_tiled_equals_whole_section_for_every_tile_size(image, kw, edge):
    model = unet(**kw)
    edge = model.halo if edge is None else edge  # None: the U-Net paper's mirroring of the whole halo
    reference = whole_forward(model, image, edge)
    tiles = [model.divisor * k for k in (2, 5, 8)]
    results = {t: infer_image(model, image, InferOptions(tile=t, edge=edge, **FP32)) for t in tiles}
    for tile, result in results.items():
        assert np.abs(result - reference).max() < 1e-4, tile
        assert np.abs(result - results[tiles[-1]]).max() < 1e-4, tile
    assert reference.std() > 0.3  # the comparison is not between constants


def test_one_pooling_cell_less_halo_shows_seams(image):
    """model.halo is the smallest that works: with positive weights every path carries signal, and
    one divisor less changes the output at tile seams 100x more than float rounding."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, depth=2, norm="none")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    positive = image - image.min()

    def seam(halo: int) -> float:
        # edge = halo: every tile seam sees mirrored context, as in the U-Net paper's tiling
        opts = [InferOptions(tile=t, halo=halo, edge=model.halo, **FP32) for t in (8, 32)]
        a, b = (infer_image(model, positive, o) for o in opts)
        return float(np.abs(a - b).max() / a.std())

    assert seam(model.halo) < 1e-4 < 1e-3 < seam(model.halo - model.divisor)


@pytest.mark.parametrize("edge", [0, None])
def test_blocks_with_neighbour_halos_equal_whole_sections(image, edge):
    """The predict stage's composition: blocks on the divisor grid, each with its neighbours' halo,
    windows clipped to the section's frame (``edge`` mirrored pixels beyond the volume)."""
    model = unet(context=1)
    h, c, d, chunk = model.halo, 1, model.divisor, 5 * model.divisor
    e = h if edge is None else edge
    options = InferOptions(tile=2 * d, edge=e, **FP32)
    padded = pad_block(image, h, c)  # room for any window: global y is padded y - h
    (ny, nx), out = image.shape[1:], np.full_like(image, np.nan)
    for y0 in range(0, ny, chunk):
        for x0 in range(0, nx, chunk):
            y1, x1 = min(y0 + chunk, ny), min(x0 + chunk, nx)
            wy = tiling.aligned_window(y0, y1, h, d, ny, e)
            wx = tiling.aligned_window(x0, x1, h, d, nx, e)
            block = padded[:, wy.lo + h : wy.hi + h, wx.lo + h : wx.hi + h]
            margins = ((wy.origin - wy.lo, wy.hi - y1), (wx.origin - wx.lo, wx.hi - x1))
            out[:, y0:y1, x0:x1] = infer_padded(model, block, h, options, margins=margins)
    assert np.abs(out - infer_image(model, image, options)).max() < 1e-5
    assert np.abs(out - whole_forward(model, image, e)).max() < 1e-4


def test_batch_size_does_not_change_result(image):
    model = unet()
    one = infer_image(model, image, InferOptions(tile=16, batch_size=1, **FP32))
    many = infer_image(model, image, InferOptions(tile=16, batch_size=7, **FP32))
    assert np.abs(one - many).max() < 1e-5


def test_probabilities_bf16_and_training_mode_restored(image):
    model = unet()
    model.train()
    fp32 = infer_image(model, image, InferOptions(tile=32, precision="fp32"))
    bf16 = infer_image(model, image, InferOptions(tile=32, precision="bf16"))
    assert model.training  # restored
    assert fp32.min() >= 0 and fp32.max() <= 1
    assert np.abs(bf16 - fp32).max() < 0.05
    np.testing.assert_allclose(fp32, 1 / (1 + np.exp(-whole_forward(model.eval(), image))), atol=1e-5)


def test_multiclass_2p5d_shapes_and_tta(image):
    model = unet(context=1, out_channels=3, upsample="bilinear")
    probs = infer_image(model, image, InferOptions(tile=32, precision="fp32", tta=True))
    assert probs.shape == (3, *image.shape)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    other_tiles = infer_image(model, image, InferOptions(tile=8, precision="fp32", tta=True))
    assert np.abs(other_tiles - probs).max() < 1e-4  # flipped windows stay on the pooling grid
    logits = infer_image(model, image, InferOptions(tile=32, **FP32))
    np.testing.assert_allclose(logits, whole_forward(model, image), atol=1e-4)


def test_bad_arguments():
    model = unet()
    block = np.zeros((1, 40 + 2 * model.halo, 40 + 2 * model.halo), np.float32)
    with pytest.raises(OptionError, match=r"tile 22 is not a multiple of 4 \(depth 2\); use 20 or 24"):
        infer_padded(model, block, model.halo, InferOptions(tile=22))
    with pytest.raises(OptionError, match=r"halo 22 is not a multiple of 4 \(depth 2\); use 20 or 24"):
        infer_padded(model, block[:, 2:-2, 2:-2], model.halo - 2, InferOptions(tile=16))
    with pytest.raises(OptionError, match="too small"):
        infer_padded(model, block[:, :20, :20], model.halo, InferOptions(tile=16))
    with pytest.raises(OptionError, match="softmax"):
        infer_padded(model, block, model.halo, InferOptions(activation="softmax"))
    with pytest.raises(OptionError, match="batch_size"):
        InferOptions(batch_size=0)
