"""U-Net config, receptive field, model file (save / load / refusal of unsafe files)."""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import zipfile

import numpy as np
import pytest
import torch

from volseg.errors import ModelError, OptionError
from volseg.nn.intensity import normalize
from volseg.nn.modelfile import FORMAT_VERSION, load_model, model_checksum, read_model_file, save_model
from volseg.nn.runtime import autocast_context, resolve_precision
from volseg.nn.unet import UNet, UNetConfig
from volseg.storage.conventions import Convention

NORM = {"mode": "meanstd", "mean": 120.0, "std": 30.0}


def tiny(**kw) -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(**{"base_channels": 4, "depth": 2, **kw})).eval()


def save(path, model, **kw):
    args = dict(
        normalization=NORM,
        convention=Convention(foreground=(0,), foreground_kind="boundary"),
        provenance={"sources": ["a.tif"]},
        metrics={"val_dice": np.float32(0.5)},
        train_config={"steps": 3, "lr": 1e-3},
    )
    return save_model(path, model, **{**args, **kw})


# ---------------------------------------------------------------------------- config
def test_config_round_trip_and_in_channels():
    cfg = UNetConfig(context=2, out_channels=3, base_channels=8, depth=3, norm="group", upsample="bilinear")
    assert cfg.in_channels == 5
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(OptionError, match="in_channels=3 does not match context=2"):
        UNetConfig.from_dict({**cfg.to_dict(), "in_channels": 3})
    with pytest.raises(OptionError, match="unknown keys"):
        UNetConfig.from_dict({"widht": 3})
    with pytest.raises(OptionError, match="norm='layer'"):
        UNetConfig(norm="layer")


@pytest.mark.parametrize(
    "kw",
    [
        {"context": 1, "out_channels": 3},
        {"norm": "group", "upsample": "bilinear", "dropout": 0.2},
        {"norm": "instance", "convs_per_level": 1},
        {"norm": "none", "depth": 1},
    ],
)
def test_forward_shapes(kw):
    model = tiny(**kw)
    x = torch.randn(2, model.config.in_channels, 32, 48)
    assert model(x).shape == (2, model.config.out_channels, 32, 48)
    assert model.divisor == 2**model.config.depth
    assert model.tile_exact == (model.config.norm in ("batch", "none"))


def test_check_input_size_names_nearest_sizes():
    model = UNet(UNetConfig(base_channels=1, depth=4))
    with pytest.raises(OptionError, match=r"^tile 250 is not a multiple of 16 \(depth 4\); use 240 or 256$"):
        model.check_input_size(250, 256, name="tile")
    with pytest.raises(OptionError, match="input 8 is not a multiple of 16 .*use 16"):
        model(torch.zeros(1, 1, 16, 8))
    model.check_input_size(32, 64)


# ------------------------------------------------------------------- receptive field
@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_receptive_field_matches_gradient_footprint(upsample):
    """Per pooling phase, the input columns with non-zero gradient for one output pixel (union
    over random inputs, so that max-pool and ReLU paths are all taken) reach exactly as far as
    the walked receptive field."""
    torch.manual_seed(1)
    model = UNet(UNetConfig(base_channels=4, depth=2, upsample=upsample)).eval().double()
    d, n = model.divisor, 96
    x = torch.randn(16, 1, n, n, dtype=torch.float64, requires_grad=True)
    out = model(x)
    left, right = model.receptive_field_extent()
    c = n // 2  # a multiple of the divisor: output c + p has phase p
    for p in range(d):
        (grad,) = torch.autograd.grad(out[:, 0, c, c + p].sum(), x, retain_graph=True)
        cols = np.nonzero(grad.abs().sum(dim=(0, 1, 2)).numpy())[0]
        assert (c + p - cols.min(), cols.max() - c - p) == (left[p], right[p])
    assert model.receptive_field == int((left + right).max()) + 1
    assert model.rf_radius == max(left.max(), right.max())
    assert model.halo % d == 0
    # the halo covers every phase of a grid-aligned window, and no smaller multiple would
    phase = np.arange(d)
    assert (model.halo + phase >= left).all() and (model.halo + phase[::-1] >= right).all()
    h = model.halo - d
    assert not ((h + phase >= left).all() and (h + phase[::-1] >= right).all())


