"""The CUDA path of ``infer_padded`` (``_run_batches_cuda``), the parts that run on a CPU.

Raw-dtype windows converted and normalised as tensors equal ``_windows``' float32 windows bit for bit; the
pipelined loop, run on a CPU device (ordinary memory, no events), equals the CPU loop bit for bit and
queues batch i + 1 before it stores batch i; the host buffers rotate and wait for their copies. What needs
CUDA (pinned memory, events, uploads) is in tests/test_gpu.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from volseg.nn import inference
from volseg.nn.inference import InferOptions, infer_image, infer_padded, pad_block
from volseg.nn.unet import UNet, UNetConfig

CPU = torch.device("cpu")
NORM = {"mode": "meanstd", "mean": 117.3, "std": 41.7}


def unet(**kw) -> UNet:
    torch.manual_seed(0)
    model = UNet(UNetConfig(**{"base_channels": 4, "depth": 2, **kw}))
    with torch.no_grad():
        model.train()(torch.randn(4, model.config.in_channels, 64, 64))  # batch-norm statistics off defaults
    return model.eval()


def batches_of(padded: np.ndarray, model: nn.Module, halo: int, tile: int, batch_size: int):
    context, divisor = int(model.config.context), int(model.divisor)
    margins = ((halo, halo), (halo, halo))
    shape = inference._inner_shape(padded, halo, context, margins)
    tiles = inference._tiles(shape, tile, divisor, halo, margins, padded.shape[1:])
    return list(inference._batches(tiles, batch_size))


def raw_block(dtype: str, shape=(4, 70, 93), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return (rng.normal(size=shape) * 40 + 120).astype(dtype)
    native = np.dtype(dtype).newbyteorder("=")
    info = np.iinfo(native)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=native).astype(dtype)


# ------------------------------------------------------------ windows and normalisation
ON_THE_GPU = ["uint8", "uint16", "int16", "int8", "int32", "float16", "float32", ">u2"]  # converted there
ON_THE_HOST = ["float64", "int64", "bool"]  # cast to float32 on the host


@pytest.mark.parametrize("dtype", ON_THE_GPU + ON_THE_HOST)
@pytest.mark.parametrize("norm", [NORM, None])
def test_raw_windows_normalised_as_tensors_equal_float_windows_bitwise(dtype, norm):
    model = unet(context=1)
    context, divisor = 1, int(model.divisor)
    padded = raw_block(dtype) if dtype != "bool" else raw_block("uint8") > 127
    batches = batches_of(padded, model, halo=8, tile=24, batch_size=3)
    assert any(b[0].wy % divisor or b[0].wx % divisor for b in batches)  # mirror-completed windows too
    upload = inference._upload_dtype(padded.dtype)
    assert upload == (np.float32 if dtype in ON_THE_HOST else np.dtype(dtype).newbyteorder("="))
    scalars = inference._norm_scalars(None if norm is None else inference.check_normalization(norm), CPU)
    for batch in batches:
        expected = inference._windows(padded, batch, context, divisor, norm)
        shape = inference._window_shape(batch, context, divisor)
        tensor, view = inference._host_buffer(shape, upload, pin=False)
        inference._raw_windows(padded, batch, context, divisor, out=view)
        before = tensor.clone()
        got = inference._model_input(tensor, upload, scalars)
        assert got.dtype == torch.float32 and got.is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_array_equal(got.numpy(), expected, strict=True)
        assert torch.equal(tensor, before)  # the host buffer is read, not written


def test_raw_windows_allocate_in_the_upload_dtype_and_check_the_buffer():
    model = unet()
    padded = raw_block("uint8", (2, 50, 50))
    batch = batches_of(padded, model, 8, 16, 4)[0]
    divisor = int(model.divisor)
    windows = inference._raw_windows(padded, batch, 0, divisor)
    assert windows.dtype == np.uint8 and windows.shape == inference._window_shape(batch, 0, divisor)
    with pytest.raises(ValueError, match="window buffer"):
        inference._raw_windows(padded, batch, 0, divisor, out=np.empty((1, 1, 4, 4), np.uint8))


def test_uint16_travels_as_int16_bits():
    tensor, view = inference._host_buffer((1, 1, 1, 3), np.dtype(np.uint16), pin=False)
    view[:] = [0, 40000, 65535]
    assert tensor.dtype == torch.int16
    got = inference._model_input(tensor, view.dtype, None).numpy()
    np.testing.assert_array_equal(got, np.float32([[[[0, 40000, 65535]]]]), strict=True)


# ------------------------------------------------------------------ the pipelined loop
def pipelined(model, padded, halo, options, norm=None, margins=None, monkeypatch=None):
    """infer_padded with its device taken for CUDA: the CUDA branch, run on the CPU."""
    calls = []

    def run(*args):
        calls.append(args[-1])
        return real(*args[:-1], CPU)

    real = inference._run_batches_cuda
    monkeypatch.setattr(inference, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(inference, "_is_prepared", lambda model, device: True)
    monkeypatch.setattr(inference, "_run_batches_cuda", run)
    try:
        out = infer_padded(model, padded, halo, options, norm, margins)
    finally:
        monkeypatch.undo()
    assert calls == [torch.device("cuda")]  # infer_padded took the CUDA branch
    return out


@pytest.mark.parametrize(
    ("kw", "options"),
    [
        ({}, dict(tile=16, batch_size=3, precision="fp32")),
        ({"context": 1}, dict(tile=24, batch_size=2, precision="fp32", tta=True)),
        ({"out_channels": 3, "upsample": "bilinear"}, dict(tile=16, batch_size=4, precision="fp32")),
        ({"depth": 3}, dict(tile=16, batch_size=5, precision="fp32", activation="none")),
    ],
)
def test_pipelined_loop_equals_the_cpu_loop_bitwise(kw, options, monkeypatch):
    model = unet(**kw)
    image = raw_block("uint8", (3, 45, 61), seed=4)
    norm = NORM
    opts = InferOptions(**options)
    halo, c = model.halo, model.config.context
    padded = pad_block(image, halo, c)
    expected = infer_padded(model, padded, halo, opts, norm)
    got = pipelined(model, padded, halo, opts, norm, monkeypatch=monkeypatch)
    np.testing.assert_array_equal(got, expected, strict=True)
    # and with margins of a block at the section's edge (windows stop there), float32 input
    floats = (padded.astype(np.float32) - 100) / 30
    margins = ((0, 0), (halo, 0))
    block = floats[:, halo:-halo, :-halo]
    expected = infer_padded(model, block, halo, opts, None, margins)
    np.testing.assert_array_equal(pipelined(model, block, halo, opts, None, margins, monkeypatch), expected)


def test_infer_image_unchanged_on_cpu_and_the_cpu_branch_never_pipelines(monkeypatch):
    model = unet()
    image = raw_block("uint8", (2, 40, 40))

    def refuse(*args):
        raise AssertionError("the CPU path ran the CUDA loop")

    monkeypatch.setattr(inference, "_run_batches_cuda", refuse)
    out = infer_image(model, image, InferOptions(tile=16, precision="fp32"), NORM)
    assert out.shape == image.shape


class Recorder(nn.Module):
    """Identity-like model that logs its forward passes: ('forward', first tile) in ``log``."""

    def __init__(self, log: list) -> None:
        super().__init__()
        self.config = SimpleNamespace(context=0, out_channels=1)
        self.divisor, self.halo, self.log = 8, 8, log
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(("forward", x.shape[0]))
        return x * self.weight


def test_batch_i_is_stored_after_batch_i_plus_1_is_queued(monkeypatch):
    log: list = []
    model = Recorder(log)
    padded = raw_block("uint8", (5, 40 + 16, 40 + 16))
    batches = batches_of(padded, model, 8, 16, 2)
    real_store = inference._store

    def store(out, batch, probs):
        log.append(("store", len(batch)))
        real_store(out, batch, probs)

    monkeypatch.setattr(inference, "_store", store)
    out = np.full((1, 5, 40, 40), np.nan, np.float32)
    with torch.inference_mode():
        inference._run_batches_cuda(model, padded, iter(batches), 0, 8, None, "none", False, out, CPU)
    kinds = [k for k, _ in log]
    assert kinds == ["forward"] + ["forward", "store"] * (len(batches) - 1) + ["store"]
    assert len(batches) > 3 and [n for k, n in log if k == "store"] == [len(b) for b in batches]
    np.testing.assert_array_equal(out[0], padded[:, 8:-8, 8:-8].astype(np.float32))


# ------------------------------------------------------------------------ host buffers
class FakeEvent:
    def __init__(self, log: list, name: str) -> None:
        self.log, self.name = log, name

    def synchronize(self) -> None:
        self.log.append(self.name)


def test_host_buffers_rotate_wait_for_their_copy_and_drop_other_shapes():
    log: list = []
    pool = inference._HostBuffers(pin=False, depth=2)
    u8 = np.dtype(np.uint8)
    a = pool.take((2, 3), u8)
    pool.give(a, FakeEvent(log, "a"))
    b = pool.take((2, 3), u8)  # fewer than depth exist: a new one, a's copy may still run
    assert b[0].data_ptr() != a[0].data_ptr() and log == []
    pool.give(b, FakeEvent(log, "b"))
    again = pool.take((2, 3), u8)  # depth reached: the oldest, after its copy finished
    assert again[0].data_ptr() == a[0].data_ptr() and log == ["a"]
    assert again[1].dtype == u8 and again[1].shape == (2, 3) and not again[0].is_pinned()
    pool.give(again)
    other = pool.take((4, 3), u8)  # another geometry: the free ones of (2, 3) are dropped
    assert pool.allocated == 3 and list(pool._free) == [((4, 3), u8)]
    pool.give(other)
    assert pool.take((4, 3), u8)[0].data_ptr() != other[0].data_ptr()  # one of depth 2 so far: a new one
    assert pool.allocated == 4
