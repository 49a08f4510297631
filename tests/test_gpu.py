"""The GPU path, run where CUDA is (``benchmarks/gpu.sh`` runs these first); skipped cleanly everywhere else.

- tiled prediction on the GPU equals a whole-section forward on the GPU, within the precision's tolerance;
- 50 training steps on the GPU learn (the loss falls) and write a model that loads on the CPU;
- ``predict --workers N`` on a machine of N GPUs puts one worker on each GPU and equals the threaded run;
- the CUDA loop of ``infer_padded`` (raw uploads from pinned memory, normalised on the GPU, batches
  overlapped) gives the network the host's float32 windows bit for bit, and equals the blocking loop
  (float32 windows normalised on the host) within the precision's tolerance, with TTA and several classes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from predict_support import em_like, unet_file, write_volume

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
]

#: Probability tolerance of tiled against whole-section output, per precision (fp32 is exact up to rounding).
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 1e-2}


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_tiled_equals_whole_section_on_the_gpu(tmp_path, precision):
    from volseg.nn.inference import InferOptions, infer_image
    from volseg.nn.modelfile import load_model
    from volseg.nn.runtime import resolve_precision

    model = load_model(unet_file(tmp_path / "m.pt"), device="cuda")
    image = em_like((2, 300, 340), seed=5)
    norm = model.volseg_meta["normalization"]
    whole = infer_image(model, image, InferOptions(tile=512, precision=precision, device="cuda"), norm)
    tiled = infer_image(model, image, InferOptions(tile=64, precision=precision, device="cuda"), norm)
    tol = TOLERANCE[resolve_precision("cuda", precision)]
    assert np.abs(tiled - whole).max() <= tol


def test_fifty_training_steps_on_the_gpu(tmp_path):
    from volseg.nn.modelfile import load_model
    from volseg.stages.synth import synth

    stack = synth(tmp_path / "s", shape=(6, 256, 256), seed=2)
    losses: list[float] = []
    result = volseg_train(tmp_path, stack, lambda step, loss: losses.append(loss))
    assert result.steps == 50 and np.mean(losses[-10:]) < np.mean(losses[:10])
    assert load_model(result.model, device="cpu").config.base_channels == 8


def volseg_train(tmp_path, stack, on_step):
    from volseg.stages.train import train

    return train(
        stack.image, stack.membranes, tmp_path / "m.pt",
        steps=50, base_channels=8, depth=3, patch_size=128, batch_size=8, val_slices="5:6",
        device="cuda", workers=0, on_step=on_step,
    )  # fmt: skip


def test_one_predict_worker_per_gpu_equals_threads(tmp_path):
    from volseg.stages.predict import predict
    from volseg.storage.volumes import open_volume

    image = write_volume(tmp_path / "i.zarr", em_like((4, 256, 256), seed=1), (1, 128, 128))
    model = unet_file(tmp_path / "m.pt")
    n = torch.cuda.device_count()
    common = {"device": "cuda", "precision": "fp32", "chunks": (1, 128, 128)}
    predict(model, image, tmp_path / "t.zarr", scheduler="threads", **common)
    predict(model, image, tmp_path / "w.zarr", workers=n, **common)
    a, b = (open_volume(tmp_path / p).data.compute() for p in ("t.zarr", "w.zarr"))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # uint8 probabilities, fp32 on each GPU


# --------------------------------------------------------------- infer_padded's CUDA loop
NORM = {"mode": "meanstd", "mean": 117.3, "std": 41.7}


def small_unet(device: str, **kw):
    from volseg.nn.runtime import prepare_for_inference
    from volseg.nn.unet import UNet, UNetConfig

    torch.manual_seed(0)
    model = UNet(UNetConfig(**{"base_channels": 8, "depth": 3, **kw}))
    with torch.no_grad():
        model.train()(torch.randn(4, model.config.in_channels, 64, 64))  # batch-norm statistics off defaults
    return prepare_for_inference(model, device)


def blocking_loop(model, padded, halo, options, norm):
    """infer_padded's CPU loop run on the GPU: float32 windows normalised on the host, blocking copies."""
    from volseg.nn import inference
    from volseg.nn.runtime import autocast_context

    device = torch.device(options.device)
    context, divisor, channels = model.config.context, model.divisor, model.config.out_channels
    margins = ((halo, halo), (halo, halo))
    shape = inference._inner_shape(padded, halo, context, margins)
    tiles = inference._tiles(shape, options.tile, divisor, halo, margins, padded.shape[1:])
    activation = inference._activation(options.activation, channels)
    out = np.empty((channels, *shape), np.float32)
    with torch.inference_mode(), autocast_context(device, options.precision):
        for batch in inference._batches(tiles, options.batch_size):
            w = inference._windows(padded, batch, context, divisor, norm)
            x = torch.from_numpy(w).to(device).contiguous(memory_format=torch.channels_last)
            probs = inference._forward(model, x, batch[0], activation, options.tta).cpu().numpy()
            for t, p in zip(batch, probs, strict=True):
                out[:, t.z, t.y0 : t.y0 + t.ny, t.x0 : t.x0 + t.nx] = p
    return out[0] if channels == 1 else out


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_raw_uploads_normalised_on_the_gpu_equal_the_host_windows_bitwise(dtype):
    from volseg.nn import inference

    rng = np.random.default_rng(3)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    padded = (
        rng.integers(info.min, info.max, size=(4, 90, 101), endpoint=True, dtype=dtype)
        if info is not None
        else (rng.normal(size=(4, 90, 101)) * 40 + 120).astype(dtype)
    )
    margins = ((16, 16), (16, 16))
    shape = inference._inner_shape(padded, 16, 1, margins)
    tiles = inference._tiles(shape, 32, 8, 16, margins, padded.shape[1:])
    scalars = inference._norm_scalars(NORM, torch.device("cuda"))
    upload = inference._upload_dtype(padded.dtype)
    assert upload == np.dtype(dtype)
    for batch in inference._batches(tiles, 3):
        expected = inference._windows(padded, batch, 1, 8, NORM)
        tensor, view = inference._host_buffer(inference._window_shape(batch, 1, 8), upload, pin=True)
        assert tensor.is_pinned()
        inference._raw_windows(padded, batch, 1, 8, out=view)
        x = tensor.to("cuda", non_blocking=True)
        got = inference._model_input(x, upload, scalars)
        assert got.device.type == "cuda" and got.dtype == torch.float32
        np.testing.assert_array_equal(got.cpu().numpy(), expected, strict=True)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