def test_receptive_field_default_model():
    model = UNet(UNetConfig(base_channels=1))  # depth 4: the walk depends on the layers only
    assert (model.receptive_field, model.rf_radius, model.halo) == (204, 107, 96)


# ---------------------------------------------------------------------- precision
def test_precision_resolution():
    assert resolve_precision("cpu", "fp32") == "fp32"
    assert resolve_precision("cpu", "auto") in ("bf16", "fp32")
    with pytest.raises(OptionError, match="precision 'half'"):
        resolve_precision("cpu", "half")
    with autocast_context("cpu", "bf16"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16


def test_normalize():
    raw = np.array([[90, 120, 150]], dtype=np.uint8)
    out = normalize(raw, NORM)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[-1.0, 0.0, 1.0]])
    with pytest.raises(OptionError, match="normalization"):
        normalize(raw, {"mode": "meanstd", "mean": 0.0, "std": 0.0})


# ----------------------------------------------------------------------- model file
def test_save_load_round_trip(tmp_path):
    model = tiny(context=1, out_channels=2)
    model.train()
    model(torch.randn(2, 3, 16, 16))  # move batch-norm statistics away from their defaults
    model.eval()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(1, 3, 16, 16)).sum().backward()
    opt.step()
    rng = np.random.default_rng(5)
    state = {
        "step": 7,
        "optimizer": opt.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": rng.bit_generator.state,
            "python": random.getstate(),
        },
    }
    path = save(tmp_path / "m.pt", model, training_state=state, extra={"array": np.arange(3)})
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # no temporary file left

    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["format_version"] == FORMAT_VERSION and raw["training_state"]["step"] == 7
    loaded = load_model(path)
    assert not loaded.training and loaded.config == model.config
    meta = loaded.volseg_meta
    assert meta["normalization"] == NORM and meta["foreground"] == [0]
    assert meta["metrics"] == {"val_dice": 0.5} and "state_dict" not in meta and "training_state" not in meta
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)

    restored = read_model_file(path)["training_state"]
    opt2 = torch.optim.Adam(loaded.parameters())
    opt2.load_state_dict(restored["optimizer"])
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = restored["rng"]["numpy"]
    assert rng2.integers(1 << 30) == rng.integers(1 << 30)
    assert model_checksum(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_save_refuses_objects_that_would_not_load_safely(tmp_path):
    with pytest.raises(OptionError, match=r"extra\['when'\] is a object"):
        save(tmp_path / "m.pt", tiny(), extra={"when": object()})
    assert not list(tmp_path.iterdir())


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickles_are_refused_and_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    as_pickle = tmp_path / "evil.pkl"
    as_pickle.write_bytes(pickle.dumps({"format": "volseg-model", "x": _Payload(marker)}, protocol=2))
    as_torch = tmp_path / "evil.pt"
    torch.save({"format": "volseg-model", "format_version": 1, "x": _Payload(marker)}, as_torch)
    for path in (as_pickle, as_torch):
        with pytest.raises(ModelError) as err:
            load_model(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_bad_model_files(tmp_path):
    model = tiny()
    cases = {
        "missing": tmp_path / "nope.pt",
        "folder": tmp_path / "image.zarr",
        "random": tmp_path / "random.pt",
        "state_dict": tmp_path / "plain.pt",
        "zip": tmp_path / "other.zip",
    }
    cases["folder"].mkdir()
    (cases["folder"] / "zarr.json").write_text("{}")
    cases["random"].write_bytes(np.random.default_rng(0).bytes(1000))
    torch.save(model.state_dict(), cases["state_dict"])
    with zipfile.ZipFile(cases["zip"], "w") as z:
        z.writestr("a.txt", "hello")
    expected = {
        "missing": "no such file",
        "folder": "is a folder",
        "random": "not a volseg model",
        "state_dict": "plain state_dict",
        "zip": "not a volseg model",
    }
    for name, path in cases.items():
        with pytest.raises(ModelError, match=expected[name]):
            load_model(path)

    newer = save(tmp_path / "newer.pt", model)
    data = torch.load(newer, weights_only=True)
    torch.save({**data, "format_version": 99}, newer)
    with pytest.raises(ModelError, match="format version 99 is not supported"):
        load_model(newer)
    torch.save({**data, "format_version": 1, "config": {**data["config"], "depth": 3}}, newer)
    with pytest.raises(ModelError, match="damaged or inconsistent"):
        load_model(newer)
