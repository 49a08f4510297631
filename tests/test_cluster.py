"""--cluster FILE.toml: the file checked key by key, the job scripts of SLURM / PBS / LSF / SGE rendered with
no batch system, and the failure paths of predict and segment on a real scheduler and workers (127.0.0.1).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from predict_support import em_like, unet_file, write_volume
from support import cli, one_line_error

import volseg.stages.predict.worker as predict_worker
import volseg.stages.segment.passes as seg
from volseg import cluster as vc
from volseg.errors import IncompleteRunError, InputError, OptionError
from volseg.stages.predict import predict
from volseg.stages.segment import SegmentOptions, segment
from volseg.storage.volumes import open_volume

distributed = pytest.importorskip("distributed")
pytest.importorskip("dask_jobqueue")

FULL = """
[cluster]
kind = "{kind}"

[cluster.job]
cores = 8
memory = "32GiB"
walltime = "04:00:00"
queue = "gpu"
account = "lab123"
directives = ["--constraint=a100"]
prologue = ["module load cuda"]

[cluster.scale]
minimum_jobs = 1
maximum_jobs = 8

[cluster.worker]
lifetime = "3h30m"
lifetime_stagger = "10m"
retries = 1
allowed_failures = 2
"""


def _file(tmp_path: Path, text: str, name: str = "cluster.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _job(**job: object) -> str:
    """A slurm file with the given [cluster.job] keys over the three required ones."""
    keys = {"cores": 8, "memory": '"32GiB"', "walltime": '"04:00:00"', **job}
    lines = "\n".join(f"{k} = {v}" for k, v in keys.items() if v is not None)
    return f'[cluster]\nkind = "slurm"\n[cluster.job]\n{lines}\n'


# ------------------------------------------------------------------------------ the file
def test_a_full_file_is_read_into_its_spec(tmp_path):
    spec = vc.load_cluster(_file(tmp_path, FULL.format(kind="slurm")))
    assert spec.kind == "slurm" and spec.address is None
    assert spec.job == vc.JobSpec(
        cores=8, memory=32 * 2**30, walltime=4 * 3600, queue="gpu", account="lab123", processes=1, threads=8,
        directives=("--constraint=a100",), prologue=("module load cuda",),
    )  # fmt: skip
    assert (spec.scale.minimum_jobs, spec.scale.maximum_jobs, spec.scale.adaptive) == (1, 8, True)
    assert spec.worker == vc.WorkerSpec(lifetime=12600, lifetime_stagger=600, retries=1, allowed_failures=2)
    assert spec.retries_or(5) == 1 and spec.torch_threads == 1 and spec.label == "slurm-cluster"


def test_the_defaults_of_a_minimal_file(tmp_path):
    spec = vc.load_cluster(_file(tmp_path, _job()))
    assert spec.scale == vc.ScaleSpec(1, 1, vc.DEFAULT_WAIT_S)  # one job, not adaptive
    # workers retire before the walltime: a tenth of it (2 to 15 min) early, staggered by a quarter of that
    assert spec.worker.lifetime == 4 * 3600 - 900 and spec.worker.lifetime_stagger == 225
    assert spec.worker.retries is None and spec.retries_or(2) == 2 and spec.worker.death_timeout == 60
    spec = vc.load_cluster(_file(tmp_path, _job(threads=1, walltime='"1-00:00:00"')))
    assert spec.job.walltime == 86400 and spec.torch_threads == 8  # one task per worker: torch has the cores


def test_an_address_file(tmp_path):
    text = '[cluster]\nkind = "address"\naddress = "tcp://10.0.0.5:8786"\n[cluster.worker]\nretries = 0\n'
    spec = vc.load_cluster(_file(tmp_path, text))
    assert (spec.kind, spec.address, spec.job, spec.scale.wait, spec.retries_or(2)) == (
        "address", "tcp://10.0.0.5:8786", None, 0.0, 0
    )  # fmt: skip


A = '[cluster]\nkind = "address"\naddress = "tcp://10.0.0.5:8786"\n'
J, SC, WK = _job(), _job() + "[cluster.scale]\n", _job() + "[cluster.worker]\n"
BAD = [
    ("no_table", 'kind = "slurm"\n', "unknown top-level key 'kind'; put everything under [cluster]"),
    ("empty", "", "no [cluster] table"),
    ("no_kind", "[cluster]\n", "[cluster] kind: missing; use one of slurm, pbs, lsf, sge, address"),
    ("bad_kind", '[cluster]\nkind = "kubernetes"\n', '[cluster] kind "kubernetes": use one of slurm'),
    (
        "unknown_key",
        _job(job_extra='["-x"]'),
        "[cluster.job] job_extra: unknown key; did you mean 'directives'?",
    ),
    ("unknown_key2", _job(gpus=1), "[cluster.job] gpus: unknown key; known keys are cores, memory, walltime"),
    ("dash_key", _job(**{"log-directory": '"logs"'}), "did you mean 'log_directory'?"),
    (
        "table_type",
        '[cluster]\nkind = "slurm"\njob = 3\n',
        "[cluster] job 3: write it as a table [cluster.job]",
    ),
    ("cores_text", _job(cores='"8"'), '[cluster.job] cores "8": write a whole number from 1 to 4096'),
    ("cores_bool", _job(cores="true"), "[cluster.job] cores True: write a whole number"),
    ("cores_float", _job(cores="8.0"), "[cluster.job] cores 8.0: write a whole number"),
    ("cores_zero", _job(cores=0), "[cluster.job] cores 0: use 1 to 4096"),
    (
        "no_memory",
        _job(memory=None),
        "[cluster.job] memory: missing; every slurm job needs cores, memory and",
    ),
    ("memory_text", _job(memory='"lots"'), '[cluster.job] memory "lots": write a size such as "32GiB"'),
    ("memory_list", _job(memory="[32]"), "[cluster.job] memory [32]: write a size"),
    ("memory_small", _job(memory='"100MiB"'), "per worker process is too little"),
    ("walltime_ambiguous", _job(walltime='"30:00"'), '[cluster.job] walltime "30:00": write HH:MM:SS'),
    ("walltime_words", _job(walltime='"4 hours"'), '[cluster.job] walltime "4 hours": write HH:MM:SS'),
    ("walltime_short", _job(walltime='"00:00:30"'), "use at least a minute"),
    ("no_walltime", _job(walltime=None), "[cluster.job] walltime: missing"),
    ("threads", _job(threads=4, processes=4), "[cluster.job] threads 4: 4 x 4 process(es) is more than"),
    ("processes", _job(processes=9), "[cluster.job] processes 9: use 1 to 8"),
    ("directives_text", _job(directives='"-x"'), '[cluster.job] directives "-x": write a list'),
    ("name", _job(name='"my job"'), '[cluster.job] name "my job": use letters, digits'),
    (
        "resource_spec",
        _job(resource_spec='"h_vmem=4G"'),
        'resource_spec "h_vmem=4G": only for kind pbs or sge',
    ),
    ("jobs_and_max", SC + "jobs = 2\nmaximum_jobs = 4\n", "[cluster.scale] maximum_jobs 4: give jobs"),
    ("min_over_max", SC + "minimum_jobs = 5\nmaximum_jobs = 4\n", "minimum_jobs 5: more than maximum_jobs 4"),
    ("jobs_zero", SC + "jobs = 0\n", "[cluster.scale] jobs 0: use 1 to 10000"),
    ("wait_zero", SC + 'wait = "0s"\n', '[cluster.scale] wait "0s": a cluster\'s jobs take time'),
    ("lifetime_long", WK + 'lifetime = "4h"\n', "must end before the walltime 04:00:00"),
    ("stagger_long", WK + 'lifetime = "1h"\nlifetime_stagger = "2h"\n', "smaller than the lifetime"),
    ("lifetime_reach", WK + 'lifetime = "3h55m"\nlifetime_stagger = "10m"\n', "(04:05:00) must end before"),
    ("retries", WK + "retries = 101\n", "[cluster.worker] retries 101: use 0 to 100"),
    ("retries_neg", WK + "retries = -1\n", "[cluster.worker] retries -1: use 0 to 100"),
    ("allowed_text", WK + 'allowed_failures = "3"\n', 'allowed_failures "3": write a whole number'),
    ("address_missing", '[cluster]\nkind = "address"\n', "[cluster] address: missing"),
    ("address_bad", '[cluster]\nkind = "address"\naddress = "h"\n', '[cluster] address "h": write a dask'),
    ("address_job", A + "[cluster.job]\ncores = 8\n", '[cluster.job]: does not apply to kind = "address"'),
    ("address_failures", A + "[cluster.worker]\nallowed_failures = 1\n", "SCHEDULER__ALLOWED_FAILURES where"),
    ("address_lifetime", A + '[cluster.worker]\nlifetime = "1h"\n', "'dask worker --lifetime ...'"),
    ("address_jobs", A + "[cluster.scale]\njobs = 2\n", "[cluster.scale] jobs 2: does not apply to kind"),
]


@pytest.mark.parametrize("name,text,needle", BAD, ids=[b[0] for b in BAD])
def test_a_bad_file_is_one_line_naming_the_file_and_key(tmp_path, name, text, needle):
    path = _file(tmp_path, text)
    with pytest.raises(OptionError) as info:
        vc.load_cluster(path)
    message = str(info.value)
    assert message.startswith(f"--cluster {path}: "), message
    assert needle in message and "\n" not in message, message


def test_an_address_in_a_jobqueue_file_is_refused(tmp_path):
    path = _file(tmp_path, _job().replace('kind = "slurm"', 'kind = "slurm"\naddress = "tcp://h:1"'))
    with pytest.raises(OptionError, match=r'\[cluster\] address "tcp://h:1": only for kind = "address"'):
        vc.load_cluster(path)


def test_durations_and_their_refusals():
    assert vc._duration("04:00:00") == 14400 and vc._duration("1-12:00:00") == 129600
    assert vc._duration("3h45m") == 13500 and vc._duration("90s") == 90 and vc._duration(600) == 600
    for bad in ("30:00", "4 hours", "", "1:75:00", -5, True, 1.5, "h"):
        assert vc._duration(bad) is None, bad


@pytest.mark.parametrize(
    "text,error,needle",
    [
        ("[cluster\n", InputError, "not valid TOML"),
        (None, InputError, "no such file"),
    ],
)
def test_an_unreadable_file_is_an_input_error(tmp_path, text, error, needle):
    path = tmp_path / "c.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(error, match=needle):
        vc.load_cluster(path)


def test_a_jobqueue_kind_without_dask_jobqueue_says_what_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    hidden = {"dask_jobqueue"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in hidden else real(n, *a))
    path = _file(tmp_path, _job())
    with pytest.raises(OptionError) as info:
        vc.load_cluster(path)
    assert str(info.value) == (
        f'--cluster {path}: [cluster] kind "slurm": needs dask-jobqueue, which is not installed: '
        'pip install "volseg[cluster]"'
    )
    vc.load_cluster(_file(tmp_path, A))  # a running scheduler needs no dask-jobqueue


def test_the_cli_refuses_a_bad_file_in_one_line_before_reading_anything(tmp_path):
    path = _file(tmp_path, _job(memory='"lots"'))
    missing = tmp_path / "missing"
    needle = f'--cluster {path}: [cluster.job] memory "lots"'
    one_line_error(
        cli("predict", missing / "m.pt", missing / "i.zarr", tmp_path / "o.zarr", "--cluster", path), needle
    )
    one_line_error(cli("segment", missing / "p.zarr", tmp_path / "c.zarr", "--cluster", path), needle)
    good = _file(tmp_path, A, "a.toml")
    one_line_error(
        cli("predict", missing / "m.pt", missing / "i.zarr", tmp_path / "o.zarr", "--cluster", good,
            "--scheduler", "threads"),
        "--cluster and --scheduler threads exclude each other",
    )  # fmt: skip
    refused = cli("segment", missing / "p.zarr", tmp_path / "c.zarr", "--cluster", good, "--workers", "2")
    one_line_error(refused, "--cluster and --workers exclude each other")
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "c.zarr").exists()


# ------------------------------------------------------------------------ job scripts
EXPECTED = {
    "slurm": ["#SBATCH -J volseg-worker", "#SBATCH -p gpu", "#SBATCH -A lab123", "#SBATCH --cpus-per-task=8",
              "#SBATCH --mem=32G", "#SBATCH -t 04:00:00", "#SBATCH --constraint=a100"],
    "pbs": ["#PBS -N volseg-worker", "#PBS -q gpu", "#PBS -A lab123", "#PBS -l select=1:ncpus=8:mem=32GB",
            "#PBS -l walltime=04:00:00", "#PBS --constraint=a100"],
    "lsf": ["#BSUB -J volseg-worker", "#BSUB -q gpu", '#BSUB -P "lab123"', "#BSUB -n 8",
            "#BSUB -M 34359739", "#BSUB -W 04:00", "#BSUB --constraint=a100"],
    "sge": ["#$ -N volseg-worker", "#$ -q gpu", "#$ -P lab123", "#$ -l h_rt=04:00:00",
            "#$ --constraint=a100"],
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_the_cluster_object_renders_the_job_script_and_submits_nothing(tmp_path, monkeypatch, kind):
    from dask_jobqueue.core import Job

    monkeypatch.setenv("LSF_ENVDIR", str(tmp_path))  # no lsf.conf: LSF memory in KB, its default
    submitted = []
    monkeypatch.setattr(Job, "start", lambda self: submitted.append(self))  # would be sbatch / qsub / bsub
    spec = vc.load_cluster(_file(tmp_path, FULL.format(kind=kind)))
    cluster = vc.make_cluster(spec)
    try:
        script = cluster.job_script()
        assert cluster.scheduler.allowed_failures == 2  # [cluster.worker] allowed_failures, on its scheduler
        assert cluster.scheduler_address.startswith("tcp://")
        assert cluster.worker_spec == {} and cluster.workers == {}
    finally:
        cluster.close()
    lines = script.splitlines()
    for line in EXPECTED[kind]:
        assert line in lines, (line, script)
    assert lines[-2] == "module load cuda"
    worker = lines[-1]
    assert f"-m distributed.cli.dask_worker {cluster.scheduler_address} " in worker
    # 8 dask threads of 32 GiB; retired after 3h30m +- 10m, before the 4 h walltime (dask-jobqueue #611)
    for flag in ("--nthreads 8", "--memory-limit 32.00GiB", "--death-timeout 60", "--lifetime 12600s",
                 "--lifetime-stagger 600s"):  # fmt: skip
        assert flag in worker, (flag, worker)
    assert submitted == []
    assert vc.job_script(spec).splitlines()[:-1] == lines[:-1]  # the same script from the job class alone


def test_job_script_alone_writes_nothing_and_keeps_the_log_folder_named(tmp_path):
    logs = tmp_path / "logs"
    spec = vc.load_cluster(_file(tmp_path, _job(log_directory=f'"{logs}"', processes=2, threads=1)))
    script = vc.job_script(spec)
    assert not logs.exists()
    assert f"#SBATCH -e {logs}/volseg-worker-%J.err" in script and "--nworkers 2 " in script
    assert "--nthreads 1 " in script and "--cpus-per-task=8" in script  # 2 x 1 dask threads, 8 cores
    assert spec.torch_threads == 4


def test_the_cli_dry_run_prints_the_job_script(tmp_path):
    model = unet_file(tmp_path / "m.pt", base=4, depth=2)
    image = write_volume(tmp_path / "i.zarr", em_like((2, 32, 32), seed=1), (1, 32, 32))
    path = _file(tmp_path, FULL.format(kind="slurm"))
    result = cli("predict", model, image, tmp_path / "o.zarr", "--cluster", path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "scheduler  slurm-cluster" in result.stdout
    assert "1..8 slurm job(s) of 8 cores, 32.0 GiB, 04:00:00" in result.stdout
    assert "#SBATCH -t 04:00:00" in result.stdout and "--lifetime 12600s" in result.stdout
    assert not (tmp_path / "o.zarr").exists()


def _fake_slurm(tmp_path: Path, monkeypatch, sbatch: str | None) -> None:
    """``sbatch`` (a shell script, or none at all) and ``scancel`` first on the PATH."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, body in (("sbatch", sbatch), ("scancel", "exit 0")):
        if body is not None:
            (folder / name).write_text(f"#!/bin/sh\n{body}\n")
            (folder / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(folder) if sbatch is None else f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_a_job_the_batch_system_refuses_ends_the_wait_in_one_line(tmp_path, monkeypatch):
    import time

    refusal = "sbatch: error: Invalid account or account/partition combination specified"
    _fake_slurm(tmp_path, monkeypatch, f'echo "{refusal}" >&2; exit 1')
    path = _file(tmp_path, _job(interface='"lo"') + '[cluster.scale]\nwait = "1h"\n')
    start = time.monotonic()
    with pytest.raises(OptionError) as info, vc.open_cluster(vc.load_cluster(path)):
        pass
    assert str(info.value) == (
        f"--cluster {path}: the batch system refused the job: {refusal}; check [cluster.job] (queue, "
        "account, directives) against the script that --dry-run prints"
    )
    assert time.monotonic() - start < 20  # not the hour of the wait, and not submitted again and again


def test_a_jobqueue_kind_needs_its_submit_command_here(tmp_path, monkeypatch):
    _fake_slurm(tmp_path, monkeypatch, None)
    path = _file(tmp_path, _job())
    needle = "submits jobs with sbatch and cancels them with scancel, but sbatch is not on this machine's"
    with pytest.raises(OptionError, match=needle), vc.open_cluster(vc.load_cluster(path)):
        pass


# ------------------------------------------------------------------- ended jobs (#611)
class _FakeJob:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


def test_a_job_whose_workers_all_left_is_dropped_so_that_adapt_replaces_it():
    from types import SimpleNamespace

    calls = []
    jobs = {"j-0": _FakeJob(), "j-1": _FakeJob(), "j-2": _FakeJob()}
    group = {"cls": None, "options": {}, "group": ["-0", "-1"]}
    cluster = SimpleNamespace(
        workers=dict(jobs), worker_spec={name: group for name in jobs},
        scheduler_info={"workers": {"a": {"name": "j-0-0"}, "b": {"name": "j-0-1"}, "c": {"name": "j-1-0"}}},
        loop=SimpleNamespace(add_callback=calls.append),
    )  # fmt: skip
    absent: dict[str, int] = {}
    assert vc.forget_ended_jobs(cluster, absent, checks=2) == []  # j-2 queued: never seen, left alone
    cluster.scheduler_info["workers"] = {"c": {"name": "j-1-0"}}  # j-0 ended: both its workers left
    assert vc.forget_ended_jobs(cluster, absent, checks=2) == []  # once may be a reconnect
    assert vc.forget_ended_jobs(cluster, absent, checks=2) == ["j-0"]
    assert set(cluster.workers) == {"j-1", "j-2"} and set(cluster.worker_spec) == {"j-0", "j-1", "j-2"}
    assert calls == [jobs["j-0"].close]  # cancelled, in case it still runs; the spec stays: adapt resubmits


# ----------------------------------------------------- failure paths on a real scheduler
BLOCKS = {"chunks": (1, 32, 32), "block": (1, 32, 32)}


@pytest.fixture(scope="module")
def local_cluster():
    """A scheduler and two workers on 127.0.0.1 (threads of this process: the tests' patches reach them)."""
    import logging

    import torch

    threads = torch.get_num_threads()
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster:  # fmt: skip
        yield cluster
    torch.set_num_threads(threads)  # the workers set torch's threads in this process


@pytest.fixture(scope="module")
def pdata(tmp_path_factory):
    root = tmp_path_factory.mktemp("clusterpredict")
    image = write_volume(root / "img.zarr", em_like((3, 64, 96), seed=2), (1, 32, 32))
    model = unet_file(root / "model.pt", base=4, depth=2)
    predict(model, image, root / "ref.zarr", scheduler="threads", **BLOCKS)
    return {"image": image, "model": model, "ref": open_volume(root / "ref.zarr").array[:]}


def _address_file(tmp_path: Path, cluster, retries: int | None = None) -> Path:
    text = f'[cluster]\nkind = "address"\naddress = "{cluster.scheduler_address}"\n'
    if retries is not None:
        text += f"[cluster.worker]\nretries = {retries}\n"
    return _file(tmp_path, text)


def _counting(log: Path, fails: tuple[int, ...] | None):
    """A function that appends each index it is given to ``log`` (workers are threads here) and raises for
    ``fails``."""
    lock = threading.Lock()

    def wrapper(index: tuple[int, ...]) -> None:
        with lock, open(log, "a") as f:
            f.write(".".join(map(str, index)) + "\n")
        if index == fails:
            raise ValueError("sentinel failure")

    return wrapper


def _calls(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_predict_on_an_address_retries_a_failing_block_exactly_then_resumes_bitwise(
    tmp_path, monkeypatch, local_cluster, pdata
):
    log, bad = tmp_path / "calls.txt", (1, 1, 2)
    real = predict_worker.predict_block

    def counted(fails):
        count = _counting(log, fails)

        def predict_block(model, job, block, *args, **kwargs):
            count(block.index)
            return real(model, job, block, *args, **kwargs)

        return predict_block

    monkeypatch.setattr(predict_worker, "predict_block", counted(bad))
    path, out = _address_file(tmp_path, local_cluster, retries=2), tmp_path / "p.zarr"
    with pytest.raises(IncompleteRunError, match=r"1 of 18 blocks failed after 2 retries") as info:
        predict(pdata["model"], pdata["image"], out, cluster=str(path), retries=0, **BLOCKS)
    result = info.value.result
    assert (result.blocks_failed, result.blocks_written) == (1, 17)
    assert result.plan["scheduler"] == local_cluster.scheduler_address
    assert result.errors == ["block 1.1.2: ValueError: sentinel failure"]
    calls = _calls(log)
    assert calls.count("1.1.2") == 3  # 1 + retries from the file (not --retries 0), then reported, not again
    assert sorted(set(calls)) == sorted(f"{z}.{y}.{x}" for z in range(3) for y in range(2) for x in range(3))
    assert not open_volume(out).complete

    log.unlink()
    monkeypatch.setattr(predict_worker, "predict_block", counted(None))
    result = predict(pdata["model"], pdata["image"], out, cluster=str(path), **BLOCKS)
    assert (result.blocks_written, result.blocks_skipped, _calls(log)) == (1, 17, ["1.1.2"])
    np.testing.assert_array_equal(open_volume(out).array[:], pdata["ref"])


def test_a_block_whose_workers_die_is_rerun_allowed_failures_times(tmp_path, monkeypatch, pdata):
    """The scheduler's allowed-failures bounds the reruns of a block that kills its worker (KilledWorker);
    the retries do not apply to it. The other blocks complete on the surviving worker."""
    import logging
    import time

    import dask
    import torch

    log, bad = tmp_path / "calls.txt", (0, 1, 1)
    count, real = _counting(log, None), predict_worker.predict_block

    def deadly(model, job, block, *args, **kwargs):
        count(block.index)
        if block.index == bad:  # the worker goes down under the block (out of memory, a node lost)
            worker = distributed.get_worker()
            worker.loop.add_callback(worker.close, nanny=False, executor_wait=False)
            time.sleep(1.0)
        return real(model, job, block, *args, **kwargs)

    monkeypatch.setattr(predict_worker, "predict_block", deadly)
    threads = torch.get_num_threads()
    # a worker holds only the block it runs (no queue of its own), so only that block is under it when it dies
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}), distributed.LocalCluster(
        n_workers=3, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
        dashboard_address=":0", silence_logs=logging.CRITICAL, scheduler_kwargs={"allowed_failures": 1},
    ) as cluster:  # fmt: skip
        path = _address_file(tmp_path, cluster, retries=2)
        with pytest.raises(IncompleteRunError, match="1 of 18 blocks failed") as info:
            predict(pdata["model"], pdata["image"], tmp_path / "p.zarr", cluster=path, **BLOCKS)
    torch.set_num_threads(threads)
    result = info.value.result
    assert (result.blocks_failed, result.blocks_written) == (1, 17)
    assert result.errors[0].startswith("block 0.1.1: KilledWorker: Attempted to run task")
    assert "on 2 different workers" in result.errors[0]
    assert _calls(log).count("0.1.1") == 2  # 1 + allowed_failures: two workers died under it, then reported


