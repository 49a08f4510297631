"""segment --part K/N: N independent jobs (a job array) share both passes; together they write one run."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.segmentation import find_boundaries
from support import cli, one_line_error, same_partition, write_volume

import volseg.stages.segment.passes as seg
from volseg.core.preempt import Preempted
from volseg.core.segmentation import segment_array
from volseg.errors import IncompleteRunError, OptionError, OutputError
from volseg.stages.segment import PartsPending, SegmentOptions, segment
from volseg.stages.segment.parts import PART_WAIT_S
from volseg.storage.shares import segment_part_rows
from volseg.storage.volumes import open_volume, volume_info

MODES = {
    "2d": SegmentOptions(sigma=0.5),
    "2d-relabel": SegmentOptions(sigma=0.5, relabel=True),
    "3d": SegmentOptions(mode="3d", sigma=1.0, min_size=10, threshold=0.48),
}
RUN = {"scheduler": "synchronous"}


def _cells(shape, n_cells, seed):
    """Voronoi cells in each section with thick membranes and noise: a membrane probability, uint8."""
    rng = np.random.default_rng(seed)
    prob = np.zeros(shape, np.float32)
    for k in range(shape[0]):
        pts = np.zeros(shape[1:], np.int32)
        coords = rng.integers(0, shape[1:], size=(n_cells, 2))
        pts[coords[:, 0], coords[:, 1]] = np.arange(1, n_cells + 1)
        _, (iy, ix) = ndi.distance_transform_edt(pts == 0, return_indices=True)
        membrane = find_boundaries(pts[iy, ix], mode="thick")
        prob[k] = np.clip(membrane * 0.9 + rng.normal(0, 0.08, shape[1:]), 0, 1)
    return (prob * 255).astype(np.uint8)


def _input(tmp_path, mode):
    if mode == "3d":  # smooth random interiors: objects run across every kind of block face
        rng = np.random.default_rng(4)
        prob = (ndi.gaussian_filter(rng.random((6, 32, 40)), (0, 2, 2)) * 255).astype(np.uint8)
        chunks = (2, 16, 16)
    else:
        prob, chunks = _cells((7, 40, 44), 6, seed=2), (1, 20, 22)
    path = write_volume(tmp_path / "p.zarr", prob, chunks, "probability", voxel_size=(50, 4, 4))
    return path, prob


def _labels(path):
    return open_volume(path).array[:]


def _single(tmp_path, src, opts):
    segment(src, tmp_path / "one.zarr", options=opts, **RUN)
    return _labels(tmp_path / "one.zarr")


def _check_reference(labels, prob, opts):
    """The reference of tests/test_segment.py: whole-array segmentation (3-D: up to the numbering)."""
    reference = segment_array(prob / 255.0, opts)
    if opts.mode == "3d":
        assert same_partition(labels, reference) and labels.max() == len(np.unique(labels)) - 1
    else:
        np.testing.assert_array_equal(labels, reference)


def _parts_done(out):
    vol = open_volume(out)
    record = vol.meta["segment"]
    opts = record["options"]
    sparse = opts["mode"] == "2d" and not opts["relabel"]
    rows = segment_part_rows(vol, record["parts"], opts["mode"], sparse)
    assert volume_info(out)["completion"]["parts"] == rows  # what 'volseg info' shows
    return rows


# ------------------------------------------------------------------ one after another
@pytest.mark.parametrize("mode,n", [("2d", 2), ("2d-relabel", 3), ("3d", 2), ("3d", 3)])
def test_parts_one_after_another_write_exactly_the_single_run(tmp_path, mode, n):
    src, prob = _input(tmp_path, mode)
    opts = MODES[mode]
    single = _single(tmp_path, src, opts)
    out, second_pass = tmp_path / "parts.zarr", mode != "2d"
    results, pending = [], []
    for k in range(n, 0, -1):  # any order: here from the last part
        try:
            results.append(segment(src, out, options=opts, part=f"{k}/{n}", part_wait=0, **RUN))
        except PartsPending as exc:  # its pass 1 is done, the other parts' not yet
            assert second_pass and f"part {k}/{n} has done its share of pass 1" in str(exc)
            pending.append(k)
    if second_pass:
        assert pending == list(range(n, 1, -1))  # all but the last to run wait for the others' pass 1
        assert [r.complete for r in results] == [False]  # the last did pass 1 and its pass-2 share
        for k in pending:
            results.append(segment(src, out, options=opts, part=f"{k}/{n}", part_wait=0, **RUN))
    assert [r.complete for r in results] == [False] * (n - 1) + [True]  # the last to finish completes it
    vol = open_volume(out)
    assert vol.complete and sum(r.blocks for r in results) == vol.n_blocks
    assert {r.part for r in results} == {f"{k}/{n}" for k in range(1, n + 1)}
    np.testing.assert_array_equal(_labels(out), single)  # bitwise the single run
    _check_reference(single, prob, opts)
    assert vol.meta["labels"] == open_volume(tmp_path / "one.zarr").meta["labels"]
    assert not (out / ".volseg" / "segment").exists() and not (tmp_path / "parts.zarr.creating").exists()
    rows = _parts_done(out)
    assert [r["part"] for r in rows] == [f"{k}/{n}" for k in range(1, n + 1)]
    assert all(r["units_done"] == r["units"] and r["blocks_done"] == r["blocks"] for r in rows)


def test_progress_of_each_part_is_seen_in_its_share(tmp_path):
    src, _ = _input(tmp_path, "3d")
    out, opts = tmp_path / "c.zarr", MODES["3d"]
    with pytest.raises(PartsPending, match="still to do in parts 2, 3"):
        segment(src, out, options=opts, part="1/3", part_wait=0.2, **RUN)
    rows = [(r["units_done"], r["units"], r["blocks_done"]) for r in _parts_done(out)]
    assert rows == [(6, 6, 0), (0, 6, 0), (0, 6, 0)]
    notes = []
    with pytest.raises(PartsPending):
        segment(
            src, out, options=opts, part="1/3", part_wait=0, progress=lambda u: notes.append(u.message), **RUN
        )
    assert "part 1/3: labelling 0 of its 6 blocks (18 in all)" in notes
    assert any(m and m.startswith("part 1/3: its pass 1 is done; 12 blocks of pass 1") for m in notes)


# ---------------------------------------------------------------------------- at once
@pytest.mark.parametrize("mode,n", [("3d", 3), ("2d-relabel", 2), ("2d", 3)])
def test_parts_started_at_once_write_the_single_run(tmp_path, mode, n):
    src, _ = _input(tmp_path, mode)
    opts = MODES[mode]
    single = _single(tmp_path, src, opts)
    out, start = tmp_path / "parts.zarr", threading.Barrier(n)
    results, errors = {}, []

    def job(k):
        start.wait()
        try:
            results[k] = segment(src, out, options=opts, part=f"{k}/{n}", part_wait=60, **RUN)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(1, n + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sum(r.complete for r in results.values()) >= 1 and open_volume(out).complete
    np.testing.assert_array_equal(_labels(out), single)
    assert not list(tmp_path.glob("*.creating")) and not list((out / ".volseg").glob("*.lock"))


def test_cli_parts_say_what_they_did(tmp_path):
    src, _ = _input(tmp_path, "2d")
    out = tmp_path / "c.zarr"
    first = cli("segment", src, out, "--sigma", "0.5", "--part", "2/2", "--scheduler", "synchronous")
    assert first.exit_code == 0, first.output
    assert "part 2/2: 12 blocks of its share (0 already done)" in first.stdout
    assert first.stdout.strip().endswith("the last part to finish completes it")
    last = cli("segment", src, out, "--sigma", "0.5", "--part", "1/2", "--json")
    summary = json.loads(last.stdout)
    assert summary["part"] == "1/2" and summary["complete"] and summary["blocks"] == 16
    assert summary["labels"] == 7 * 40 * 44 and open_volume(out).complete


# ------------------------------------------------------------------------ refused
def test_a_job_of_another_run_is_refused_with_one_line(tmp_path):
    src, _ = _input(tmp_path, "3d")
    out, opts = tmp_path / "c.zarr", MODES["3d"]
    with pytest.raises(PartsPending):
        segment(src, out, options=opts, part="1/3", part_wait=0, **RUN)
    with pytest.raises(OptionError, match="being written in 3 parts; use --part K/3"):
        segment(src, out, options=opts, part="2/2", **RUN)
    same = ("--mode", "3d", "--sigma", "1", "--min-size", "10", "--threshold", "0.48")
    one_line_error(cli("segment", src, out, *same, "--part", "2/4"), "--part .../4", "3 parts", "K/3")
    other = cli("segment", src, out, *same[:-1], "0.3", "--part", "2/3")
    one_line_error(other, "cannot resume", "threshold", "delete it to start again")
    with pytest.raises(OutputError, match="cannot resume"):
        segment(src, out, options=SegmentOptions(mode="3d"), part="2/3", **RUN)
    one_line_error(cli("segment", src, out, "--part", "2/3", "--overwrite"), "--part and --overwrite")
    single = tmp_path / "single.zarr"
    segment(src, single, options=opts, **RUN)
    with pytest.raises(OptionError, match="started by a single run"):
        segment(src, single, options=opts, part="1/2", **RUN)


@pytest.mark.parametrize("bad", ["0/3", "4/3", "3", "a/b", "1/0"])
def test_bad_parts_are_refused(tmp_path, bad):
    src, _ = _input(tmp_path, "2d")
    with pytest.raises(OptionError, match="--part"):
        segment(src, tmp_path / "c.zarr", part=bad)
    assert not (tmp_path / "c.zarr").exists()


def test_the_wait_is_checked_and_the_cli_default_is_the_api_default(tmp_path):
    from volseg.app.commands.segment import segment_cmd

    src, _ = _input(tmp_path, "2d")
    with pytest.raises(OptionError, match="--part-wait"):
        segment(src, tmp_path / "c.zarr", part="1/2", part_wait=-1)
    cli_default = inspect.signature(segment_cmd).parameters["part_wait"].default
    assert cli_default == PART_WAIT_S == inspect.signature(segment).parameters["part_wait"].default


# ------------------------------------------------------------------ failures, resume
def test_a_failed_part_is_rerun_in_either_pass_to_the_single_run(tmp_path, monkeypatch):
    src, prob = _input(tmp_path, "3d")
    opts = MODES["3d"]
    single = _single(tmp_path, src, opts)
    out = tmp_path / "c.zarr"
    real1, real2 = seg._label_unit, seg._pass2_task

    def fail_unit(prob_vol, convert, unit, o):
        if unit.index == (1, 1, 0):  # a block of part 2/2 (block 9 in C order)
            raise RuntimeError("simulated crash")
        return real1(prob_vol, convert, unit, o)

    monkeypatch.setattr(seg, "_label_unit", fail_unit)
    with pytest.raises(IncompleteRunError, match="1 of 9 blocks failed"):
        segment(src, out, options=opts, part="2/2", **RUN)
    with pytest.raises(PartsPending, match="1 blocks of pass 1 are still to do in part 2"):
        segment(src, out, options=opts, part="1/2", part_wait=0.1, **RUN)
    monkeypatch.setattr(seg, "_label_unit", real1)
    monkeypatch.setattr(
        seg,
        "_pass2_task",
        lambda o, s, b, *a: (_ for _ in ()).throw(OSError("disk")) if b == (2, 1, 2) else real2(o, s, b, *a),
    )
    with pytest.raises(IncompleteRunError, match="1 of 9 blocks failed"):
        segment(src, out, options=opts, part="2/2", **RUN)  # its pass 1 is finished now, a pass-2 block fails
    monkeypatch.setattr(seg, "_pass2_task", real2)
    first = segment(src, out, options=opts, part="1/2", part_wait=0, **RUN)
    assert not first.complete and first.resumed_blocks == 0
    last = segment(src, out, options=opts, part="2/2", **RUN)
    assert last.complete and last.resumed_blocks == 8
    np.testing.assert_array_equal(_labels(out), single)
    again = segment(src, out, options=opts, part="1/2", **RUN)
    assert again.complete and again.resumed_blocks == again.blocks == 9


def test_a_single_run_with_resume_finishes_a_parts_output(tmp_path):
    src, _ = _input(tmp_path, "2d-relabel")
    opts = MODES["2d-relabel"]
    single = _single(tmp_path, src, opts)
    out = tmp_path / "c.zarr"
    with pytest.raises(PartsPending):
        segment(src, out, options=opts, part="2/3", part_wait=0, **RUN)
    result = segment(src, out, options=opts, resume=True, **RUN)
    assert result.part is None and "part" not in result.to_dict() and open_volume(out).complete
    np.testing.assert_array_equal(_labels(out), single)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_kill_9_of_a_part_and_sigterm_while_waiting_then_rerun_is_bitwise_the_single_run(tmp_path):
    prob = _cells((10, 128, 128), 20, seed=9)
    src = write_volume(tmp_path / "p.zarr", prob, (1, 64, 64), "probability", voxel_size=(50, 4, 4))
    out, units = tmp_path / "c.zarr", tmp_path / "c.zarr" / ".volseg" / "segment" / "units"
    opts = SegmentOptions(relabel=True)

    def stored(k):  # units of part k of 2 stored: bands k - 1, k + 1, ...
        names = set(os.listdir(units)) if units.is_dir() else set()
        return sum(f"{i}.npz" in names for i in range(k - 1, 10, 2))

    def until(condition, alive=lambda: True):
        deadline = time.monotonic() + 60
        while not condition() and alive() and time.monotonic() < deadline:
            time.sleep(0.005)

    cmd = [sys.executable, "-m", "volseg", "segment", str(src), str(out), "--relabel", "--part", "2/2"]
    cmd += ["--part-wait", "120", "--scheduler", "synchronous"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    second = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    until(lambda: stored(2) >= 1, lambda: second.poll() is None)
    assert second.poll() is None, second.stderr.read()  # it cannot finish: part 1 has not started
    second.kill()  # in its pass 1 (or while it waits for part 1)
    second.wait(30)
    assert 1 <= stored(2) < 5

    # part 1 does its pass 1, then waits for part 2's: stopped there by the batch system's signal
    def notice():
        until(lambda: stored(1) == 5)
        os.kill(os.getpid(), signal.SIGTERM)  # segment's handler (main thread) only sets the stop flag

    sender = threading.Thread(target=notice)
    outside = signal.signal(signal.SIGTERM, lambda *_: None)  # should it come late, it ends no test run
    try:
        sender.start()
        with pytest.raises(Preempted, match="stopped by SIGTERM while part 1/2 waited"):
            segment(src, out, options=opts, part="1/2", part_wait=120, **RUN)
    finally:
        sender.join()
        signal.signal(signal.SIGTERM, outside)
    assert stored(1) == 5 and stored(2) < 5 and not open_volume(out).complete
    assert not segment(src, out, options=opts, part="2/2", part_wait=0, **RUN).complete
    assert segment(src, out, options=opts, part="1/2", part_wait=0, **RUN).complete
    np.testing.assert_array_equal(_labels(out), _single(tmp_path, src, opts))


def test_a_lock_is_refreshed_by_its_holder_and_taken_over_from_a_dead_one(tmp_path, monkeypatch):
    from volseg.storage import locks as parts

    lock = tmp_path / "x.lock"
    lock.touch()
    with (
        pytest.raises(OutputError, match="another job has been busy with the lookup"),
        parts.exclusive(lock, "the lookup", timeout=0.1),
    ):
        pass  # a live holder's lock: waited for, then refused
    old = time.time() - parts.STALE_LOCK_S - 1
    os.utime(lock, (old, old))  # its holder died a minute ago
    monkeypatch.setattr(parts, "HEARTBEAT_S", 0.05)
    with parts.exclusive(lock, "the lookup", timeout=0.1):
        first = lock.stat().st_mtime
        assert first > old
        time.sleep(0.3)
        assert lock.stat().st_mtime > first  # refreshed while held
    assert not lock.exists()
