"""SIGTERM / SIGUSR1 (a batch system's notice before the kill): stop taking work, record it, exit 75, resume.

Each test starts the real command in a subprocess, sends the signal once some blocks are recorded, and checks
the exit code (volseg.core.preempt.PREEMPTED_EXIT), the one line on stderr, that the output is incomplete with
the finished blocks recorded, and that the same command resumes to the uninterrupted result.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from predict_support import em_like, unet_file
from support import write_volume

from volseg.core import preempt
from volseg.core.preempt import PREEMPTED_EXIT
from volseg.storage.volumes import open_volume

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def volseg(*args: object) -> list[str]:
    return [sys.executable, "-m", "volseg", *map(str, args)]


def signal_when_done(cmd: list[str], out: Path, at_least: int, signum: int) -> tuple[int, str]:
    """Start ``cmd``, send ``signum`` once ``out`` records ``at_least`` blocks; its exit code and stderr."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    done_dir, deadline = out / ".volseg" / "done", time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if done_dir.is_dir() and len(os.listdir(done_dir)) >= at_least:
            break
        time.sleep(0.005)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def one_line(err: str, *needles: str) -> str:
    """The one error line (progress notes may come before it), holding every needle."""
    errors = [line for line in err.strip().splitlines() if line.startswith("volseg: error:")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]) and "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_the_flag_is_set_by_the_signals_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with preempt.stop_on_signals():
        assert not preempt.requested()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert preempt.requested() and preempt.stop_signal() == "SIGUSR1"
    assert signal.getsignal(signal.SIGTERM) == before
    preempt.reset()
    assert not preempt.requested()


def test_convert_stops_records_and_resumes(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (24, 512, 512), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", data, photometric="minisblack")
    out = tmp_path / "v.zarr"
    cmd = volseg("convert", tmp_path / "s.tif", out, "--chunks", "1,64,64", "--no-progress")
    code, err = signal_when_done(cmd, out, 3, signal.SIGTERM)
    assert code == PREEMPTED_EXIT, err
    one_line(err, "stopped by SIGTERM", "--resume")
    vol = open_volume(out)
    assert not vol.complete and 0 < len(vol.done_blocks()) < vol.n_blocks
    # every recorded block holds its data
    for b in vol.done_blocks():
        np.testing.assert_array_equal(vol.array[vol.block_region(b)], data[vol.block_region(b)])
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    np.testing.assert_array_equal(open_volume(out).array[:], data)
    assert open_volume(out).complete


def test_predict_stops_records_and_resumes_to_the_same_bytes(tmp_path):
    from volseg.stages.predict import predict

    image = write_volume(tmp_path / "img.zarr", em_like((40, 128, 128), seed=1), (1, 64, 64))
    model = unet_file(tmp_path / "m.pt", base=8, depth=3)
    out = tmp_path / "p.zarr"
    opts = ("--block", "1,64,64", "--no-progress", "--device", "cpu", "--backend", "torch")
    cmd = volseg("predict", model, image, out, *opts)
    code, err = signal_when_done(cmd, out, 4, signal.SIGUSR1)
    assert code == PREEMPTED_EXIT, err
    one_line(err, "stopped by SIGUSR1", "rerun the same command")
    vol = open_volume(out)
    assert vol.meta["status"] == "incomplete" and 0 < len(vol.done_blocks()) < vol.n_blocks
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr
    predict(model, image, tmp_path / "ref.zarr", block=(1, 64, 64), device="cpu", backend="torch")
    np.testing.assert_array_equal(open_volume(out).array[:], open_volume(tmp_path / "ref.zarr").array[:])
    assert open_volume(out).complete


def test_segment_stops_records_and_resumes_to_the_same_labels(tmp_path):
    from volseg.stages.segment import segment

    rng = np.random.default_rng(3)
    prob = (rng.random((60, 128, 128)) > 0.8).astype(np.uint8) * 255  # membrane-ish speckle
    src = write_volume(tmp_path / "prob.zarr", prob, (1, 64, 64), "probability", voxel_size=(50, 4, 4))
    out = tmp_path / "cells.zarr"
    cmd = volseg("segment", src, out, "--scheduler", "synchronous")
    code, err = signal_when_done(cmd, out, 4, signal.SIGTERM)
    assert code == PREEMPTED_EXIT, err
    one_line(err, "stopped by SIGTERM", "--resume")
    assert not open_volume(out).complete
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    segment(src, tmp_path / "ref.zarr", scheduler="synchronous")
    np.testing.assert_array_equal(open_volume(out).array[:], open_volume(tmp_path / "ref.zarr").array[:])


def test_predict_on_a_local_cluster_cancels_the_pending_blocks_and_resumes(tmp_path):
    from volseg.stages.predict import predict

    image = write_volume(tmp_path / "img.zarr", em_like((16, 128, 128), seed=2), (1, 64, 64))
    model = unet_file(tmp_path / "m.pt", base=8, depth=3)
    out = tmp_path / "p.zarr"
    opts = ("--block", "1,64,64", "--no-progress", "--device", "cpu", "--backend", "torch")
    cmd = volseg("predict", model, image, out, "--workers", "2", *opts)
    code, err = signal_when_done(cmd, out, 2, signal.SIGTERM)
    assert code == PREEMPTED_EXIT, err
    one_line(err, "stopped by SIGTERM", "not started", "rerun the same command")
    vol = open_volume(out)
    assert vol.meta["status"] == "incomplete" and 0 < len(vol.done_blocks()) < vol.n_blocks
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr
    predict(model, image, tmp_path / "ref.zarr", block=(1, 64, 64), device="cpu", backend="torch")
    np.testing.assert_array_equal(open_volume(out).array[:], open_volume(tmp_path / "ref.zarr").array[:])