def test_an_address_that_does_not_answer_is_refused_within_seconds(tmp_path, monkeypatch, pdata):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = _file(tmp_path, f'[cluster]\nkind = "address"\naddress = "tcp://127.0.0.1:{port}"\n')
    monkeypatch.setattr(vc, "CONNECT_TIMEOUT_S", 1.0)  # the same path as the 3 s default, sooner
    start = time.monotonic()
    expected = rf"--cluster {path}: \[cluster\] address tcp://127.0.0.1:{port}: no dask scheduler answered"
    with pytest.raises(OptionError, match=expected):
        predict(pdata["model"], pdata["image"], tmp_path / "p.zarr", cluster=path, **BLOCKS)
    assert time.monotonic() - start < 10
    assert not (tmp_path / "p.zarr").exists() or not open_volume(tmp_path / "p.zarr").done_blocks()


def test_waiting_for_a_worker_ends_at_the_wait_or_at_a_stop_signal(tmp_path):
    import logging

    from volseg.core import preempt

    with distributed.LocalCluster(
        n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as empty:  # fmt: skip
        address = empty.scheduler_address
        spec = vc.load_cluster(_file(tmp_path, f'[cluster]\nkind = "address"\naddress = "{address}"\n'))
        no_workers = f"the scheduler at {address} has no workers; start some with"
        with pytest.raises(OptionError, match=no_workers), vc.open_cluster(spec):
            pass
        spec = dataclasses.replace(spec, scale=vc.ScaleSpec(1, 1, wait=600.0))
        preempt.request()
        try:
            stopped = "while waiting for the first worker; nothing was computed"
            with pytest.raises(preempt.Preempted, match=stopped), vc.open_cluster(spec):
                pass
        finally:
            preempt.reset()


def _prob(path: Path) -> Path:
    from scipy import ndimage

    rng = np.random.default_rng(3)
    smooth = ndimage.gaussian_filter(rng.normal(size=(4, 48, 48)), sigma=(0, 3, 3))
    prob = np.clip(128 + 900 * smooth, 0, 255).astype(np.uint8)
    import support

    return support.write_volume(path, prob, (1, 24, 24), "probability", voxel_size=(50, 4, 4))


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_segment_on_an_address_retries_a_failing_unit_exactly_then_resumes_bitwise(
    tmp_path, monkeypatch, local_cluster, mode
):
    prob = _prob(tmp_path / "p.zarr")
    opts = SegmentOptions(mode=mode, relabel=True, sigma=0.5, min_size=0)
    segment(prob, tmp_path / "ref.zarr", options=opts)
    log = tmp_path / "calls.txt"
    bad = (2,) if mode == "2d" else (1, 1, 0)
    real = seg._label_unit

    def counted(fails):
        count = _counting(log, fails)

        def label_unit(prob_vol, convert, unit, o):
            count(unit.index)
            return real(prob_vol, convert, unit, o)

        return label_unit

    monkeypatch.setattr(seg, "_label_unit", counted(bad))
    path, out = _address_file(tmp_path, local_cluster), tmp_path / "c.zarr"  # retries: the default, 2
    failed = r"1 of \d+ (sections bands|blocks) failed \(first: ValueError: sentinel failure\)"
    with pytest.raises(IncompleteRunError, match=failed):
        segment(prob, out, options=opts, cluster=path)
    calls = _calls(log)
    assert calls.count(".".join(map(str, bad))) == 3  # 1 + 2 retries, then reported
    assert len(set(calls)) == (4 if mode == "2d" else 16)
    assert not open_volume(out).complete

    log.unlink()
    monkeypatch.setattr(seg, "_label_unit", counted(None))
    segment(prob, out, options=opts, cluster=path, resume=True)
    assert _calls(log) == [".".join(map(str, bad))]  # exactly the failed unit is redone
    np.testing.assert_array_equal(open_volume(out).array[:], open_volume(tmp_path / "ref.zarr").array[:])


# ------------------------------------------------ a cluster made here is always closed
def _local_jobs(monkeypatch) -> list:
    """Jobs as local processes: dask-jobqueue's LocalCluster stands for the SGE class (same job keywords);
    the clusters :func:`volseg.cluster.make_cluster` makes with it are listed in the returned list."""
    from dask_jobqueue.local import LocalCluster, LocalJob

    made = []

    def local(**kwargs):
        kwargs["scheduler_options"] = {**kwargs["scheduler_options"], "host": "127.0.0.1"}
        made.append(LocalCluster(nanny=False, **kwargs))  # one process per job: starts sooner
        return made[-1]

    local.job_cls = LocalJob  # no submit command to look for
    monkeypatch.setattr(vc, "_cluster_class", lambda spec: local)
    return made


def _job_pid(cluster) -> int:
    (job,) = cluster.workers.values()
    return int(job.job_id)  # a local job's id is its process id


def _gone(pid: int, within: float = 10.0) -> bool:
    """Whether the process ``pid`` ended (or is a zombie left to reap), waiting ``within`` seconds at most."""
    import time

    import psutil

    deadline = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_a_cluster_made_for_a_run_runs_its_blocks_and_is_closed_also_on_failure(tmp_path, monkeypatch):
    made = _local_jobs(monkeypatch)
    prob = _prob(tmp_path / "p.zarr")
    opts = SegmentOptions(relabel=True, sigma=0.5, min_size=0)
    segment(prob, tmp_path / "ref.zarr", options=opts)
    text = '[cluster]\nkind = "sge"\n[cluster.job]\ncores = 1\nmemory = "1GiB"\nwalltime = "00:10:00"\n'
    text += '[cluster.scale]\njobs = 1\nwait = "60s"\n[cluster.worker]\nallowed_failures = 1\n'
    path = _file(tmp_path, text)
    seen = []

    def number(self):  # pass 1 ran on the job's worker; the run then fails
        seen.append((_job_pid(made[-1]), len(self.client.scheduler_info()["workers"])))
        raise RuntimeError("the run fails after its first pass")

    monkeypatch.setattr(seg.Run, "number", number)
    with pytest.raises(RuntimeError, match="the run fails"):
        segment(prob, tmp_path / "c.zarr", options=opts, cluster=path)
    ((pid, workers),) = seen
    assert workers == 1 and made[-1].status.name == "closed" and made[-1].scheduler.allowed_failures == 1
    assert _gone(pid), pid  # the job was cancelled: no idle worker is left holding a node
    assert (tmp_path / "c.zarr/.volseg/segment/units").is_dir()  # pass 1's side files, from the job's worker
    monkeypatch.undo()
    segment(prob, tmp_path / "c.zarr", options=opts, resume=True)
    np.testing.assert_array_equal(
        open_volume(tmp_path / "c.zarr").array[:], open_volume(tmp_path / "ref.zarr").array[:]
    )
