"""predict --backend openvino / onnxruntime: equal to torch; refused where not installed or on a GPU."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from predict_support import em_like, unet_file, write_volume
from support import cli, one_line_error

from volseg.errors import OptionError
from volseg.nn.backends import check_backend
from volseg.stages.predict import PredictOptions, predict
from volseg.storage.volumes import open_volume

INSTALLED = [
    b for b in ("openvino", "onnxruntime") if importlib.util.find_spec(b) and importlib.util.find_spec("onnx")
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("backends")
    image = write_volume(root / "i.zarr", em_like((2, 150, 170), seed=4), (1, 64, 64))
    return root, image, unet_file(root / "m.pt", base=4, depth=3)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_backend_equals_torch(inputs, backend, tmp_path):
    if backend not in INSTALLED:
        pytest.skip(f"{backend} is not installed (pip install 'volseg[{backend}]')")
    _, image, model = inputs
    opts = {"device": "cpu", "precision": "fp32", "dtype": "float32", "chunks": (1, 64, 64), "tile": 64}
    predict(model, image, tmp_path / "t.zarr", **opts)
    predict(model, image, tmp_path / "b.zarr", backend=backend, **opts)
    a, b = (open_volume(tmp_path / n).data.compute() for n in ("t.zarr", "b.zarr"))
    assert np.abs(a - b).max() < 1e-5  # tiled, halo and edges as torch: only float rounding differs
    assert open_volume(tmp_path / "b.zarr").meta["predict"]["settings"]["backend"] == backend


def test_unknown_missing_or_gpu_backends_are_refused(monkeypatch):
    with pytest.raises(OptionError, match="--backend 'tensorrt': use one of torch, openvino, onnxruntime"):
        check_backend("tensorrt")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a)
    )
    missing = r"openvino( and onnx are| is) not installed; pip install 'volseg\[openvino\]'"
    with pytest.raises(OptionError, match=missing):
        PredictOptions(backend="openvino")
    monkeypatch.setattr(importlib.util, "find_spec", real)
    if "onnxruntime" in INSTALLED:
        with pytest.raises(OptionError, match="runs on the CPU; use --device cpu"):
            PredictOptions(backend="onnxruntime", device="cuda")


def test_cli_backend_choice_is_checked(inputs):
    _, image, model = inputs
    one_line_error(cli("predict", model, image, inputs[0] / "x.zarr", "--backend", "nope"), "--backend")
