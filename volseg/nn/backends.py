"""Other CPU runtimes for the U-Net's forward pass: OpenVINO and ONNX Runtime (optional extras).

On CPUs without native bf16 they run the same fp32 network faster than torch eager, most of all on large
windows (docs/tuning.md: OpenVINO about 2x torch's best output rate on the 2-core AVX2 machine). The model is
exported once per process to ONNX (dynamic batch and window size) and wrapped in :class:`ExportedModel`, a
module that keeps the torch network's attributes (divisor, halo, config, metadata), so that tiled inference
(:mod:`volseg.nn.inference`) runs it unchanged; outputs equal torch's within about 1e-7.

Install with ``pip install "volseg[openvino]"`` or ``pip install "volseg[onnxruntime]"``.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from volseg.errors import OptionError

__all__ = ["BACKENDS", "ExportedModel", "check_backend", "installed", "wrap"]

BACKENDS = ("torch", "openvino", "onnxruntime")
_PACKAGES = {"openvino": ("openvino", "onnx"), "onnxruntime": ("onnxruntime", "onnx")}


def installed(backend: str) -> bool:
    """Whether ``backend`` can run here: torch always, the others when their packages are installed."""
    return backend == "torch" or all(importlib.util.find_spec(p) is not None for p in _PACKAGES[backend])


def check_backend(backend: str, device: str = "cpu") -> str:
    """Refuse a backend that is unknown, not installed, or asked for on a GPU (one line, with the fix)."""
    if backend not in BACKENDS:
        raise OptionError(f"--backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return backend
    missing = [p for p in _PACKAGES[backend] if importlib.util.find_spec(p) is None]
    if missing:
        raise OptionError(
            f"--backend {backend}: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
            "installed; "
            f"pip install 'volseg[{backend}]', or use --backend torch"
        )
    if str(device).split(":")[0] not in ("cpu", "auto"):
        raise OptionError(
            f"--backend {backend} runs on the CPU; use --device cpu, or --backend torch on a GPU"
        )
    return backend


def _onnx_bytes(net: nn.Module) -> bytes:
    size = 8 * int(net.divisor)
    x = torch.zeros(1, int(net.config.in_channels), size, size)
    buf = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(), (x,), buf, dynamo=False, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": axes, "y": axes},
        )  # fmt: skip
    return buf.getvalue()


def _plain(net: nn.Module) -> nn.Module:
    """A CPU copy of ``net`` in the default memory format: exported from channels_last weights, the graph
    ran OpenVINO at less than half the speed (6.3 against 2.8 s for a 2144^2 window, 2-core AVX2)."""
    return copy.deepcopy(net).cpu().to(memory_format=torch.contiguous_format)


def _runner(backend: str, onnx: bytes, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    if backend == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"x": x})[0]
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}  # fp32: equal to torch's output
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(onnx, b""), "CPU", config)
    # Threads may call at once, and a request serves one call at a time: idle requests wait in a pool and
    # a new one is made only when all are busy. A request keeps what it built for the shapes it ran (the
    # first call of a shape takes about a third longer), so when calls come one at a time (predict's serial
    # layout) a single request serves them all.
    idle: list[Any] = []
    lock = threading.Lock()

    def run(x: np.ndarray) -> np.ndarray:
        with lock:
            request = idle.pop() if idle else compiled.create_infer_request()
        try:
            request.infer([x])
            return np.array(request.get_output_tensor(0).data, copy=True)
        finally:
            with lock:
                idle.append(request)

    return run


class ExportedModel(nn.Module):
    """The torch U-Net run by another runtime; every attribute but ``forward`` is the torch network's."""

    def __init__(self, net: nn.Module, backend: str, threads: int | None = None) -> None:
        super().__init__()
        self.net = net.eval()
        self.backend = backend
        self._run = _runner(backend, _onnx_bytes(_plain(net)), threads)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["net"], name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(np.asarray(self._run(array))).to(x.device)


def wrap(net: nn.Module, backend: str, threads: int | None = None) -> nn.Module:
    """``net`` itself for ``torch``, else an :class:`ExportedModel` running on ``backend``."""
    return net if backend == "torch" else ExportedModel(net, check_backend(backend), threads)
