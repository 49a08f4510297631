"""Batch clusters through dask: a cluster described by a TOML file, checked, started, scaled, always closed.

``--cluster FILE.toml`` (``volseg predict`` and ``volseg segment``) names either a dask-jobqueue cluster
(``kind = "slurm" | "pbs" | "lsf" | "sge"``: volseg starts a scheduler here and submits worker jobs) or a
running scheduler (``kind = "address"``). :func:`load_cluster` reads the file and checks every key (one
:class:`~volseg.errors.OptionError` line naming the file, the table and the key); :func:`job_script` renders
the batch script a job would run without any batch system; :func:`open_cluster` yields a
``distributed.Client`` with at least one worker and closes what it started on the way out, also on an error
or a stop signal, so no idle job is left behind. :func:`run_tasks` runs independent tasks on a client with a
bounded number of retries and says, task by task, what became of each.

The file::

    [cluster]
    kind = "slurm"                    # slurm | pbs | lsf | sge | address
    # address = "tcp://10.0.0.5:8786" # kind = "address" only
    # dashboard = ":8787"             # the scheduler's dashboard (default: none)

    [cluster.job]                     # one batch job: kind slurm / pbs / lsf / sge only
    cores = 8                         # cores of the job (SLURM --cpus-per-task, PBS ncpus, LSF -n)
    memory = "32GiB"                  # memory of the job
    walltime = "04:00:00"             # HH:MM:SS (or D-HH:MM:SS, or "4h")
    queue = "gpu"                     # partition / queue
    account = "lab123"                # account / project
    processes = 1                     # dask worker processes per job
    threads = 1                       # dask threads per worker process (default: cores / processes)
    directives = ["--gres=gpu:1"]     # extra #SBATCH / #PBS / #BSUB / #$ lines
    prologue = ["module load cuda"]   # shell lines run before the worker starts
    # name, local_directory, log_directory, interface, python, resource_spec (PBS, SGE)

    [cluster.scale]
    jobs = 4                          # a fixed number of jobs, or adaptive:
    # minimum_jobs = 1
    # maximum_jobs = 16
    wait = "1h"                       # how long to wait for the first worker

    [cluster.worker]
    lifetime = "3h45m"                # retire a worker before its walltime (default: from the walltime)
    lifetime_stagger = "4m"           # +- this, so that workers do not all retire at once
    retries = 2                       # a failing block is tried 1 + retries times, then reported
    allowed_failures = 3              # a block whose worker died is rerun this many times, then reported
    death_timeout = "60s"             # a worker that loses its scheduler this long exits (its job ends)

Heavy modules (``distributed``, ``dask_jobqueue``) are imported only when a cluster is made or rendered.

The module is longer than most (the file's checks are most of it): the format, its mapping onto dask-jobqueue
and the run helpers change together, and both stages import them from this one place.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volseg.core import preempt
from volseg.core.units import human_bytes
from volseg.errors import InputError, OptionError

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "CONNECT_TIMEOUT_S",
    "JOBQUEUE_KINDS",
    "KINDS",
    "ClusterSpec",
    "JobSpec",
    "Outcome",
    "ScaleSpec",
    "WorkerSpec",
    "is_address",
    "job_kwargs",
    "job_script",
    "load_cluster",
    "make_cluster",
    "open_cluster",
    "parse_cluster",
    "run_tasks",
]

#: The batch systems dask-jobqueue starts workers on, and the dask-jobqueue class of each.
JOBQUEUE_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster", "sge": "SGECluster"}
KINDS = (*JOBQUEUE_KINDS, "address")
#: The seconds a scheduler address is given to answer before the run is refused.
CONNECT_TIMEOUT_S = 3.0
#: How long a jobqueue run waits for its first worker by default (jobs may queue).
DEFAULT_WAIT_S = 3600.0
#: The least memory of one worker process: torch, the model and a block's arrays.
MIN_WORKER_MEMORY = 256 * 2**20
_INSTALL = 'pip install "volseg[cluster]"'
#: Keys people bring from dask-jobqueue or from other tools, and what they are called here.
_ALIASES = {
    "job_extra": "directives",
    "job_extra_directives": "directives",
    "extra": "directives",
    "job_script_prologue": "prologue",
    "env_extra": "prologue",
    "project": "account",
    "partition": "queue",
    "n_workers": "jobs",
    "minimum": "minimum_jobs",
    "maximum": "maximum_jobs",
    "nthreads": "threads",
}


# ------------------------------------------------------------------------------ the spec
@dataclass(frozen=True)
class JobSpec:
    """One batch job of workers (``[cluster.job]``); sizes in bytes, times in seconds."""

    cores: int
    memory: int
    walltime: int
    queue: str | None = None
    account: str | None = None
    processes: int = 1
    threads: int = 1
    directives: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()
    name: str = "volseg-worker"
    local_directory: str | None = None
    log_directory: str | None = None
    interface: str | None = None
    python: str | None = None
    resource_spec: str | None = None


@dataclass(frozen=True)
class ScaleSpec:
    """How many jobs (``[cluster.scale]``): ``minimum_jobs == maximum_jobs`` is a fixed number."""

    minimum_jobs: int = 1
    maximum_jobs: int = 1
    wait: float = DEFAULT_WAIT_S

    @property
    def adaptive(self) -> bool:
        return self.minimum_jobs != self.maximum_jobs


@dataclass(frozen=True)
class WorkerSpec:
    """What the workers do when tasks fail or time runs out (``[cluster.worker]``); times in seconds."""

    lifetime: float | None = None
    lifetime_stagger: float = 0.0
    retries: int | None = None
    allowed_failures: int | None = None
    death_timeout: float = 60.0


@dataclass(frozen=True)
class ClusterSpec:
    """A checked cluster file: :func:`load_cluster` makes it, :func:`open_cluster` starts it.

    ``source`` names the file in messages; ``job`` is ``None`` for ``kind = "address"``.
    """

    source: str
    kind: str
    address: str | None = None
    dashboard: str | None = None
    job: JobSpec | None = None
    scale: ScaleSpec = field(default_factory=ScaleSpec)
    worker: WorkerSpec = field(default_factory=WorkerSpec)

    @property
    def label(self) -> str:
        """Where the blocks run, for plans and reports: the address, or ``slurm-cluster``."""
        return self.address if self.address else f"{self.kind}-cluster"

    def retries_or(self, default: int) -> int:
        """The file's ``retries``, else ``default`` (the stage's own option)."""
        return default if self.worker.retries is None else self.worker.retries

    @property
    def torch_threads(self) -> int | None:
        """Torch threads per task on a jobqueue worker: the job's cores shared by its dask threads."""
        if self.job is None:
            return None
        return max(1, self.job.cores // (self.job.threads * self.job.processes))

    def describe(self) -> str:
        """One line: what the file asks for."""
        if self.job is None:
            return f"the dask scheduler at {self.address} ({self.source})"
        j, s, w = self.job, self.scale, self.worker
        jobs = f"{s.minimum_jobs}..{s.maximum_jobs}" if s.adaptive else str(s.maximum_jobs)
        life = f", workers retire after {_clock(w.lifetime)}" if w.lifetime else ""
        return (
            f"{jobs} {self.kind} job(s) of {j.cores} cores, {human_bytes(j.memory)}, {_clock(j.walltime)} "
            f"({j.processes} worker(s) x {j.threads} thread(s) each{life}; {self.source})"
        )


# ---------------------------------------------------------------------------- reading
def load_cluster(path: str | os.PathLike[str], option: str = "--cluster") -> ClusterSpec:
    """Read and check a cluster file; every fault is one line naming ``option``, the file and the key.

    Raises
    ------
    InputError
        The file is missing, unreadable or not TOML.
    OptionError
        A key is unknown, of the wrong type or out of range, or the kind's package is not installed.
    """
    source = f"{option} {os.fspath(path)}"
    return parse_cluster(_read_toml(Path(path), source), source)


def _read_toml(path: Path, source: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"{source}: no such file; write one as docs/distributed.md shows") from None
    except IsADirectoryError:
        raise InputError(f"{source}: a folder, not a TOML file") from None
    except OSError as exc:
        raise InputError(f"{source}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{source}: not a text file (byte {exc.start} is not UTF-8)") from None


_TABLES = {
    "cluster": ("kind", "address", "dashboard", "job", "scale", "worker"),
    "cluster.job": tuple(f for f in JobSpec.__dataclass_fields__),
    "cluster.scale": ("jobs", "minimum_jobs", "maximum_jobs", "wait"),
    "cluster.worker": tuple(WorkerSpec.__dataclass_fields__),
}
#: What a running scheduler's file may hold besides ``kind`` and ``address``.
_ADDRESS_KEYS = {"cluster.scale": ("wait",), "cluster.worker": ("retries",)}


class _Reader:
    """Checks the values of one file, each fault one OptionError line: ``SOURCE: [table] key value: fix``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, table: str, key: str | None, value: object, fix: str) -> OptionError:
        where = f"[{table}]" + (f" {key}" if key else "")
        shown = "" if value is _MISSING else f" {_show(value)}"
        return OptionError(f"{self.source}: {where}{shown}: {fix}")

    def table(self, data: Mapping[str, Any], name: str) -> dict[str, Any]:
        """The table ``name`` of ``data`` (empty when absent), its keys checked against the known ones."""
        leaf = name.rpartition(".")[2]
        value = data.get(leaf, {})
        if not isinstance(value, dict):
            raise self.fail(name.rpartition(".")[0] or name, leaf, value, f"write it as a table [{name}]")
        known = _TABLES[name]
        for key in value:
            if key not in known:
                hint = _ALIASES.get(key) or _ALIASES.get(key.replace("-", "_"))
                if hint in known or key.replace("-", "_") in known:
                    fix = f"unknown key; did you mean {hint or key.replace('-', '_')!r}?"
                else:
                    fix = f"unknown key; known keys are {', '.join(known)}"
                raise self.fail(name, key, _MISSING, fix)
        return dict(value)

    def integer(self, table: str, values: Mapping[str, Any], key: str, lo: int, hi: int, default: Any) -> Any:
        value = values.get(key, _MISSING)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(table, key, value, f"write a whole number from {lo} to {hi}")
        if not lo <= value <= hi:
            raise self.fail(table, key, value, f"use {lo} to {hi}")
        return value

    def text(self, table: str, values: Mapping[str, Any], key: str, default: Any = None) -> Any:
        value = values.get(key, _MISSING)
        if value is _MISSING:
            return default
        if not isinstance(value, str) or not value.strip() or "\n" in value:
            raise self.fail(table, key, value, "write it as one line of text in quotes")
        return value.strip()

    def texts(self, table: str, values: Mapping[str, Any], key: str) -> tuple[str, ...]:
        value = values.get(key, _MISSING)
        if value is _MISSING:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and "\n" not in v for v in value):
            raise self.fail(table, key, value, f'write a list of lines in quotes, e.g. {key} = ["..."]')
        return tuple(v.strip() for v in value if v.strip())

    def seconds(self, table: str, values: Mapping[str, Any], key: str, default: Any = None) -> Any:
        value = values.get(key, _MISSING)
        if value is _MISSING:
            return default
        seconds = _duration(value)
        if seconds is None:
            raise self.fail(
                table, key, value, 'write HH:MM:SS (e.g. "04:00:00") or a duration such as "3h45m" or "90s"'
            )
        return seconds


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def parse_cluster(data: Mapping[str, Any], source: str) -> ClusterSpec:
    """The checked spec of a cluster file's contents (``source`` names the file in messages)."""
    read = _Reader(source)
    extra = [k for k in data if k != "cluster"]
    if extra:
        raise read.fail(
            "cluster", None, _MISSING, f"unknown top-level key {extra[0]!r}; put everything under [cluster]"
        )
    if "cluster" not in data:
        raise OptionError(f'{source}: no [cluster] table; start the file with [cluster] and kind = "slurm"')
    top = read.table(data, "cluster")
    kind = top.get("kind", _MISSING)
    if kind is _MISSING:
        raise read.fail("cluster", "kind", _MISSING, f"missing; use one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise read.fail("cluster", "kind", kind, f"use one of {', '.join(KINDS)}")
    tables = {name: read.table(top, name) for name in ("cluster.job", "cluster.scale", "cluster.worker")}
    if kind == "address":
        return _address_spec(read, top, tables)
    if importlib.util.find_spec("dask_jobqueue") is None:
        raise read.fail("cluster", "kind", kind, f"needs dask-jobqueue, which is not installed: {_INSTALL}")
    if "address" in top:
        raise read.fail("cluster", "address", top["address"], 'only for kind = "address"; volseg starts one')
    job = _job(read, kind, tables["cluster.job"])
    scale = _scale_spec(read, tables["cluster.scale"])
    worker = _worker(read, tables["cluster.worker"], job.walltime)
    dashboard = read.text("cluster", top, "dashboard")
    return ClusterSpec(source, kind, None, dashboard, job, scale, worker)


def _address_spec(read: _Reader, top: dict[str, Any], tables: dict[str, dict[str, Any]]) -> ClusterSpec:
    """A running scheduler: its address, how long to wait for a worker, and the retries of a block."""
    address = read.text("cluster", top, "address")
    if address is None:
        raise read.fail("cluster", "address", _MISSING, 'missing; write the scheduler\'s "tcp://HOST:PORT"')
    if not is_address(address):
        raise read.fail(
            "cluster", "address", address, "write a dask scheduler address such as tcp://10.0.0.5:8786"
        )
    if "dashboard" in top:
        raise read.fail(
            "cluster", "dashboard", top["dashboard"], "the running scheduler has its own; remove it"
        )
    if tables["cluster.job"]:
        raise read.fail(
            "cluster.job",
            None,
            _MISSING,
            'does not apply to kind = "address" (its workers run already); remove it',
        )
    for name, allowed in _ADDRESS_KEYS.items():
        for key in tables[name]:
            if key not in allowed:
                fix = 'does not apply to kind = "address"; ' + (
                    "set DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES where the scheduler runs"
                    if key == "allowed_failures"
                    else "give it to the workers ('dask worker --lifetime ...')"
                    if key.startswith(("lifetime", "death"))
                    else "the workers are started by whoever started the scheduler"
                )
                raise read.fail(name, key, tables[name][key], fix)
    wait = read.seconds("cluster.scale", tables["cluster.scale"], "wait", 0.0)
    retries = read.integer("cluster.worker", tables["cluster.worker"], "retries", 0, 100, None)
    return ClusterSpec(
        read.source, "address", address, None, None, ScaleSpec(1, 1, wait), WorkerSpec(retries=retries)
    )


def _job(read: _Reader, kind: str, values: dict[str, Any]) -> JobSpec:
    t = "cluster.job"
    for key in ("cores", "memory", "walltime"):
        if key not in values:
            raise read.fail(t, key, _MISSING, f"missing; every {kind} job needs cores, memory and walltime")
    cores = read.integer(t, values, "cores", 1, 4096, None)
    memory = _memory(read, values["memory"])
    walltime = read.seconds(t, values, "walltime")
    if walltime < 60:
        raise read.fail(t, "walltime", values["walltime"], 'use at least a minute, e.g. "04:00:00"')
    processes = read.integer(t, values, "processes", 1, cores, 1)
    threads = read.integer(t, values, "threads", 1, 4096, max(1, cores // processes))
    if threads * processes > cores:
        raise read.fail(
            t, "threads", threads, f"{threads} x {processes} process(es) is more than the job's {cores} cores"
        )
    if memory / processes < MIN_WORKER_MEMORY:
        raise read.fail(
            t, "memory", values["memory"],
            f"{human_bytes(memory / processes)} per worker process is too little; give each at least "
            f"{human_bytes(MIN_WORKER_MEMORY)} (e.g. \"4GiB\" per process)",
        )  # fmt: skip
    if "resource_spec" in values and kind not in ("pbs", "sge"):
        raise read.fail(
            t, "resource_spec", values["resource_spec"], "only for kind pbs or sge; use directives"
        )
    texts = {k: read.text(t, values, k) for k in ("queue", "account", "local_directory", "log_directory")}
    texts |= {k: read.text(t, values, k) for k in ("interface", "python", "resource_spec")}
    name = read.text(t, values, "name", "volseg-worker")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise read.fail(t, "name", name, "use letters, digits, '.', '_' or '-' (a batch job name)")
    return JobSpec(
        cores=cores,
        memory=memory,
        walltime=int(walltime),
        processes=processes,
        threads=threads,
        directives=read.texts(t, values, "directives"),
        prologue=read.texts(t, values, "prologue"),
        name=name,
        **texts,
    )


def _memory(read: _Reader, value: object) -> int:
    from dask.utils import parse_bytes

    fix = 'write a size such as "32GiB" or "64GB"'
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise read.fail("cluster.job", "memory", value, fix)
    try:
        size = int(parse_bytes(value))
    except (ValueError, TypeError):
        raise read.fail("cluster.job", "memory", value, fix) from None
    if size <= 0:
        raise read.fail("cluster.job", "memory", value, fix)
    return size


def _scale_spec(read: _Reader, values: dict[str, Any]) -> ScaleSpec:
    t = "cluster.scale"
    wait = read.seconds(t, values, "wait", DEFAULT_WAIT_S)
    if wait <= 0:
        raise read.fail(t, "wait", values["wait"], 'a cluster\'s jobs take time to start; use e.g. "1h"')
    if "jobs" in values:
        for key in ("minimum_jobs", "maximum_jobs"):
            if key in values:
                raise read.fail(
                    t, key, values[key], "give jobs (a fixed number) or minimum_jobs and maximum_jobs"
                )
        n = read.integer(t, values, "jobs", 1, 10_000, None)
        return ScaleSpec(n, n, wait)
    high = read.integer(t, values, "maximum_jobs", 1, 10_000, None)
    low = read.integer(t, values, "minimum_jobs", 0, 10_000, None)
    if high is None:
        high = max(1, low or 1)
    if low is None:
        low = min(1, high)
    if low > high:
        raise read.fail(t, "minimum_jobs", low, f"more than maximum_jobs {high}")
    return ScaleSpec(low, high, wait)


def _worker(read: _Reader, values: dict[str, Any], walltime: int) -> WorkerSpec:
    """The worker's limits; the lifetime (default: from the walltime) must end before the walltime."""
    t = "cluster.worker"
    lifetime = read.seconds(t, values, "lifetime")
    stagger = read.seconds(t, values, "lifetime_stagger")
    if lifetime is None:  # retire before the batch system kills: a tenth of the walltime, 2 to 15 minutes
        margin = min(max(walltime / 10, 120.0), 900.0, walltime / 2)
        lifetime = walltime - margin
        stagger = margin / 4 if stagger is None else stagger
    stagger = stagger or 0.0
    if lifetime <= 0:
        raise read.fail(t, "lifetime", values.get("lifetime"), 'use a positive duration, e.g. "3h45m"')
    if stagger >= lifetime:
        raise read.fail(
            t, "lifetime_stagger", values.get("lifetime_stagger"), "make it smaller than the lifetime"
        )
    if lifetime + stagger >= walltime:
        raise read.fail(
            t, "lifetime", values.get("lifetime", _clock(lifetime)),
            f"the lifetime + lifetime_stagger ({_clock(lifetime + stagger)}) must end before the walltime "
            f"{_clock(walltime)}, or the batch system kills the workers first; use e.g. "
            f'"{_units(max(60, walltime - min(max(walltime / 10, 120), 900)))}"',
        )  # fmt: skip
    death = read.seconds(t, values, "death_timeout", 60.0)
    if not 1 <= death <= 3600:
        raise read.fail(t, "death_timeout", values["death_timeout"], 'use 1 s to 1 h, e.g. "60s"')
    return WorkerSpec(
        lifetime=lifetime,
        lifetime_stagger=stagger,
        retries=read.integer(t, values, "retries", 0, 100, None),
        allowed_failures=read.integer(t, values, "allowed_failures", 0, 100, None),
        death_timeout=death,
    )


def is_address(text: str) -> bool:
    """A dask scheduler address: ``tcp://HOST:PORT`` (also ``tls://``, ``ucx://``, ``[::1]`` hosts)."""
    match = re.fullmatch(r"[a-z][a-z0-9+]*://(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+):(\d{1,5})", text)
    return bool(match) and 0 < int(match.group(2)) < 65536


# ------------------------------------------------------------------------ durations
_CLOCK = re.compile(r"(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)")
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def _duration(value: object) -> float | None:
    """Seconds of ``"04:00:00"``, ``"1-12:00:00"``, ``"3h45m"``, ``"90s"`` or a whole number; else None.

    ``"30:00"`` is refused: SLURM reads it as minutes, LSF as hours.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    clock = _CLOCK.fullmatch(text)
    if clock:
        d, h, m, s = (int(g or 0) for g in clock.groups())
        return float(((d * 24 + h) * 60 + m) * 60 + s)
    if text and re.fullmatch(r"(?:\s*\d+(?:\.\d+)?\s*[dhms])+\s*", text):
        return float(sum(float(n) * _UNIT[u] for n, u in _PART.findall(text)))
    return None


def _clock(seconds: float) -> str:
    """``14400`` -> ``"04:00:00"`` (hours past 24 kept as hours: SLURM, PBS and SGE read it so)."""
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _units(seconds: float) -> str:
    """``13500`` -> ``"3h45m"``."""
    s = int(seconds)
    parts = [(s // 3600, "h"), (s % 3600 // 60, "m"), (s % 60, "s")]
    return "".join(f"{n}{u}" for n, u in parts if n) or "0s"


def _show(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------- jobqueue
def job_kwargs(spec: ClusterSpec) -> dict[str, Any]:
    """The keyword arguments of the dask-jobqueue cluster (and job) class for ``spec`` (a jobqueue kind)."""
    j, w = spec.job, spec.worker
    if j is None:
        raise ValueError(f"{spec.source}: kind {spec.kind!r} starts no jobs")
    extra: list[str] = []
    if w.lifetime:
        extra += ["--lifetime", f"{int(w.lifetime)}s"]
        if w.lifetime_stagger:
            extra += ["--lifetime-stagger", f"{int(w.lifetime_stagger)}s"]
    kwargs: dict[str, Any] = {
        "cores": j.threads * j.processes,  # dask threads of the job; the batch system's cores follow
        "memory": j.memory,
        "processes": j.processes,
        "job_name": j.name,
        "queue": j.queue,
        "walltime": _walltime(spec.kind, j.walltime),
        "job_extra_directives": list(j.directives),
        "job_script_prologue": list(j.prologue),
        "worker_extra_args": extra,
        "death_timeout": int(w.death_timeout),
        "local_directory": j.local_directory,
        "log_directory": j.log_directory,
        "interface": j.interface,
        "python": j.python,
    }
    if spec.kind == "slurm":
        kwargs |= {"account": j.account, "job_cpu": j.cores}
    elif spec.kind == "pbs":
        kwargs |= {"account": j.account, "resource_spec": j.resource_spec or _pbs_resources(j)}
    elif spec.kind == "lsf":
        kwargs |= {"project": j.account, "ncpus": j.cores, "mem": j.memory}
    else:  # sge: cores and memory are site resources (a parallel environment, h_vmem): resource_spec
        kwargs |= {"project": j.account, "resource_spec": j.resource_spec}
    return {k: v for k, v in kwargs.items() if v is not None}


def _walltime(kind: str, seconds: int) -> str:
    if kind == "lsf":  # bsub -W [hours:]minutes
        return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"
    return _clock(seconds)


def _pbs_resources(j: JobSpec) -> str:
    from dask_jobqueue.pbs import pbs_format_bytes_ceil

    return f"select=1:ncpus={j.cores}:mem={pbs_format_bytes_ceil(j.memory)}"


def _cluster_class(spec: ClusterSpec) -> Any:
    try:
        import dask_jobqueue
    except ImportError:
        raise OptionError(
            f'{spec.source}: [cluster] kind "{spec.kind}" needs dask-jobqueue, which is not installed: '
            + _INSTALL
        ) from None
    return getattr(dask_jobqueue, JOBQUEUE_KINDS[spec.kind])


def job_script(spec: ClusterSpec, scheduler: str = "tcp://<scheduler>:8786") -> str:
    """The batch script each job of ``spec`` runs, rendered without a batch system or a scheduler.

    Nothing is submitted and nothing is written (not even the log directory).
    """
    kwargs = job_kwargs(spec)
    job_cls = _cluster_class(spec).job_cls
    logs = kwargs.get("log_directory")
    stand_in = tempfile.mkdtemp(prefix="volseg-logs-") if logs and not os.path.isdir(logs) else None
    if stand_in:
        kwargs["log_directory"] = stand_in  # the job class makes its log folder: render with a stand-in
    try:
        script = job_cls(scheduler=scheduler, name="<worker>", **kwargs).job_script()
    finally:
        if stand_in:
            shutil.rmtree(stand_in, ignore_errors=True)
    return script.replace(stand_in, logs) if stand_in else script


def make_cluster(spec: ClusterSpec, errors: list[str] | None = None) -> Any:
    """The dask-jobqueue cluster of ``spec``: its scheduler runs here, no job is submitted until it scales.

    ``allowed_failures`` goes to that scheduler. A job that cannot be submitted (``sbatch`` refuses it)
    appends the batch system's answer to ``errors``. Close the cluster (:func:`open_cluster` does) to cancel
    its jobs.
    """
    import logging

    # without a dashboard its HTTP routes still listen: on a free port, not 8787 of a shared login node
    options: dict[str, Any] = {"dashboard_address": spec.dashboard or ":0", "dashboard": bool(spec.dashboard)}
    if spec.worker.allowed_failures is not None:
        options["allowed_failures"] = spec.worker.allowed_failures
    cls = _cluster_class(spec)
    extra = {} if errors is None else {"job_cls": _reporting(cls.job_cls, errors)}
    return cls(scheduler_options=options, silence_logs=logging.ERROR, **extra, **job_kwargs(spec))


def _reporting(job_cls: Any, errors: list[str]) -> Any:
    """``job_cls`` whose failed submissions are told in ``errors`` (the batch system's last line)."""

    class Reporting(job_cls):  # type: ignore[misc, valid-type]
        async def start(self) -> None:
            try:
                await super().start()
            except Exception as exc:
                from distributed.core import Status

                self.status = Status.failed  # never started: closing the cluster must not wait for it
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                errors.append(lines[-1][:300] if lines else type(exc).__name__)
                raise

    Reporting.__name__ = Reporting.__qualname__ = job_cls.__name__
    return Reporting


def _check_submission(spec: ClusterSpec) -> None:
    """The batch system's submit and cancel commands are on this machine's ``PATH``."""
    job_cls = _cluster_class(spec).job_cls
    for command in (job_cls.submit_command, job_cls.cancel_command):
        name = command.split()[0] if command else None
        if name and shutil.which(name) is None:
            raise OptionError(
                f'{spec.source}: [cluster] kind "{spec.kind}" submits jobs with {job_cls.submit_command} and '
                f"cancels them with {job_cls.cancel_command}, but {name} is not on this machine's PATH; run "
                "volseg where jobs can be submitted (a login node or a job of its own)"
            )


def _adapt(cluster: Any, spec: ClusterSpec) -> None:
    """Scale between the file's minimum and maximum jobs (a fixed number: both equal), respawning ended jobs.

    A fixed number goes through the adaptive loop too: a plain ``scale`` does not replace a job that ended
    (its walltime, a retired worker), the adaptive loop does (dask-jobqueue #611).
    """
    s, j = spec.scale, spec.job
    if j is None:
        return
    kwargs: dict[str, Any] = {
        "minimum": s.minimum_jobs * j.processes,
        "maximum": s.maximum_jobs * j.processes,
    }
    if j.processes > 1:  # scale down whole jobs, never a single worker of a job (dask-jobqueue #498)
        kwargs["worker_key"] = job_of_worker
    cluster.adapt(**kwargs)
    _watch_ended_jobs(cluster)


def job_of_worker(ws: Any) -> str:
    """The job a worker of a multi-process job belongs to: ``volseg-worker-3-1`` -> ``volseg-worker-3``."""
    return str(ws.name).rsplit("-", 1)[0]


#: Checks (one a second) that all of a job's workers stay gone before the job is replaced.
ENDED_AFTER_CHECKS = 5


def forget_ended_jobs(cluster: Any, absent: dict[str, int], checks: int = ENDED_AFTER_CHECKS) -> list[str]:
    """Drop the jobs whose every worker has left from ``cluster.workers``; the adaptive loop replaces them.

    distributed does this for a job of one worker process, not for a job of several (its workers are named
    ``JOB-0``, ``JOB-1``, ...), whose ended job would count as running for ever (dask-jobqueue #611).
    ``absent`` counts, per job seen with workers, the checks since none was there. Returns the jobs dropped.
    """
    observed = {str(w.get("name")) for w in cluster.scheduler_info.get("workers", {}).values()}
    dropped = []
    for job in list(cluster.workers):
        spec = cluster.worker_spec.get(job) or {}
        names = {f"{job}{suffix}" for suffix in spec.get("group", [""])}
        if names & observed:
            absent[job] = 0
            continue
        if job not in absent:
            continue  # not started yet (queued): nothing to replace
        absent[job] += 1
        if absent[job] >= checks:
            del absent[job]
            ended = cluster.workers.pop(job)
            cluster.loop.add_callback(ended.close)  # cancels the job if it still runs (harmless otherwise)
            dropped.append(job)
    return dropped


def _watch_ended_jobs(cluster: Any) -> None:
    from tornado.ioloop import PeriodicCallback

    absent: dict[str, int] = {}
    callback = PeriodicCallback(lambda: forget_ended_jobs(cluster, absent), 1000)
    cluster.periodic_callbacks["volseg-ended-jobs"] = callback  # stopped when the cluster closes
    cluster.loop.add_callback(callback.start)


# -------------------------------------------------------------------------- running
@contextlib.contextmanager
def open_cluster(spec: ClusterSpec) -> Iterator[Client]:
    """A client of the cluster ``spec`` with at least one worker; what was started here is closed after.

    For a jobqueue kind: the scheduler starts here, jobs are submitted and scaled (adaptive between the
    minimum and maximum jobs), and on the way out, whatever the reason (done, an error, a stop signal
    of :mod:`volseg.core.preempt`), the cluster is closed and its jobs cancelled. For ``address``: a client
    of the running scheduler, which is left running.

    Raises
    ------
    OptionError
        The scheduler does not answer, or no worker joins within ``[cluster.scale] wait``.
    Preempted
        A stop signal came while waiting for the first worker.
    """
    from distributed import Client

    if spec.job is None:
        try:
            client = Client(spec.address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise OptionError(
                f"{spec.source}: [cluster] address {spec.address}: no dask scheduler answered within "
                f"{CONNECT_TIMEOUT_S:.0f} s ({type(exc).__name__}); start one with 'dask scheduler' or "
                "correct the address"
            ) from None
        with client:
            _wait_for_workers(client, spec)
            yield client
        return
    _check_submission(spec)
    errors: list[str] = []
    try:
        cluster = make_cluster(spec, errors)
    except (OSError, ValueError, RuntimeError) as exc:  # e.g. no such network interface
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise OptionError(
            f"{spec.source}: the scheduler cannot start here ({first}); check [cluster.job] interface"
        ) from None
    try:
        _adapt(cluster, spec)
        with Client(cluster, set_as_default=False) as client:
            _wait_for_workers(client, spec, errors)
            yield client
    finally:
        cluster.close()  # cancels every job (scancel, qdel, bkill): no idle worker is left holding nodes


def _wait_for_workers(client: Client, spec: ClusterSpec, errors: Sequence[str] = ()) -> None:
    """Until the first worker joins, ``[cluster.scale] wait`` at most; a stop signal, or a job the batch
    system refused (``errors``), ends the wait."""
    deadline = time.monotonic() + spec.scale.wait
    while not client.scheduler_info().get("workers"):
        if errors:
            raise OptionError(
                f"{spec.source}: the batch system refused the job: {errors[0]}; check [cluster.job] "
                "(queue, account, directives) against the script that --dry-run prints"
            )
        if preempt.requested():
            raise preempt.Preempted(
                f"{spec.source}: stopped by {preempt.stop_signal()} while waiting for the first worker; "
                "nothing was computed, rerun the same command"
            )
        left = deadline - time.monotonic()
        if left <= 0:
            raise OptionError(_no_workers(spec))
        with contextlib.suppress(TimeoutError):
            client.wait_for_workers(1, timeout=min(left, 2.0))


def _no_workers(spec: ClusterSpec) -> str:
    if spec.job is None:
        return (
            f"{spec.source}: the scheduler at {spec.address} has no workers; start some with "
            f"'dask worker {spec.address}', or set [cluster.scale] wait to wait for them"
        )
    logs = f" and their logs in {spec.job.log_directory}" if spec.job.log_directory else ""
    return (
        f"{spec.source}: no worker joined within {_clock(spec.scale.wait)}; check the queued jobs "
        f"(squeue / qstat / bjobs){logs}, or raise [cluster.scale] wait"
    )


@dataclass(frozen=True)
class Outcome:
    """What became of one task of :func:`run_tasks`: its value, its last error, or not started (stopped)."""

    index: int
    value: Any = None
    error: BaseException | None = None
    stopped: bool = False


def run_tasks(
    client: Client, tasks: Sequence[Any], retries: int, stop: Callable[[], bool] = preempt.requested
) -> Iterator[Outcome]:
    """Run dask ``tasks`` on ``client``; yield an :class:`Outcome` for each as it finishes.

    A task that raises is tried ``1 + retries`` times in all (dask's retries, possibly on other workers),
    then its error is yielded; it is never resubmitted again. A task whose worker died is rerun by the
    scheduler at most ``allowed-failures`` times, then yielded with :class:`distributed.KilledWorker`. Once
    ``stop()`` is true, the tasks not yet started are cancelled and yielded as stopped; those running finish.
    """
    from distributed import as_completed

    futures = client.compute(list(tasks), retries=retries)
    position = {f.key: i for i, f in enumerate(futures)}
    lost: dict[Any, int] = {}
    stopping = False
    pending = as_completed(futures, loop=client.loop)
    for future in pending:
        if not stopping and stop():  # the workers finish the tasks they run; no new one starts
            stopping = True
            left = [f for f in futures if f.status == "pending"]
            client.cancel(left)
            yield from (Outcome(position[f.key], stopped=True) for f in left)
        if future.status == "cancelled":
            continue
        if future.status == "error":
            yield Outcome(position[future.key], error=future.exception())
        else:
            try:
                value = future.result()
            except Exception as exc:
                # The worker holding this small result died after computing it: the scheduler recomputes
                # the key (its output is stored, so the task only finds it done and returns).
                lost[future.key] = lost.get(future.key, 0) + 1
                if lost[future.key] <= 1 + retries:
                    pending.add(future)
                    continue
                yield Outcome(position[future.key], error=exc)
            else:
                yield Outcome(position[future.key], value=value)
        future.release()
