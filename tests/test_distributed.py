"""Predict on dask.distributed: a LocalCluster, a worker killed mid-run, a real scheduler + worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from predict_support import em_like, unet_file, write_volume

from volseg.stages.predict import predict
from volseg.storage.volumes import open_volume

distributed = pytest.importorskip("distributed")

BLOCKS = {"chunks": (1, 48, 48), "block": (1, 48, 48)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small image, a tiny U-Net file and the threads scheduler's output as the reference."""
    root = tmp_path_factory.mktemp("dist")
    image = write_volume(root / "img.zarr", em_like((6, 96, 144), seed=4), (1, 48, 48))
    model = unet_file(root / "model.pt", base=4, depth=2)
    predict(model, image, root / "ref.zarr", scheduler="threads", **BLOCKS)
    return {"root": root, "image": image, "model": model, "ref": open_volume(root / "ref.zarr").array[:]}


def _same(data, out):
    vol = open_volume(out)
    assert vol.complete
    np.testing.assert_array_equal(vol.array[:], data["ref"])


def _spawned_children() -> set[int]:
    import psutil

    found = set()
    for proc in psutil.Process().children():
        cmdline = " ".join(proc.cmdline())
        if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            found.add(proc.pid)
    return found


def test_local_cluster_of_two_workers_survives_a_killed_worker(tmp_path, data):
    """--workers 2 starts a LocalCluster; one worker is killed mid-run, the job completes, identical."""
    out = tmp_path / "p.zarr"
    done_dir = out / ".volseg" / "done"
    before = _spawned_children()
    outcome = {}

    def run():
        try:
            outcome["result"] = predict(data["model"], data["image"], out, workers=2, **BLOCKS)
        except Exception as exc:  # reported below, in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and thread.is_alive():
        if done_dir.is_dir() and len(os.listdir(done_dir)) >= 3:
            break
        time.sleep(0.01)
    workers = sorted(_spawned_children() - before)
    assert len(workers) == 2, workers
    done_at_kill = len(os.listdir(done_dir)) if done_dir.is_dir() else 0
    os.kill(workers[0], signal.SIGKILL)
    thread.join(180)
    assert done_at_kill < 36, "the worker died after the run had finished: nothing was tested"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.plan["scheduler"] == "local-cluster" and result.plan["parallel"] == 2
    assert result.blocks_failed == 0 and result.blocks_written == 36
    _same(data, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_scheduler_and_worker_processes(tmp_path, data):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-dashboard",
        ],
        **quiet,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            address,
            "--nthreads",
            "2",
            "--host",
            "127.0.0.1",
            "--no-dashboard",
            "--no-nanny",
        ],
        **quiet,
    )
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
        out = tmp_path / "p.zarr"
        cmd = [
            sys.executable,
            "-m",
            "volseg",
            "predict",
            str(data["model"]),
            str(data["image"]),
            str(out),
            "--scheduler",
            address,
            "--chunks",
            "1,48,48",
            "--block",
            "1,48,48",
            "--no-progress",
        ]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stderr
        assert "36 blocks written" in run.stdout
        _same(data, out)
    finally:
        for proc in (worker, scheduler):
            proc.send_signal(signal.SIGINT)
        for proc in (worker, scheduler):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