@pytest.mark.parametrize(
    ("kw", "options"),
    [
        ({}, dict(tile=64, batch_size=4)),
        ({"context": 1}, dict(tile=48, batch_size=3, tta=True)),
        ({"out_channels": 3}, dict(tile=64, batch_size=2)),
    ],
)
def test_cuda_loop_equals_the_blocking_loop(kw, options, precision, monkeypatch):
    from volseg.nn import inference
    from volseg.nn.inference import InferOptions, infer_padded, pad_block
    from volseg.nn.runtime import resolve_precision

    device = f"cuda:{torch.cuda.device_count() - 1}"  # an explicit index: events on that GPU's stream
    model = small_unet(device, **kw)
    image = em_like((3, 300, 340), seed=7)
    padded = pad_block(image, model.halo, model.config.context)
    opts = InferOptions(precision=precision, device=device, **options)
    seen = {"pinned": [], "uploaded": []}
    host_buffer, model_input = inference._host_buffer, inference._model_input

    def spy_buffer(shape, dtype, pin):
        buffer = host_buffer(shape, dtype, pin)
        seen["pinned"].append(buffer[0].is_pinned())
        return buffer

    def spy_input(x, dtype, scalars):
        seen["uploaded"].append((x.device.type, x.dtype))
        return model_input(x, dtype, scalars)

    monkeypatch.setattr(inference, "_host_buffer", spy_buffer)
    monkeypatch.setattr(inference, "_model_input", spy_input)
    got = infer_padded(model, padded, model.halo, opts, NORM)
    monkeypatch.undo()
    expected = blocking_loop(model, padded, model.halo, opts, NORM)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE[resolve_precision(device, precision)]
    assert seen["pinned"] and all(seen["pinned"])
    assert set(seen["uploaded"]) == {("cuda", torch.uint8)}  # uint8 over PCIe, not float32
    if model.config.out_channels > 1:
        np.testing.assert_allclose(got.sum(axis=0), 1.0, atol=1e-3)
