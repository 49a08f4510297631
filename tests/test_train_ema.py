"""``train --ema``: a moving average of the weights is what is validated and saved, and resumes exactly."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from volseg.errors import OptionError
from volseg.nn.modelfile import read_model_file
from volseg.stages.synth import synth
from volseg.stages.train import TrainingInterrupted, train
from volseg.stages.train.config import TrainConfig
from volseg.stages.train.loop import Averaged


def test_average_follows_its_formula_and_copies_counts():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    avg = Averaged(model, 0.9)
    start = model[0].weight.detach().clone()
    expect = start.clone()
    for step in range(1, 6):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model[1].num_batches_tracked += 1
        avg.update(model, step)
        d = min(0.9, (1 + step) / (10 + step))
        expect = d * expect + (1 - d) * model[0].weight.detach()
    torch.testing.assert_close(avg.model[0].weight, expect)
    assert int(avg.model[1].num_batches_tracked) == 5
    assert not avg.model[0].weight.requires_grad


def test_ema_option_is_checked():
    assert TrainConfig().ema == 0.0 and TrainConfig(ema=0.999).ema == 0.999
    with pytest.raises(OptionError, match="--ema 1.0"):
        TrainConfig(ema=1.0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    out = tmp_path_factory.mktemp("ema") / "synth"
    synth(out, shape=(3, 64, 64), seed=4)
    return out


def _interrupt_at(step):
    def on_step(s, loss):
        if s == step:
            os.kill(os.getpid(), signal.SIGINT)  # handled at the end of the step

    return on_step


def _run(stack, out, steps, **extra):
    return train(
        image=str(stack / "image.zarr"), labels=str(stack / "membranes.zarr"), output=str(out), steps=steps,
        patch_size=32, batch_size=2, val_slices="2", val_every=3, workers=0, base_channels=4, depth=2,
        seed=0, ema=0.9, augment="none", **extra,
    )  # fmt: skip


def test_saved_model_is_the_average_and_resume_continues_it_exactly(stack, tmp_path):
    _run(stack, tmp_path / "straight.pt", 6)
    straight = read_model_file(tmp_path / "straight.last.pt")
    trained = straight["training_state"]["trained_weights"]
    name = next(k for k, v in trained.items() if v.dtype.is_floating_point and v.ndim == 4)
    assert not torch.equal(straight["state_dict"][name], trained[name])  # the file holds the average
    with pytest.raises(TrainingInterrupted):  # a real Ctrl-C after step 3, then --resume
        _run(stack, tmp_path / "split.pt", 6, on_step=_interrupt_at(3))
    _run(stack, tmp_path / "split.pt", 6, resume=True)
    split = read_model_file(tmp_path / "split.last.pt")
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, split["state_dict"][key]), key
    for key, value in trained.items():
        assert torch.equal(value, split["training_state"]["trained_weights"][key]), key
    assert np.isfinite(straight["metrics"]["v_rand"])
