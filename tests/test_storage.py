"""Volumes on object storage: s3:// on a real S3 server on 127.0.0.1 (moto), memory://, http:// (read only).

Results are compared bitwise with the same commands on local folders; the completion record is objects
(no renames); kill -9 and resume on S3 gives the uninterrupted bytes; the failures a user causes (no bucket,
wrong credentials, a dead endpoint) are one line within seconds.
"""

from __future__ import annotations

import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from predict_support import em_like, unet_file
from s3_support import start_server
from support import cli, one_line_error, write_volume

from volseg.errors import InputError
from volseg.storage import locations
from volseg.storage.locations import Location
from volseg.storage.stores import MissingChunkError
from volseg.storage.volumes import create_volume, open_volume, volume_info

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    proc, server = start_server(tmp_path_factory.mktemp("s3"))
    yield server
    proc.kill()
    proc.wait()


@pytest.fixture(autouse=True)
def _fresh_options():
    locations.configure()
    yield
    locations.configure()


def _stack(tmp_path: Path, shape=(6, 96, 80), seed=0) -> Path:
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, em_like(shape, seed), photometric="minisblack")
    return tif


# ------------------------------------------------------------------------------ memory://
def test_a_volume_in_memory_records_every_block_as_an_object_and_finds_damage():
    url = f"memory://t{time.monotonic_ns()}/a.zarr"
    vol = create_volume(url, (3, 40, 50), "uint8", (1, 16, 16))
    assert isinstance(vol.path, Location) and vol.remote
    for block in vol.block_ids():
        vol.write_block(
            block, np.full([s.stop - s.start for s in vol.block_region(block)], sum(block), np.uint8)
        )
    vol.mark_complete()
    markers = (vol.path / ".volseg" / "done").listdir()
    assert sorted(markers) == sorted(".".join(map(str, b)) for b in vol.block_ids())  # one object per block
    again = open_volume(url)
    assert again.complete and again.done_blocks() == set(vol.block_ids())
    expected = np.add.outer(np.add.outer(np.arange(3), np.arange(40) // 16), np.arange(50) // 16)
    np.testing.assert_array_equal(again.array[:], expected.astype(np.uint8))
    # a lost chunk is damage, not zeros
    locations.remove(vol.path / "0" / "c" / "1" / "2" / "0")
    info = volume_info(url)
    assert info["completion"]["status"] == "damaged" and info["completion"]["missing_examples"] == [
        "0/c/1/2/0"
    ]
    with pytest.raises(MissingChunkError, match="0/c/1/2/0 is missing"):
        np.asarray(open_volume(url).array[1])


def _to_memory(local: Path, kind: str) -> str:
    src = open_volume(local)
    url = f"memory://t{time.monotonic_ns()}/{local.name}"
    vol = create_volume(url, src.shape, src.dtype, src.chunks, kind=kind, voxel_size=src.voxel_size)
    vol.array[:] = src.array[:]
    for block in vol.block_ids():
        vol.mark_done(block)
    vol.mark_complete()
    return url


def test_evaluate_and_preview_read_urls_as_they_read_folders(tmp_path):
    from volseg.stages.evaluate import evaluate
    from volseg.stages.preview import preview

    rng = np.random.default_rng(2)
    truth = (rng.random((3, 64, 64)) > 0.3).astype(np.uint8) * 255
    prob = np.clip(truth.astype(int) + rng.integers(-90, 90, truth.shape), 0, 255).astype(np.uint8)
    t = write_volume(tmp_path / "t.zarr", truth, kind="label")
    p = write_volume(tmp_path / "p.zarr", prob, kind="probability")
    here = evaluate(p, t).to_dict()
    there = evaluate(_to_memory(p, "probability"), _to_memory(t, "label")).to_dict()
    assert here["overall"] == there["overall"] and here["sections"] == there["sections"]
    preview(p, tmp_path / "a.png", overlay=t)
    preview(_to_memory(p, "probability"), tmp_path / "b.png", overlay=_to_memory(t, "label"))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_an_output_url_never_replaces_its_input():
    url = f"memory://t{time.monotonic_ns()}/img.zarr"
    vol = create_volume(url, (1, 16, 16), "uint8", (1, 16, 16))
    vol.write_block((0, 0, 0), np.zeros((1, 16, 16), np.uint8))
    vol.mark_complete()
    from volseg.storage.paths import output_not_input

    for out in (url, url + "/", url + "/inner.zarr", url.rsplit("/", 1)[0]):
        with pytest.raises(Exception, match="never writes over its inputs"):
            output_not_input({"OUT": out}, {"input IMAGE": url})
    output_not_input({"OUT": url + "2"}, {"input IMAGE": url})  # a sibling whose name starts alike: fine


# ---------------------------------------------------------------------------------- s3://
def test_convert_to_s3_is_the_local_volume_and_info_reads_it(s3, tmp_path):
    tif = _stack(tmp_path)
    bucket = s3.bucket("convert")
    url = f"s3://{bucket}/img.zarr"
    local = tmp_path / "img.zarr"
    assert cli("convert", tif, local, "--chunks", "1,32,32").exit_code == 0
    done = cli("--storage", s3.options_file, "convert", tif, url, "--chunks", "1,32,32")
    assert done.exit_code == 0, done.output
    locations.configure(file=s3.options_file)
    remote = open_volume(url)
    assert remote.complete and remote.n_blocks == open_volume(local).n_blocks
    np.testing.assert_array_equal(remote.array[:], open_volume(local).array[:])
    assert remote.voxel_size == open_volume(local).voxel_size
    # the completion record is objects under the volume: one per block, nothing renamed into place
    keys = s3.fs().find(f"{bucket}/img.zarr/.volseg/done")
    assert len(keys) == remote.n_blocks
    shown = cli("--storage", s3.options_file, "info", url, "--json")
    assert shown.exit_code == 0 and '"status": "complete"' in shown.output, shown.output
    # an existing output is refused; --overwrite replaces it; a prefix of other objects is never deleted
    one_line_error(cli("--storage", s3.options_file, "convert", tif, url), "already exists", "--overwrite")
    again = cli("--storage", s3.options_file, "convert", tif, url, "--overwrite", "--chunks", "1,48,48")
    assert again.exit_code == 0 and open_volume(url).chunks == (1, 48, 48)
    s3.fs().pipe_file(f"{bucket}/notes/readme.txt", b"not a volume")
    one_line_error(
        cli("--storage", s3.options_file, "convert", tif, f"s3://{bucket}/notes", "--overwrite"),
        "not a Zarr volume",
        "refusing to delete",
    )
    assert s3.fs().cat_file(f"{bucket}/notes/readme.txt") == b"not a volume"


def _markers(s3, prefix: str) -> int:
    fs = s3.fs()
    fs.invalidate_cache()
    try:
        return len(fs.ls(f"{prefix}/.volseg/done", refresh=True))
    except FileNotFoundError:
        return 0


def test_predict_from_s3_to_s3_survives_kill_9_and_equals_the_local_run(s3, tmp_path):
    from volseg.stages.predict import predict

    data = em_like((4, 128, 128), seed=4)
    image = write_volume(tmp_path / "img.zarr", data, (1, 64, 64))
    model = unet_file(tmp_path / "m.pt", base=8, depth=3)
    bucket = s3.bucket("predict")
    locations.configure(file=s3.options_file)
    remote_image = create_volume(f"s3://{bucket}/img.zarr", data.shape, "uint8", (1, 64, 64))
    remote_image.array[:] = data
    for block in remote_image.block_ids():
        remote_image.mark_done(block)
    remote_image.mark_complete()
    opts = (
        "--block",
        "1,64,64",
        "--no-progress",
        "--device",
        "cpu",
        "--backend",
        "torch",
        "--threshold",
        "0.5",
    )
    out = f"s3://{bucket}/p.zarr"
    cmd = [sys.executable, "-m", "volseg", "predict", str(model), f"s3://{bucket}/img.zarr", out, *opts]
    env = {**ONE_THREAD, "VOLSEG_STORAGE": str(s3.options_file)}  # the options from the environment
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and _markers(s3, f"{bucket}/p.zarr") < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    vol = open_volume(out)
    assert not vol.complete and 0 < len(vol.done_blocks()) < vol.n_blocks
    # resume in worker processes: the storage options travel with the tasks
    resumed = subprocess.run(
        [*cmd, "--scheduler", "processes", "--workers", "2"], capture_output=True, text=True, env=env
    )
    assert resumed.returncode == 0, resumed.stderr
    predict(
        model, image, tmp_path / "ref.zarr", block=(1, 64, 64), device="cpu", backend="torch", threshold=0.5
    )
    np.testing.assert_array_equal(open_volume(out).array[:], open_volume(tmp_path / "ref.zarr").array[:])
    mask = f"s3://{bucket}/p-mask.zarr"
    np.testing.assert_array_equal(
        open_volume(mask).array[:], open_volume(tmp_path / "ref-mask.zarr").array[:]
    )
    assert open_volume(out).complete and open_volume(mask).complete


def test_segment_on_s3_in_two_parts_equals_one_local_run(s3, tmp_path):
    from volseg.stages.segment import PartsPending, SegmentOptions, segment

    rng = np.random.default_rng(7)
    prob = (rng.random((4, 96, 96)) > 0.8).astype(np.uint8) * 255
    src = write_volume(tmp_path / "prob.zarr", prob, (2, 48, 48), "probability", voxel_size=(50, 4, 4))
    opts = SegmentOptions(mode="3d")
    segment(src, tmp_path / "one.zarr", options=opts, scheduler="synchronous")
    bucket = s3.bucket("segment")
    locations.configure(file=s3.options_file)
    remote = create_volume(f"s3://{bucket}/prob.zarr", prob.shape, "uint8", (2, 48, 48), kind="probability")
    remote.array[:] = prob
    for block in remote.block_ids():
        remote.mark_done(block)
    remote.mark_complete()
    out = f"s3://{bucket}/cells.zarr"
    # the parts' locks, side files and pass-1 scratch volume are objects under the output
    run = functools.partial(segment, f"s3://{bucket}/prob.zarr", out, options=opts, scheduler="synchronous")
    with pytest.raises(PartsPending, match="part 1/2 has done its share of pass 1"):
        run(part="1/2", part_wait=0)  # part 2 has not run yet: exit 75 in the CLI
    assert s3.fs().find(f"{bucket}/cells.zarr/.volseg/segment/units")  # pass 1's side files, as objects
    assert not run(part="2/2", part_wait=0).complete  # both passes of its share; part 1's pass 2 is left
    assert run(part="1/2", part_wait=0).complete
    np.testing.assert_array_equal(open_volume(out).array[:], open_volume(tmp_path / "one.zarr").array[:])
    assert not s3.fs().find(f"{bucket}/cells.zarr/.volseg/segment")  # the scratch is gone once complete
    assert not [k for k in s3.fs().find(bucket) if k.endswith((".creating", ".lock"))]


def test_the_creation_lock_is_exclusive_on_s3(s3):
    bucket = s3.bucket("lock")
    locations.configure(file=s3.options_file)
    lock = Location(f"s3://{bucket}/p.zarr.creating")
    assert locations.write_bytes(lock, b"", exclusive=True)
    assert not locations.write_bytes(lock, b"", exclusive=True)  # If-None-Match: the second writer loses
    assert 0 <= locations.age_seconds(lock) < 60
    locations.remove(lock)
    assert locations.age_seconds(lock) is None and locations.write_bytes(lock, b"", exclusive=True)


def test_storage_failures_are_one_line_within_seconds(s3, tmp_path):
    tif = _stack(tmp_path, (2, 32, 32))
    opts = ("--storage", s3.options_file)
    one_line_error(
        cli(*opts, "convert", tif, "s3://no-such-bucket/img.zarr"), "bucket 'no-such-bucket' does not exist"
    )
    one_line_error(
        cli(*opts, "info", "s3://no-such-bucket/img.zarr"), "bucket 'no-such-bucket' does not exist"
    )
    bucket = s3.bucket("errors")
    one_line_error(cli(*opts, "info", f"s3://{bucket}/none.zarr"), "no such volume")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(f'[s3]\nendpoint_url = "{s3.endpoint}"\nkey = "{s3.key}"\nsecret = "not-the-secret"\n')
    for args in (("convert", tif, f"s3://{bucket}/img.zarr"), ("info", f"s3://{bucket}/img.zarr")):
        one_line_error(cli("--storage", wrong, *args), "refused these credentials", "--profile")
    start = time.monotonic()
    with socket_closed() as port:
        dead = ("--endpoint-url", f"http://127.0.0.1:{port}", "--profile", "none")
        one_line_error(
            cli(*dead, "convert", tif, f"s3://{bucket}/img.zarr"), "cannot reach the storage endpoint"
        )
    assert time.monotonic() - start < 10
    bad = tmp_path / "bad.toml"
    bad.write_text("[ftp]\nhost = 1\n")
    one_line_error(cli("--storage", bad, "info", f"s3://{bucket}/x.zarr"), "[ftp] is not a storage protocol")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml", "s.tif", "wrong.toml"]
    assert not s3.fs().ls(bucket)  # nothing was written


class socket_closed:
    """A port on 127.0.0.1 that nothing listens on."""

    def __enter__(self) -> int:
        import socket

        self._s = socket.socket()
        self._s.bind(("127.0.0.1", 0))
        return self._s.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self._s.close()


# -------------------------------------------------------------------------------- http://
@pytest.fixture
def http_root(tmp_path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_predict_reads_an_image_over_http_and_refuses_to_write_there(tmp_path, http_root):
    pytest.importorskip("aiohttp", reason="http:// needs aiohttp")
    from volseg.stages.predict import predict

    data = em_like((3, 96, 96), seed=5)
    write_volume(tmp_path / "img.zarr", data, (1, 48, 48))
    model = unet_file(tmp_path / "m.pt")
    url = f"{http_root}/img.zarr"
    assert open_volume(url).complete
    predict(model, url, tmp_path / "p.zarr", device="cpu", backend="torch")
    predict(model, tmp_path / "img.zarr", tmp_path / "ref.zarr", device="cpu", backend="torch")
    np.testing.assert_array_equal(
        open_volume(tmp_path / "p.zarr").array[:], open_volume(tmp_path / "ref.zarr").array[:]
    )
    one_line_error(cli("predict", model, url, f"{http_root}/out.zarr"), "read only")
    with pytest.raises(InputError, match="no such volume"):
        open_volume(f"{http_root}/none.zarr")
