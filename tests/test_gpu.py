"""The GPU path, run where CUDA is (``benchmarks/gpu.sh`` runs these first); skipped cleanly everywhere else.

- tiled prediction on the GPU equals a whole-section forward on the GPU, within the precision's tolerance;
- 50 training steps on the GPU learn (the loss falls) and write a model that loads on the CPU;
- ``predict --workers N`` on a machine of N GPUs puts one worker on each GPU and equals the threaded run.
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
