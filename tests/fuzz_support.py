"""The machinery of the CLI fuzz suite (not a test module): tests/test_fuzz.py and benchmarks/fuzz.py
run the same seeded generators, the test with a small budget, the benchmark with a large one.

The contract checked for every case (docs/reliability.md): a command ends with exit code 0 (the
input happened to be good) or 2 with exactly one line on stderr starting with ``volseg: error: ``;
never a traceback, another exit code, or exit 1 (only for a run whose blocks failed); after exit 2
no output that looks complete (a volume whose ``volseg.status`` is ``complete``, a model file, a
PNG, a JSON report); and no input is written or deleted, whatever the flags.

Each case runs in-process through typer's ``CliRunner`` (about 100 x faster than a subprocess),
in its own folder (also the working directory, so a relative path never lands in the checkout),
under a ``SIGALRM`` watchdog. Failures are grouped by root cause (:func:`signature`): the
exception type and the innermost volseg function, or the command and what was wrong.

Budgets: ``VOLSEG_FUZZ_CASES=N`` sets the cases of every family; ``VOLSEG_FUZZ_SCALE=K``
multiplies the defaults of :data:`DEFAULT_CASES`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
import re
import shlex
import shutil
import signal
import struct
import sys
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: Cases per family in the test suite (about 45 s in all on 2 cores); benchmarks/fuzz.py passes more.
DEFAULT_CASES = {"model": 60, "config": 26, "tiff": 80, "zarr": 80, "options": 130, "paths": 50, "corpus": 0}
FAMILIES = tuple(DEFAULT_CASES)
#: Seconds a case may take before it counts as a hang (the inputs are tiny: every good case ends in ~1 s).
CASE_TIMEOUT_S = float(os.environ.get("VOLSEG_FUZZ_TIMEOUT", "30"))
DEFAULT_SEED = 20240601
SEED = int(os.environ.get("VOLSEG_FUZZ_SEED", str(DEFAULT_SEED)))
#: Memory a case may allocate beyond what the process holds (RLIMIT_DATA, Linux): a case that wants more
#: for these tiny inputs fails with MemoryError (reported) instead of waking the OOM killer.
CASE_MEMORY_GB = float(os.environ.get("VOLSEG_FUZZ_MEMORY_GB", "6"))
ERROR_PREFIX = "volseg: error: "


def cases_for(family: str) -> int:
    """The cases of ``family``: ``VOLSEG_FUZZ_CASES`` if set, else the default times ``VOLSEG_FUZZ_SCALE``."""
    if os.environ.get("VOLSEG_FUZZ_CASES"):
        return int(os.environ["VOLSEG_FUZZ_CASES"])
    return max(1, round(DEFAULT_CASES[family] * float(os.environ.get("VOLSEG_FUZZ_SCALE", "1"))))


# ============================================================================ cases and outcomes
@dataclasses.dataclass
class Case:
    """One command line with its own folder: ``inp`` holds its (mutated) inputs, ``out`` its outputs."""

    family: str
    root: Path
    how: str = ""
    argv: list[str] = dataclasses.field(default_factory=list)
    bad: bool | None = None  # True: must be refused (exit 2); None: exit 0 or 2 are both fine
    marker: Path | None = None  # a file that only pickled code would create
    inputs: list[Path] | None = None  # what must stay unchanged (default: everything under ``inp``)
    timeout: float = CASE_TIMEOUT_S

    @property
    def inp(self) -> Path:
        return self.root / "in"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def command(self) -> str:
        return next((a for a in self.argv if not a.startswith("-")), "?")

    def shell(self) -> str:
        return "volseg " + " ".join(shlex.quote(a) for a in self.argv)


@dataclasses.dataclass
class Outcome:
    exit_code: int | None
    stdout: str
    stderr: str
    traceback: str | None  # an exception that escaped the command (in a real process: a traceback)
    where: str | None  # the innermost volseg frame of that exception, "volseg/x.py:function"
    exc_type: str | None
    seconds: float
    timed_out: bool = False


class CaseTimeout(BaseException):
    """Raised by the watchdog; a BaseException so that no ``except Exception`` in volseg swallows it."""


def _alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout()


_CLI: dict[str, Any] = {}


def _cli() -> tuple[Any, Any]:
    """typer's CliRunner and the click command of ``volseg.app.cli.app``, built once (that takes ~0.1 s),
    which ``CliRunner.invoke`` would pay on every case."""
    if not _CLI:
        import typer.main
        from typer.testing import CliRunner

        from volseg.app.cli import app

        _CLI.update(runner=CliRunner(), command=typer.main.get_command(app))
    return _CLI["runner"], _CLI["command"]


@contextlib.contextmanager
def _memory_cap(gib: float) -> Iterator[None]:
    """Lower the soft RLIMIT_DATA to what the process holds plus ``gib`` for the duration of a case."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        with open("/proc/self/status") as f:
            held = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmData:"))
    except (ImportError, OSError, StopIteration, ValueError):
        yield  # not Linux: no cap
        return
    cap = held + int(gib * 2**30)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


@contextlib.contextmanager
def _as_a_process_would() -> Iterator[None]:
    """Warnings and log records reach stderr as in a fresh ``python -m volseg``, not pytest's capture:
    Python's default warning filters, each warning shown (a real process sees each once), and the
    root logger without handlers, so that a record no handler takes reaches ``logging.lastResort``."""
    import logging
    import warnings

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers, root.level = [], logging.WARNING  # pytest's capture handlers out: logging.lastResort
    shown = warnings.showwarning
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category)
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: (
                sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
            )
            yield
    finally:
        warnings.showwarning = shown
        root.handlers, root.level = handlers, level


def invoke(argv: list[str], cwd: Path, timeout: float = CASE_TIMEOUT_S) -> Outcome:
    """Run ``volseg ARGV`` in-process in ``cwd`` under a watchdog; never raises for the command's failures.

    What ``CliRunner.invoke`` does (captured streams, ``SystemExit`` read as the exit code, any other
    exception kept as the traceback a real process would print), on a command built once.
    """
    runner, command = _cli()
    old_cwd = os.getcwd()
    os.chdir(cwd)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    start = time.perf_counter()
    code: int | None = 0
    info = None
    try:
        with runner.isolation() as streams, _as_a_process_would(), _memory_cap(CASE_MEMORY_GB):
            try:
                command.main(args=list(argv), prog_name="volseg")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # noqa: BLE001  (a bug: a real process prints its traceback and exits 1)
                code, info = 1, sys.exc_info()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                stdout, stderr = (s.getvalue().decode("utf-8", "replace") for s in streams[:2])
    except CaseTimeout:
        return Outcome(None, "", "", None, None, None, time.perf_counter() - start, timed_out=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        os.chdir(old_cwd)
    seconds = time.perf_counter() - start
    tb = where = exc_type = None
    if info is not None:
        tb = "".join(traceback.format_exception(*info))
        exc_type, where = _origin(info[1])
    return Outcome(code, stdout, stderr, tb, where, exc_type, seconds)


def _where(exc: BaseException) -> str | None:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/volseg/" in f.filename.replace(os.sep, "/")]
    if not (ours or frames):
        return None
    last = (ours or frames)[-1]
    return f"{'/'.join(Path(last.filename).parts[-2:])}:{last.name}"


def _origin(exc: BaseException) -> tuple[str, str | None]:
    """The type and innermost volseg frame of the exception that started it all: one raised while
    handling another (a broken ``except`` clause) is named after the one it was handling."""
    chain = [exc]
    while chain[-1].__context__ is not None and not chain[-1].__suppress_context__ and len(chain) < 10:
        chain.append(chain[-1].__context__)
    first = chain[-1]
    name, where = type(first).__name__, _where(first)
    if first is not exc:
        where = f"{where}, then {type(exc).__name__} in {_where(exc)} while handling it"
    return name, where


# ============================================================================ the contract
_OUTPUT_KINDS = {".pt": "a model file", ".png": "a PNG", ".json": "a JSON report"}


def complete_outputs(folder: Path) -> list[str]:
    """What under ``folder`` looks like a finished output: complete volumes, model files, PNGs, reports."""
    found = []
    if not folder.exists():
        return found
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder).as_posix()
        if path.name == "zarr.json":
            with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
                meta = json.loads(path.read_text())
                if meta.get("attributes", {}).get("volseg", {}).get("status") == "complete":
                    found.append(f"a complete volume ({path.parent.relative_to(folder).as_posix()})")
            continue
        kind = _OUTPUT_KINDS.get(path.suffix.lower())
        if kind and not path.name.startswith("."):
            found.append(f"{kind} ({rel})")
    return found


def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    """Size and SHA-1 of every file under ``roots`` (tiny inputs: about a millisecond)."""
    files: dict[str, tuple[int, str]] = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(root.rglob("*")) if root.exists() else []
        for path in paths:
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                files[str(path)] = (len(data), hashlib.sha1(data).hexdigest())
    return files


def stderr_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def judge(case: Case, outcome: Outcome, before: dict, after: dict) -> list[tuple[str, str]]:
    """The contract's violations as ``(kind, detail)``; ``kind`` names the root cause (no paths or values)."""
    cmd = case.command
    problems: list[tuple[str, str]] = []
    if outcome.timed_out:
        return [
            (f"{cmd}: no answer in time (hang, or work not bounded by the input)", f"{case.timeout:.0f} s")
        ]
    if outcome.traceback is not None:
        last = outcome.traceback.strip().splitlines()[-1]
        problems.append((f"uncaught {outcome.exc_type} in {outcome.where} (traceback, exit 1)", last))
    elif "Traceback (most recent call last)" in outcome.stdout + outcome.stderr:
        problems.append((f"{cmd}: a traceback is printed", outcome.stderr[-300:]))
    code = outcome.exit_code
    lines = stderr_lines(outcome.stderr)
    # a demo of --steps 1 that ran is a valid run whose model did not learn: exit 1 is its documented answer
    learned_nothing = cmd == "demo" and code == 1 and any("did not learn" in ln for ln in lines)
    if outcome.traceback is None and code not in (0, 2) and not learned_nothing:
        first = next((ln for ln in lines if ln.startswith(ERROR_PREFIX)), lines[-1] if lines else "")
        label = (
            "exit 1 (only for failed blocks) on input that was bad before anything ran"
            if code == 1
            else (f"exit code {code}")
        )
        problems.append((f"{cmd}: {label}: {normalise(first)}", first))
    if code == 2:
        if any(ln.lstrip().startswith(("Usage:", "╭", "│", "Try '")) for ln in lines):
            problems.append(("click/typer usage error printed as a multi-line box, not one volseg line", ""))
        elif len(lines) != 1 or not lines[0].startswith(ERROR_PREFIX):
            errors = [ln for ln in lines if ln.startswith(ERROR_PREFIX)]
            others = sorted({_source(cmd, ln) for ln in lines if not ln.startswith(ERROR_PREFIX)})
            shape = (
                "nothing on stderr"
                if not lines
                else f"no {ERROR_PREFIX.strip()!r} line, but {', '.join(others)}"
                if not errors
                else f"{len(errors)} error lines"
                if len(errors) > 1
                else f"{', '.join(others)} besides the error line"
            )
            problems.append((f"{cmd}: exit 2 with {shape}", "\n".join(lines[:3])[:300]))
        for thing in complete_outputs(case.out):
            problems.append(
                (f"{cmd}: exit 2 leaves {re.sub(r' [(].*', '', thing)} that looks complete", thing)
            )
    if code == 0 and case.bad:
        problems.append((f"{cmd}: bad input accepted (exit 0)", case.how))
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        what = "deleted" if any(k not in after for k in changed) else "written"
        problems.append((f"{cmd}: an input was {what}", ", ".join(changed[:3])))
    if case.marker is not None and case.marker.exists():
        problems.append((f"{cmd}: pickled code in a model file ran", str(case.marker)))
    return problems


def _source(command: str, line: str) -> str:
    """What printed an extra stderr line, in words (for grouping)."""
    warning = re.search(r"\b(\w+Warning): ", line)
    if warning:
        return f"a Python {warning.group(1)}"
    if line.startswith(("<tifffile", "<Tiff")):
        return "tifffile's log"
    if re.match(r"\[\w+\]", line) or line.startswith(f"{command}: "):
        return "progress lines"
    return f"other lines ({normalise(line)[:40]!r})"


def normalise(text: str) -> str:
    """A message with paths, numbers and quoted values masked, so that equal causes compare equal."""
    text = re.sub(r"(/[^\s:;,'\"]*)+", "<path>", text)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "<v>", text)
    text = re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "N", text)
    return text[:140]


# ============================================================================ recording
@dataclasses.dataclass
class Failure:
    kind: str
    count: int
    family: str
    how: str
    command: str
    exit_code: int | None
    detail: str
    tail: str
    folder: str


@dataclasses.dataclass
class FamilyResult:
    family: str
    cases: int = 0
    exit0: int = 0
    exit2: int = 0
    seconds: float = 0.0
    failures: dict[str, Failure] = dataclasses.field(default_factory=dict)
    slowest: list[tuple[float, str]] = dataclasses.field(default_factory=list)

    def note_time(self, seconds: float, case: Case) -> None:
        self.slowest = sorted(
            [*self.slowest, (round(seconds, 2), f"{case.how} -> {case.command}")], reverse=True
        )[:5]

    def summary(self) -> str:
        head = (
            f"fuzz family {self.family!r}: {self.cases} cases ({self.exit0} accepted, {self.exit2} refused), "
            f"{len(self.failures)} distinct failures in {self.seconds:.1f} s"
        )
        parts = [head, "slowest cases: " + "; ".join(f"{t} s {h[:100]}" for t, h in self.slowest)]
        for f in self.failures.values():
            parts.append(
                f"\n- {f.kind}  [x{f.count}]\n    first: {f.how}\n    $ {f.command}\n    exit {f.exit_code}"
                f"{': ' + f.detail if f.detail else ''}\n    {f.tail.strip()[-600:]}".rstrip()
            )
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "cases": self.cases,
            "accepted": self.exit0,
            "refused": self.exit2,
            "seconds": round(self.seconds, 2),
            "slowest": [{"seconds": t, "case": h} for t, h in self.slowest],
            "failures": [dataclasses.asdict(f) for f in self.failures.values()],
        }


class Workspace:
    """The tiny real inputs every family mutates: volumes, a model, TIFFs, a training config.

    Built once (about a second); ``base`` is checked after every case and rebuilt if a case changed it.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.base = self.root / "base"
        self.cases = self.root / "cases"
        self.keep = self.root / "failures"
        self._n = 0
        self._current: Path | None = None
        self.build()

    # ------------------------------------------------------------------ building
    def build(self) -> None:
        import tifffile
        from predict_support import unet_file

        from volseg.stages.synth import synth

        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir(parents=True)
        s = synth(self.base / "synth", shape=(3, 64, 64), seed=0, chunks=(1, 64, 64))
        self.image, self.truth_cells, self.membranes = s.image, s.cells, s.membranes
        self.model = unet_file(self.base / "model.pt", base=2, depth=2)
        self.prob = self.base / "prob.zarr"
        self.seg = self.base / "seg.zarr"
        tmp = self.root / "setup"
        tmp.mkdir(exist_ok=True)
        for argv in (
            ["predict", str(self.model), str(self.image), str(self.prob), "--no-progress"],
            ["segment", str(self.prob), str(self.seg), "--min-size", "5"],
        ):
            done = invoke(argv, tmp, timeout=120)
            if done.exit_code != 0:
                raise RuntimeError(f"fuzz workspace: {argv[0]} failed: {done.stderr}{done.traceback}")
        from volseg.storage.volumes import open_volume

        self.image_array = open_volume(self.image).array[:]
        self.tiff = self.base / "stack.tif"
        tifffile.imwrite(self.tiff, self.image_array, photometric="minisblack")
        self.config = self.base / "train.toml"
        self.config.write_text(toml_document(self.train_config()))
        self.volumes = {"image": self.image, "prob": self.prob, "seg": self.seg, "labels": self.membranes}
        self.protected = snapshot(self.base)

    def train_config(self) -> dict[str, Any]:
        """A valid config that trains in about half a second (the output path is the case's)."""
        return {
            "image": str(self.image),
            "labels": str(self.membranes),
            "output": "out/model.pt",
            "steps": 1,
            "time_limit": "2s",
            "patch_size": 32,
            "batch_size": 1,
            "base_channels": 2,
            "depth": 2,
            "val_fraction": 0.0,
            "workers": 0,
            "augment": "none",
            "progress": False,
        }

    # ------------------------------------------------------------------ running
    def new_case(self, family: str, how: str = "") -> Case:
        self.discard()
        self._n += 1
        root = self.cases / f"{family}-{self._n:05d}"
        shutil.rmtree(root, ignore_errors=True)
        (root / "in").mkdir(parents=True)
        (root / "out").mkdir()
        self._current = root
        return Case(family, root, how)

    def discard(self) -> None:
        """Remove the folder of a case that never ran (hypothesis abandons some examples mid-draw)."""
        if self._current is not None:
            shutil.rmtree(self._current, ignore_errors=True)
            self._current = None

    def run(self, case: Case, result: FamilyResult) -> list[tuple[str, str]]:
        """Run ``case``, judge it, record it in ``result``; the case folder is kept only when it failed."""
        (case.root / "case.json").write_text(
            json.dumps({"how": case.how, "argv": case.argv}, indent=1) + "\n"
        )
        watched = case.inputs if case.inputs is not None else [case.inp]
        before = snapshot(*watched)
        outcome = invoke(case.argv, case.root, case.timeout)
        after = snapshot(*watched)
        problems = judge(case, outcome, before, after)
        base_now = snapshot(self.base)
        if base_now != self.protected:
            changed = sorted(
                k for k in set(base_now) | set(self.protected) if base_now.get(k) != self.protected.get(k)
            )
            problems.append(
                (f"{case.command}: a shared input was written or deleted", ", ".join(changed[:3]))
            )
        result.cases += 1
        result.note_time(outcome.seconds, case)
        result.exit0 += outcome.exit_code == 0
        result.exit2 += outcome.exit_code == 2
        for kind, detail in problems:
            if kind in result.failures:
                result.failures[kind].count += 1
                continue
            keep = self.keep / case.root.name
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(case.root, keep, symlinks=True, dirs_exist_ok=True)
            tail = outcome.traceback or (
                outcome.stderr[-800:] + ("\n" + outcome.stdout[-300:] if outcome.stdout else "")
            )
            result.failures[kind] = Failure(
                kind,
                1,
                case.family,
                case.how,
                case.shell(),
                outcome.exit_code,
                detail[:300],
                "\n".join(tail.strip().splitlines()[-8:]),
                str(keep),
            )
        if base_now != self.protected:
            self.build()
        shutil.rmtree(case.root, ignore_errors=True)
        return problems

    def copy_volume(self, name: str, case: Case, as_name: str | None = None) -> Path:
        dest = case.inp / (as_name or f"{name}.zarr")
        shutil.copytree(self.volumes[name], dest)
        return dest


def run_family(
    ws: Workspace, family: str, cases: int | None = None, seconds: float | None = None
) -> FamilyResult:
    """Run ``cases`` cases of ``family`` (its default budget if None), stopping early after ``seconds``."""
    n = cases_for(family) if cases is None else cases
    result = FamilyResult(family)
    deadline = time.perf_counter() + seconds if seconds else math.inf
    start = time.perf_counter()
    try:
        GENERATORS[family](ws, n, result, deadline)
    finally:
        ws.discard()
    result.seconds = time.perf_counter() - start
    return result


def _hypothesis(n: int) -> Callable[[Callable], Callable]:
    """Settings of every hypothesis-driven family: ``n`` examples, no shrinking (failures are collected,
    not raised), no database; derandomized (the same cases on every run) unless ``VOLSEG_FUZZ_SEED`` picks
    another sequence."""
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis import seed as seeded

    config = settings(
        max_examples=n,
        deadline=None,
        derandomize=SEED == DEFAULT_SEED,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    return (lambda f: config(f)) if SEED == DEFAULT_SEED else (lambda f: seeded(SEED)(config(f)))


# ============================================================================ a. model files
def _model_payload(ws: Workspace) -> dict[str, Any]:
    import torch

    return torch.load(ws.model, map_location="cpu", weights_only=True)


def _torch_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _rezip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


#: Values a field of a model file's payload is replaced with (no mid-sized numbers: a config of
#: base_channels=4096 would allocate gigabytes, which is a valid model, not a bad one).
ODD_VALUES: list[Any] = [
    None,
    -1,
    0,
    1,
    3,
    2**31,
    10**30,
    1.5,
    float("nan"),
    float("inf"),
    "4",
    "",
    "batch",
    True,
    [],
    {},
    [1, 2],
    {"a": 1},
    "volseg-model",
    999,
]


def _evil_pickle(marker: Path) -> bytes:
    return b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


def _mutate_payload(rng: np.random.Generator, payload: dict[str, Any]) -> tuple[Any, str, bool | None]:
    import torch

    p = copy.deepcopy(payload)
    choice = int(rng.integers(9))
    if choice == 0:
        key = str(rng.choice(sorted(p)))
        del p[key]
        return p, f"payload without {key!r}", None if key in ("provenance", "metrics", "extra") else None
    if choice == 1:
        key = str(rng.choice(sorted(p)))
        value = ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]
        p[key] = value
        return p, f"payload[{key!r}] = {value!r}", None
    if choice == 2:
        key = str(rng.choice(sorted(p["config"])))
        value = ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]
        p["config"][key] = value
        return p, f"payload['config'][{key!r}] = {value!r}", None
    if choice == 3:
        key = str(rng.choice(["mode", "mean", "std", "extra"]))
        value = ODD_VALUES[int(rng.integers(len(ODD_VALUES)))] if rng.random() < 0.7 else 0.0
        p["normalization"][key] = value
        return p, f"payload['normalization'][{key!r}] = {value!r}", None
    names = sorted(p["state_dict"])
    name = names[int(rng.integers(len(names)))]
    t = p["state_dict"][name]
    if choice == 4:
        new = torch.zeros(tuple(s + 1 for s in t.shape) or (2,), dtype=t.dtype)
        how = f"state_dict[{name!r}] reshaped {tuple(t.shape)} -> {tuple(new.shape)}"
    elif choice == 5:
        dtype = [torch.float64, torch.float16, torch.int8, torch.complex64, torch.bool, torch.bfloat16][
            int(rng.integers(6))
        ]
        new = t.to(dtype)
        how = f"state_dict[{name!r}] as {dtype}"
    elif choice == 6:
        new = (
            torch.full_like(t, float(rng.choice([np.nan, np.inf, -np.inf, 1e30])))
            if t.is_floating_point()
            else t
        )
        how = f"state_dict[{name!r}] filled with non-finite / huge values"
    elif choice == 7:
        del p["state_dict"][name]
        return p, f"state_dict without {name!r}", None
    else:
        p["state_dict"][name + ".extra"] = torch.zeros(2)
        return p, f"state_dict with an unexpected key {name + '.extra'!r}", None
    p["state_dict"][name] = new
    return p, how, None


def _mutate_zip(rng: np.random.Generator, blob: bytes, marker: Path) -> tuple[bytes, str, bool | None]:
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    names = [n for n, _ in members]
    pick = int(rng.integers(len(members)))
    name = names[pick]
    choice = int(rng.integers(7))
    # the pickle and the tensor data are needed; byteorder, version and serialization_id may be absent
    needed = name.endswith("data.pkl") or "/data/" in name
    if choice == 0:
        return _rezip([m for m in members if m[0] != name]), f"zip without member {name}", needed or None
    if choice == 1:
        junk = rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
        same_size = len(junk) == len(members[pick][1])  # random weights of the right size are weights
        members[pick] = (name, junk)
        bad = (needed and not same_size) or None
        return _rezip(members), f"zip member {name} replaced by {len(junk)} random bytes", bad
    if choice == 2:
        data = members[pick][1]
        members[pick] = (name, data[: int(rng.integers(0, max(1, len(data))))])
        return _rezip(members), f"zip member {name} truncated", None
    if choice == 3:
        pkl = next(n for n in names if n.endswith("data.pkl"))
        obj = [
            [1, 2],
            "text",
            3.5,
            {"format": "volseg-model"},
            {"format": "volseg-model", "format_version": 1},
        ][int(rng.integers(5))]
        members[names.index(pkl)] = (pkl, pickle.dumps(obj, protocol=2))
        return _rezip(members), f"data.pkl replaced by a pickle of {obj!r}", True
    if choice == 4:
        pkl = next(n for n in names if n.endswith("data.pkl"))
        members[names.index(pkl)] = (pkl, _evil_pickle(marker))
        return _rezip(members), "data.pkl replaced by a pickle that calls os.system", True
    if choice == 5:
        members.append((names[0].split("/")[0] + "/extra.bin", b"\x00" * 10))
        return _rezip(members), "zip with an extra member", None
    prefix = names[0].split("/")[0]
    renamed = [("other/" + n[len(prefix) + 1 :] if n.startswith(prefix + "/") else n, d) for n, d in members]
    return _rezip(renamed), "zip members moved under another archive name", None


def gen_model(ws: Workspace, n: int, result: FamilyResult, deadline: float) -> None:
    """Family a: random bytes, byte-level mutations, zip-member splices and payload edits of a real model."""
    rng = np.random.default_rng([SEED, 1])
    blob = ws.model.read_bytes()
    payload = _model_payload(ws)
    for i in range(n):
        if time.perf_counter() > deadline:
            break
        case = ws.new_case("model")
        marker = case.root / "PWNED"
        case.marker = marker
        kind = i % 10
        bad: bool | None = None
        if kind == 0:
            size = int(rng.choice([0, 1, 7, 100, 4096]))
            data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            how, bad = f"{size} random bytes", True
        elif kind == 1:
            head = [b"PK\x03\x04", b"PK\x05\x06" + b"\x00" * 18, b"\x80\x02", b"\x80\x04\x95", b"\x93NUMPY"][
                int(rng.integers(5))
            ]
            data = head + rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
            how, bad = f"random bytes after the magic {head[:6]!r}", True
        elif kind == 2:
            data = bytearray(blob)
            offsets = rng.integers(0, len(data), int(rng.integers(1, 17)))
            for o in offsets:
                data[o] ^= 1 << int(rng.integers(8))
            data = bytes(data)
            how = f"real model with bits flipped at {sorted(int(o) for o in offsets)[:6]}..."
        elif kind == 3:
            cut = int(rng.integers(1, len(blob)))
            data, how, bad = blob[:cut], f"real model truncated to {cut} of {len(blob)} bytes", True
        elif kind == 4:
            at = int(rng.integers(0, len(blob)))
            extra = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
            data, how = blob[:at] + extra + blob[at:], f"real model with {len(extra)} bytes inserted at {at}"
        elif kind == 5:
            at = int(rng.integers(0, 200))
            data = bytearray(blob)
            data[at : at + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
            data, how = bytes(data), f"real model with 8 header bytes at {at} overwritten"
        elif kind in (6, 7):
            data, how, bad = _mutate_zip(rng, blob, marker)
        else:
            obj, how, bad = _mutate_payload(rng, payload)
            data = _torch_bytes(obj)
        case.how = "MODEL: " + how
        case.bad = bad
        model = case.inp / "model.pt"
        model.write_bytes(data)
        case.argv = ["predict", str(model), str(ws.image), str(case.out / "p.zarr"), "--no-progress"]
        if rng.random() < 0.2:
            case.argv += ["--threshold", "0.5"]
        ws.run(case, result)


# ============================================================================ b. training configs
def toml_value(v: Any) -> str:
    """``v`` as a TOML value (inline tables and arrays included; NaN and inf as TOML writes them)."""
    import datetime

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_document(d: dict[str, Any], table: str | None = None) -> str:
    lines = [f"[{table}]"] if table else []
    lines += [
        f"{json.dumps(k) if not re.fullmatch(r'[A-Za-z0-9_-]+', k) else k} = {toml_value(v)}"
        for k, v in d.items()
    ]
    return "\n".join(lines) + "\n"


NASTY_STRINGS = [
    "",
    " ",
    "-1",
    "0",
    "1",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "1e-309",
    "3,",
    ",,",
    ",",
    "1,2",
    "1,2,3,4",
    "a:b",
    "1:2:0",
    "5:1",
    "0:0",
    "::",
    ":",
    "99999999999999999999",
    "2147483648",
    "-2147483649",
    "1.5",
    "0x10",
    " 1 ",
    "1_000",
    "+1",
    "-0",
    "\u0661\u0662",
    "\u221e",
    "\u00e9",
    "true",
    "None",
    "null",
    "[]",
    "1e3",
    "9" * 5000,
    "1," * 2000,
    "a" * 300,
    "1;2",
    "0.5",
    "1/2",
    "%s%n",
    "../../x",
    "~",
    "$HOME",
    "\udcff",
    "\t",
    "1\n2",
    "cuda:99",
    "auto",
    "cpu",
    "tcp://127.0.0.1:1",
    "s3://bucket/x.zarr",
]


def _config_strategies() -> Any:
    import datetime

    from hypothesis import strategies as st

    from volseg.stages.train import TrainConfig

    keys = [f.name for f in dataclasses.fields(TrainConfig)]
    small_ints = st.sampled_from(
        [-(2**70), -(2**63), -2, -1, 0, 1, 2, 3, 7, 16, 31, 32, 33, 2**31, 2**63, 2**70]
    )
    scalar = st.one_of(
        small_ints,
        st.floats(allow_nan=True, allow_infinity=True, width=64).filter(
            lambda f: f == 0 or abs(f) < 1e3 or abs(f) > 1e6
        ),
        st.booleans(),
        st.sampled_from(NASTY_STRINGS),
        st.text(max_size=12),
        st.just(datetime.datetime(1979, 5, 27, 7, 32)),
        st.just(datetime.date(2024, 1, 1)),
    )
    value = st.one_of(
        scalar, st.lists(scalar, max_size=4), st.dictionaries(st.sampled_from(keys), scalar, max_size=2)
    )
    return keys, value


PATH_KEYS = ("image", "labels", "output")
#: ``workers`` starts that many processes: small and odd values only (see BOUNDED).
SAFE_WORKERS: list[Any] = [-2, -1, 0, 1, 2, 1.5, "1", True, [], float("nan")]
#: Outputs a config may name (relative to the case folder, the working directory), odd ones included.
SAFE_OUTPUTS: list[Any] = [
    "",
    ".",
    "out",
    "out/",
    "out/m",
    "in",
    "out/m.txt",
    "out/\u00e9.pt",
    5,
    True,
    ["out/m.pt"],
]


def gen_config(ws: Workspace, n: int, result: FamilyResult, deadline: float) -> None:
    """Family b: mutated TOML configs for ``volseg train --config FILE`` (hypothesis, derandomized)."""
    from hypothesis import given
    from hypothesis import strategies as st

    keys, value = _config_strategies()
    base = ws.train_config()
    # the run-length keys are never both made long: a valid case ends within the time limit
    paired = {"steps": "time_limit", "time_limit": "steps"}

    @_hypothesis(n)
    @given(st.data())
    def body(data: Any) -> None:
        if time.perf_counter() > deadline:
            return
        case = ws.new_case("config")
        # the paths come last and text mutations stay before them: a cut path could point anywhere
        cfg = {k: v for k, v in base.items() if k not in PATH_KEYS}
        paths = {"image": base["image"], "labels": base["labels"], "output": str(case.out / "model.pt")}
        kind = data.draw(
            st.sampled_from(["set", "set", "set", "set2", "delete", "unknown", "table", "text", "bytes"])
        )
        hows = []
        table = None
        if kind in ("set", "set2"):
            for _ in range(1 if kind == "set" else 2):
                key = data.draw(
                    st.sampled_from([k for k in keys if paired.get(k) not in [h.split(" ")[0] for h in hows]])
                )
                if key == "output":  # only places inside the case folder (the working directory)
                    paths[key] = data.draw(st.sampled_from(SAFE_OUTPUTS))
                    hows.append(f"{key} = {toml_value(paths[key])}")
                    continue
                target = paths if key in PATH_KEYS else cfg
                target[key] = data.draw(st.sampled_from(SAFE_WORKERS) if key == "workers" else value)
                hows.append(f"{key} = {toml_value(target[key])[:80]}")
        elif kind == "delete":
            key = data.draw(st.sampled_from(sorted({**cfg, **paths})))
            (paths if key in PATH_KEYS else cfg).pop(key)
            hows.append(f"without {key}")
        elif kind == "unknown":
            key = data.draw(
                st.sampled_from(["stepz", "Steps", "patch size", "train.steps", "", "é", "output_dir"])
            )
            cfg[key] = data.draw(value)
            hows.append(f"unknown key {key!r}")
        elif kind == "table":
            table = data.draw(st.sampled_from(["train", "training", "train.sub"]))
            hows.append(f"under [{table}]")
        if kind in ("text", "bytes"):
            raw = toml_document(cfg).encode()
            cut = data.draw(st.integers(0, len(raw) - 1))
            insert = data.draw(
                st.sampled_from(
                    [
                        b"",
                        b"=",
                        b"[",
                        b'"',
                        b"\x00",
                        b"\xff\xfe",
                        b"\n[train]\n",
                        b"steps = 1\n",
                        "\ufeff".encode(),
                    ]
                )
                if kind == "text"
                else st.binary(max_size=40)
            )
            drop = data.draw(st.integers(0, 8))
            blob = raw[:cut] + insert + raw[min(len(raw) - 1, cut + drop) :] + toml_document(paths).encode()
            hows.append(f"text cut at {cut} with {insert[:20]!r} inserted")
        else:
            blob = toml_document({**cfg, **paths}, table).encode()
        case.how = "CONFIG: " + "; ".join(hows)
        path = case.inp / "config.toml"
        path.write_bytes(blob)
        case.argv = ["train", "--config", str(path)]
        ws.run(case, result)

    body()


# ============================================================================ c. TIFF files
def _tiff_bases(ws: Workspace, rng: np.random.Generator) -> list[tuple[str, Callable[[Path], None]]]:
    import tifffile

    img = ws.image_array

    def writer(**kw: Any) -> Callable[[Path], None]:
        data = kw.pop("data", img)
        kw.setdefault("photometric", "minisblack")
        return lambda p: tifffile.imwrite(p, data, **kw)

    return [
        ("multi-page uint8", writer()),
        (
            "ImageJ uint8",
            writer(imagej=True, resolution=(0.25, 0.25), metadata={"spacing": 0.05, "unit": "um"}),
        ),
        ("OME uint16", writer(data=img.astype(np.uint16) * 7, ome=True)),
        ("BigTIFF", writer(bigtiff=True)),
        ("zlib tiled", writer(compression="zlib", tile=(32, 32))),
        ("2-D float32", writer(data=img[0].astype(np.float32) / 255)),
    ]


def _odd_tiff(rng: np.random.Generator, img: np.ndarray) -> tuple[str, np.ndarray, dict]:
    choice = int(rng.integers(13))
    odd = [
        ("complex64", img.astype(np.complex64), {}),
        ("bool", img > 128, {}),
        ("float16", img.astype(np.float16), {}),
        ("int64", img.astype(np.int64) - 128, {}),
        (
            "float64 with NaN and inf",
            np.where(img > 200, np.nan, np.where(img < 20, np.inf, img)).astype(np.float64),
            {},
        ),
        ("1-D", img[0, 0], {}),
        ("4-D ImageJ TZYX", np.stack([img, img]), {"imagej": True}),
        ("5-D", img[None, None], {}),
        ("RGB", np.stack([img] * 3, axis=-1), {"photometric": "rgb"}),
        ("planar RGB", img, {"photometric": "rgb", "planarconfig": "separate"}),
        ("one pixel", img[:1, :1, :1], {}),
        ("int8", (img.astype(np.int16) - 128).astype(np.int8), {}),
        ("2 x 1 x 70000 strip", np.zeros((2, 1, 70000), np.uint8), {}),
    ]
    return odd[choice]


def _patch_ifd(rng: np.random.Generator, blob: bytes) -> tuple[bytes, str]:
    """Change one entry of the first IFD of a classic little-endian TIFF (tag, type, count or value)."""
    data = bytearray(blob)
    if data[:4] != b"II*\x00":
        return blob, "not patched"
    ifd = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, ifd)[0]
    entry = ifd + 2 + 12 * int(rng.integers(count))
    tag = struct.unpack_from("<H", data, entry)[0]
    field = int(rng.integers(4))
    if field == 0:
        value = int(rng.choice([0, 1, 2**16 - 1, 2**31, 2**32 - 1, 65537]))
        struct.pack_into("<I", data, entry + 8, value)
        return bytes(data), f"IFD tag {tag} value -> {value}"
    if field == 1:
        value = int(rng.choice([0, 13, 99, 2**15]))
        struct.pack_into("<H", data, entry + 2, value)
        return bytes(data), f"IFD tag {tag} type -> {value}"
    if field == 2:
        value = int(rng.choice([0, 2, 2**20, 2**32 - 1]))
        struct.pack_into("<I", data, entry + 4, value)
        return bytes(data), f"IFD tag {tag} count -> {value}"
    value = int(rng.choice([254, 256, 257, 258, 259, 273, 277, 278, 279, 322, 339, 65535]))
    struct.pack_into("<H", data, entry, value)
    return bytes(data), f"IFD tag {tag} renumbered -> {value}"


def gen_tiff(ws: Workspace, n: int, result: FamilyResult, deadline: float) -> None:
    """Family c: truncated, bit-flipped, header-patched, random and odd-dtype TIFFs for ``volseg convert``."""
    import tifffile

    rng = np.random.default_rng([SEED, 3])
    bases = _tiff_bases(ws, rng)
    blobs = []
    for name, write in bases:
        path = ws.root / "tiff-base.tif"
        write(path)
        blobs.append((name, path.read_bytes()))
    for i in range(n):
        if time.perf_counter() > deadline:
            break
        case = ws.new_case("tiff")
        name, blob = blobs[int(rng.integers(len(blobs)))]
        kind = i % 9
        bad: bool | None = None
        suffix = ".tif"
        if kind == 0:
            cut = int(rng.integers(0, len(blob)))
            data, how, bad = blob[:cut], f"{name} TIFF truncated to {cut} of {len(blob)} bytes", cut < 8
        elif kind == 1:
            data = bytearray(blob)
            for o in rng.integers(0, min(16, len(data)), int(rng.integers(1, 4))):
                data[o] ^= 1 << int(rng.integers(8))
            data, how = bytes(data), f"{name} TIFF with header bits flipped"
        elif kind == 2:
            data = bytearray(blob)
            offsets = rng.integers(0, len(data), int(rng.integers(1, 33)))
            for o in offsets:
                data[o] = int(rng.integers(256))
            data, how = bytes(data), f"{name} TIFF with {len(offsets)} random bytes changed"
        elif kind == 3:
            size = int(rng.choice([0, 1, 4, 8, 100, 5000]))
            head = [b"", b"II*\x00", b"MM\x00*", b"II+\x00\x08\x00\x00\x00"][int(rng.integers(4))]
            data = (head + rng.integers(0, 256, size, dtype=np.uint8).tobytes())[: max(size, 0) or None]
            data = b"" if size == 0 else data
            how, bad = f"{len(data)} random bytes (magic {head!r}) named .tif", True
            suffix = str(rng.choice([".tif", ".tiff", ".png", ".TIF"]))
        elif kind in (4, 5):
            what, array, kw = _odd_tiff(rng, ws.image_array)
            path = case.inp / "odd.tif"
            try:
                tifffile.imwrite(path, array, **{"photometric": "minisblack", **kw})
            except Exception as exc:  # noqa: BLE001  (what tifffile cannot write is not a case)
                path.write_bytes(b"")
                what += f" (tifffile refused: {type(exc).__name__}, empty file instead)"
            data, how = path.read_bytes(), f"{what} TIFF {array.shape}"
        elif kind == 6:
            data, how = _patch_ifd(rng, blobs[0][1] if rng.random() < 0.6 else blob)
            how = f"{name} TIFF, {how}"
        elif kind == 7:
            folder = case.inp / "sections"
            folder.mkdir()
            shapes = [(64, 64), (64, 64), (64, 63) if rng.random() < 0.5 else (64, 64)]
            dtypes = [np.uint8, np.uint8, np.uint16 if rng.random() < 0.5 else np.uint8]
            for z, (shape, dt) in enumerate(zip(shapes, dtypes, strict=True)):
                tifffile.imwrite(folder / f"s{z}.tif", np.zeros(shape, dt))
            if rng.random() < 0.5:
                (folder / "s10.tif").write_bytes(rng.integers(0, 256, 50, dtype=np.uint8).tobytes())
            names = [np.dtype(d).name for d in dtypes]
            case.how = f"TIFF: a folder of sections {shapes} {names} (maybe a junk s10.tif)"
            case.argv = ["convert", str(folder), str(case.out / "v.zarr"), "--no-progress"]
            ws.run(case, result)
            continue
        else:
            cut = int(rng.integers(len(blob) // 2, len(blob)))
            data = blob[:cut] + b"\x00" * (len(blob) - cut)
            how = f"{name} TIFF with its last {len(blob) - cut} bytes zeroed"
        case.how, case.bad = "TIFF: " + how, bad
        src = case.inp / f"src{suffix}"
        src.write_bytes(data)
        case.argv = ["convert", str(src), str(case.out / "v.zarr"), "--no-progress"]
        ws.run(case, result)


# ============================================================================ d. zarr.json metadata
def json_paths(doc: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path into a JSON document (keys and list indices), the root included."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from json_paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from json_paths(v, (*prefix, i))


def _set(doc: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


#: Targeted values for the fields a reader depends on (array metadata and OME / volseg attributes).
TARGETED: dict[str, list[Any]] = {
    "shape": [
        [0, 64, 64],
        [3, 64],
        [3, 64, 64, 1],
        [-1, 64, 64],
        [2**63, 64, 64],
        [1e20, 64, 64],
        ["3", 64, 64],
        [3, 0, 64],
        [30, 640, 640],
        [],
        None,
        3,
    ],
    "chunk_shape": [
        [0, 64, 64],
        [1, 1],
        [100, 100, 100],
        [1.5, 64, 64],
        [-1, 64, 64],
        [2**40, 64, 64],
        None,
        [1, 64, 64, 1],
    ],
    "data_type": [
        "complex128",
        "bool",
        "string",
        "float16",
        "int64",
        "uint16",
        "foo",
        5,
        None,
        "float64",
        "r8",
    ],
    "fill_value": ["NaN", "abc", [1, 2], 1e400 if False else 1e300, -1, 256, None, True],
    "codecs": [
        [],
        [{"name": "nonexistent"}],
        [{"name": "bytes", "configuration": {"endian": "big"}}],
        None,
        [{"name": "blosc", "configuration": {"cname": "nope", "clevel": 99}}],
    ],
    "dimension_names": [["z", "y"], ["x", "y", "z"], None, [1, 2, 3], ["t", "y", "x"]],
    "zarr_format": [2, "3", 4, None],
    "node_type": ["array", "group", "other", None],
    "scale": [[0, 4, 4], [-1, 4, 4], [float("nan"), 4, 4], [4, 4], ["50", 4, 4], [1e308, 1e308, 1e308], None],
    "path": ["1", "", "../0", "0/0", None],
    "status": ["complete", "incomplete", "running", 5, None],
    "kind": ["image", "label", "probability", "mask", "nonsense", None, 3],
    "axes": [[], [{"name": "z"}], None, [{"name": "x", "type": "space"}] * 3],
    "datasets": [[], None, [{"path": "1"}], [{"path": "0"}, {"path": "1"}]],
    "multiscales": [[], None, {}, [{}]],
    "version": ["0.4", "9.9", None, 5],
}


def _json_values() -> Any:
    from hypothesis import strategies as st

    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**64), 2**64),
        st.sampled_from([0, -1, 1, 3, 64]),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(NASTY_STRINGS[:40]),
        st.text(max_size=8),
    )
    return st.recursive(
        leaf,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
        max_leaves=6,
    )


def _zarr_command(ws: Workspace, case: Case, which: str, vol: Path, data: Any) -> list[str]:
    from hypothesis import strategies as st

    out = case.out
    options = {
        "image": [
            ["info", str(vol)],
            ["predict", str(ws.model), str(vol), str(out / "p.zarr"), "--no-progress"],
            ["preview", str(vol), "-o", str(out / "p.png")],
            ["preview", str(ws.image), "--overlay", str(vol), "-o", str(out / "p.png")],
        ],
        "prob": [
            ["info", str(vol), "--json"],
            ["segment", str(vol), str(out / "c.zarr")],
            ["evaluate", str(vol), str(ws.membranes), "--json", str(out / "r.json")],
            ["preview", str(vol), "-o", str(out / "p.png")],
        ],
        "seg": [
            ["evaluate", str(vol), str(ws.truth_cells), "--json", str(out / "r.json")],
            ["preview", str(ws.image), "--overlay", str(vol), "-o", str(out / "p.png")],
            ["info", str(vol)],
        ],
        "labels": [
            ["evaluate", str(ws.prob), str(vol), "--json", str(out / "r.json")],
            ["info", str(vol)],
        ],
    }[which]
    return data.draw(st.sampled_from(options))


def gen_zarr(ws: Workspace, n: int, result: FamilyResult, deadline: float) -> None:
    """Family d: JSON-level (and byte-level) mutations of a real volume's group and array ``zarr.json``."""
    from hypothesis import given
    from hypothesis import strategies as st

    values = _json_values()

    @_hypothesis(n)
    @given(st.data())
    def body(data: Any) -> None:
        if time.perf_counter() > deadline:
            return
        case = ws.new_case("zarr")
        which = data.draw(st.sampled_from(sorted(ws.volumes)))
        vol = ws.copy_volume(which, case)
        target = data.draw(st.sampled_from(["zarr.json", "0/zarr.json"]))
        meta_path = vol / target
        doc = json.loads(meta_path.read_text())
        kind = data.draw(
            st.sampled_from(["targeted", "targeted", "targeted", "replace", "delete", "type", "bytes"])
        )
        paths = list(json_paths(doc))
        if kind == "targeted":
            hits = [p for p in paths if p and isinstance(p[-1], str) and p[-1] in TARGETED]
            path = data.draw(st.sampled_from(hits)) if hits else ()
            value = data.draw(st.sampled_from(TARGETED[path[-1]])) if path else {}
            doc = _set(doc, path, copy.deepcopy(value))
            how = f"{'/'.join(map(str, path))} = {json.dumps(value)[:80]}"
        elif kind == "replace":
            path = data.draw(st.sampled_from(paths))
            value = data.draw(values)
            doc = _set(doc, path, value)
            how = f"{'/'.join(map(str, path)) or '<root>'} = {json.dumps(value)[:80]}"
        elif kind == "delete":
            path = data.draw(st.sampled_from([p for p in paths if p]))
            doc = _set(doc, path, None, delete=True)
            how = f"without {'/'.join(map(str, path))}"
        elif kind == "type":
            path = data.draw(st.sampled_from([p for p in paths if p]))
            old = copy.deepcopy(_get(doc, path))
            new = {"str": json.dumps(old), "list": [old], "dict": {"value": old}, "null": None}[
                data.draw(st.sampled_from(["str", "list", "dict", "null"]))
            ]
            doc = _set(doc, path, new)
            how = f"{'/'.join(map(str, path))}: {type(old).__name__} -> {type(new).__name__}"
        if kind == "bytes":
            raw = json.dumps(doc, indent=2).encode()
            choice = data.draw(
                st.sampled_from(["truncate", "garbage", "empty", "nested", "nonutf8", "null", "folder"])
            )
            blob = {
                "truncate": raw[: data.draw(st.integers(0, len(raw) - 1))],
                "garbage": raw[:20] + b"\x00\xff{{{" + raw[20:],
                "empty": b"",
                "nested": b"[" * 100000 + b"]" * 100000,
                "nonutf8": raw.replace(b'"', b"\xff", 1),
                "null": b"null",
                "folder": b"",
            }[choice]
            how = f"{choice} bytes"
            if choice == "folder":
                meta_path.unlink()
                meta_path.mkdir()
            else:
                meta_path.write_bytes(blob)
        else:
            meta_path.write_text(json.dumps(doc, indent=2, allow_nan=True))
        case.how = f"ZARR: {which} {target}: {how}"
        case.argv = _zarr_command(ws, case, which, vol, data)
        ws.run(case, result)

    body()


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


# ============================================================================ e. option strings
#: Options of a valid train command that is as small as a run can be (1 step of a 2-level, 2-channel U-Net).
TINY_TRAIN = [
    *("--steps", "1", "--patch-size", "32", "--batch-size", "1", "--base-channels", "2", "--depth", "2"),
    *("--val-fraction", "0", "--workers", "0", "--no-progress"),
]
#: And at most 2 s of it, without augmentation.
FAST_TRAIN = ["--time-limit", "2s", "--augment", "none"]


def base_commands(ws: Workspace, case: Case) -> dict[str, list[str]]:
    """A valid, fast command line for every command (the fuzzer replaces or adds one option)."""
    o = case.out
    return {
        "info": ["info", str(ws.image)],
        "doctor": ["doctor", "--seconds", "0.1", "--device", "cpu"],
        "synth": ["synth", str(o / "s"), "--shape", "2,32,32", "--no-progress"],
        "convert": ["convert", str(ws.tiff), str(o / "v.zarr"), "--no-progress"],
        "train": _tiny_train(ws, case),
        "predict": ["predict", str(ws.model), str(ws.image), str(o / "p.zarr"), "--no-progress"],
        "segment": ["segment", str(ws.prob), str(o / "c.zarr")],
        "evaluate": ["evaluate", str(ws.prob), str(ws.membranes), "--json", str(o / "r.json")],
        "preview": ["preview", str(ws.image), "-o", str(o / "p.png")],
        "demo": ["demo", "--out", str(o / "d"), "--quick", "--steps", "1", "--minutes", "0.05"],
    }


#: Options whose large values start that many processes or run that long by design: fuzzed with small
#: values only (a bound on them is a design question, not a parsing one).
BOUNDED = {
    # train --workers 99999999999999999999 is accepted and forks DataLoader workers until the OOM killer
    # steps in (docs/reliability.md): never generated, so that a run of the fuzz cannot take the machine down
    ("train", "--workers"): ["-2", "-1", "0", "1", "2", "", "abc", "1.5", "nan"],
    ("predict", "--workers"): ["-1", "0", "1", "2", "", "abc", "1.5", "nan"],
    ("demo", "--minutes"): ["-1", "0", "nan", "inf", "", "abc", "1e309", "0.01", "-0", "1e-309"],
    ("train", "--time-limit"): [
        "-1",
        "0",
        "nan",
        "inf",
        "",
        "abc",
        "1e309",
        "2s",
        "1h",
        "0s",
        "1m-1s",
        "1e-309",
    ],
    ("train", "--steps"): ["-1", "0", "1", "2", "", "abc", "1.5", "nan", "99999999999999999999"],
    ("demo", "--steps"): ["-1", "0", "1", "", "abc", "1.5", "99999999999999999999"],
    ("predict", "--scheduler"): [
        "",
        "threads",
        "synchronous",
        "mpi",
        "tcp://",
        "tcp://127.0.0.1:1",
        "THREADS",
        "a:b",
    ],
    ("segment", "--scheduler"): ["", "threads", "synchronous", "mpi", "tcp://127.0.0.1:1", "THREADS", "a:b"],
}
#: Values that name real things in the case folder, for options that take paths.
PATH_VALUES = [
    "",
    ".",
    "..",
    "missing.zarr",
    "missing/deeper/x.zarr",
    "in",
    "out/new",
    "a" * 300,
    "x\ny",
    "\udcff.zarr",
]


def fuzzable_options() -> dict[str, list[Any]]:
    """Every option that takes a value, per command, found by introspecting the click app."""
    import typer.main

    from volseg.app.cli import app

    group = typer.main.get_command(app)
    found: dict[str, list[Any]] = {}
    for name, cmd in sorted(group.commands.items()):
        params = [
            p
            for p in cmd.params
            if getattr(p, "param_type_name", "") == "option"
            and not getattr(p, "is_flag", False)
            and not getattr(p, "count", False)
            and p.name not in ("help",)
        ]
        found[name] = params
    return found


def param_kind(param: Any) -> tuple[str, list[str]]:
    """``("path" | "int" | "float" | "bool" | "choice" | "text", choices)`` of a typer / click option."""
    import enum
    import typing

    descriptor = getattr(param, "type_descriptor", None)  # typer >= 0.24 (its own click)
    annotation = getattr(descriptor, "annotation", None)
    if annotation is not None:
        args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
        t = args[0]
        if isinstance(t, type) and issubclass(t, enum.Enum):
            return "choice", [str(m.value) for m in t]
        if isinstance(t, type) and issubclass(t, os.PathLike):
            return "path", []
        names = {int: "int", float: "float", bool: "bool", str: "text"}
        return names.get(t, "text"), []
    ptype = getattr(param, "type", None)  # plain click
    name = getattr(ptype, "name", "text")
    if name == "choice":
        return "choice", [str(c) for c in ptype.choices]
    return {"integer": "int", "float": "float", "boolean": "bool", "path": "path"}.get(name, "text"), []


def _value_strategy(command: str, param: Any) -> Any:
    from hypothesis import strategies as st

    flag = max(param.opts, key=len)
    if (command, flag) in BOUNDED:
        return st.sampled_from(BOUNDED[(command, flag)])
    kind, choices = param_kind(param)
    if kind == "path":
        return st.sampled_from(PATH_VALUES)
    parts = st.sampled_from(
        [
            "1",
            "2",
            "3",
            "8",
            "16",
            "32",
            "64",
            "0",
            "-1",
            "nan",
            "",
            "a",
            "1.5",
            "2**3",
            "1e309",
            "99999999999999999999",
            "inf",
            " 4 ",
            "\u0663",
        ]
    )
    listy = st.lists(parts, min_size=1, max_size=5).map(",".join)
    ranges = st.tuples(parts, parts).map(":".join) | st.tuples(parts, parts, parts).map(":".join)
    rois = st.lists(
        st.sampled_from(["0:1", ":", "1:", ":2", "0:0", "5:1", "-1:", "0:99", "a:b", "::2", ""]),
        min_size=1,
        max_size=4,
    ).map(",".join)
    strategies = [
        st.sampled_from(NASTY_STRINGS),
        st.sampled_from(NASTY_STRINGS),
        listy,
        ranges,
        st.text(max_size=10),
        st.from_regex(r"-?[0-9]{0,3}(\.[0-9]{0,2})?(e-?[0-9]{1,3})?", fullmatch=True),
    ]
    if flag in ("--roi", "--sections", "--val-slices"):
        strategies += [rois, rois]
    if flag in ("--codec",):
        strategies += [
            st.tuples(
                st.sampled_from(["zstd", "gzip", "blosc-zstd", "blosc-lz4", "none", "lz4", ""]),
                st.sampled_from(["", ":", ":0", ":-1", ":1", ":9", ":22", ":99", ":a", ":1:2"]),
            ).map("".join)
        ] * 3
    if flag in ("--augment-prob",):
        strategies += [
            st.lists(
                st.tuples(
                    st.sampled_from(["elastic", "noise", "flip", "x", ""]),
                    st.sampled_from(["=0", "=1", "=0.5", "=-1", "=2", "=nan", "", "=", "==1"]),
                ).map("".join),
                min_size=1,
                max_size=3,
            ).map(",".join)
        ] * 2
    if flag in ("--memory-limit",):
        strategies += [
            st.sampled_from(["1", "1B", "1KiB", "4GiB", "0GiB", "-1GiB", "1e99", "1 PB", "nanGB", "1.5MB"])
        ] * 2
    if flag in ("--device",):
        strategies += [
            st.sampled_from(["cuda", "cuda:0", "cuda:-1", "mps", "cpu:0", "tpu", "cuda:a", "CPU", "meta"])
        ] * 2
    if flag in ("--data",):
        strategies += [st.sampled_from(["a.tif,b.tif", ",", "a.tif", "a,b,c", "in,in"])]
    if choices:
        strategies += [
            st.sampled_from([str(c) for c in choices]),
            st.sampled_from([str(c).upper() for c in choices]),
        ]
    return st.one_of(*strategies)


def _replace(argv: list[str], flag: str, names: tuple[str, ...], value: str) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i] in names:
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return [*out, flag, value]


def gen_options(ws: Workspace, n: int, result: FamilyResult, deadline: float) -> None:
    """Family e: nasty strings for every option of every command that takes a value (by introspection)."""
    from hypothesis import given
    from hypothesis import strategies as st

    options = fuzzable_options()
    pairs = [(c, p) for c, ps in options.items() for p in ps]

    @_hypothesis(n)
    @given(st.data())
    def body(data: Any) -> None:
        if time.perf_counter() > deadline:
            return
        case = ws.new_case("options")
        command, param = data.draw(st.sampled_from(pairs))
        argv = base_commands(ws, case)[command]
        hows = []
        for _ in range(data.draw(st.sampled_from([1, 1, 1, 2]))):
            if hows:
                param = data.draw(st.sampled_from(options[command]))
            flag = max(param.opts, key=len)
            value = data.draw(_value_strategy(command, param))
            if flag == "--workers" and command == "predict" and "--scheduler" not in argv:
                argv += ["--scheduler", "threads"]  # alone, --workers N starts a cluster of N processes
            argv = _replace(argv, flag, tuple(param.opts), value)
            hows.append(f"{flag} {value!r}"[:120])
        case.how = "OPTIONS: " + " ".join(hows)
        case.argv = argv
        ws.run(case, result)

    body()


# ============================================================================ f. paths
def gen_paths(ws: Workspace, n: int, result: FamilyResult, deadline: float) -> None:
    """Family f: outputs that are (or are inside) one of the command's inputs, with and without --overwrite;
    inputs of the wrong kind; URLs and odd names. The command's own inputs are checked byte for byte."""
    from hypothesis import given
    from hypothesis import strategies as st

    @_hypothesis(n)
    @given(st.data())
    def body(data: Any) -> None:
        if time.perf_counter() > deadline:
            return
        case = ws.new_case("paths")
        f = _path_fixtures(ws, case)
        name, argv, inputs, out_at = data.draw(st.sampled_from(_path_templates(case, f)))
        mode = data.draw(
            st.sampled_from(["output is an input", "output is an input", "wrong input", "odd output"])
        )
        if mode == "output is an input":
            victim = data.draw(st.sampled_from(inputs))
            spots = (
                [victim, victim / "zarr.json", victim / "0", victim / "new.zarr"]
                if victim.is_dir()
                else [victim, victim / "x.zarr"]
            )
            target: Any = data.draw(st.sampled_from(spots))
            at, case.bad = out_at, True
        elif mode == "wrong input":
            at = data.draw(st.sampled_from([i for i, a in enumerate(argv) if Path(a) in inputs]))
            wrong = [
                p
                for p in (f["model"], f["image"], f["tif"], f["log"], f["note"], case.out / "missing.zarr")
                if p not in inputs
            ]
            target = data.draw(st.sampled_from([*wrong, "s3://bucket/x.zarr", "http://example.com/x"]))
            case.bad = True
        else:
            at = out_at
            target = data.draw(
                st.sampled_from(
                    [
                        "s3://bucket/x.zarr",
                        "gs://b/x",
                        "file:///tmp/x.zarr",
                        "",
                        ".",
                        "..",
                        "a" * 300,
                        "x\ny.zarr",
                        "-",
                        "~nobody/x",
                        f["note"] / "x.zarr",
                    ]
                )
            )
            case.bad = True if "://" in str(target) or str(target).startswith(str(f["note"])) else None
        argv = list(argv)
        argv[at] = str(target)
        if data.draw(st.booleans()) and name in ("predict", "segment", "convert", "train", "synth"):
            argv.append("--overwrite")
        case.inputs = [p for p in inputs if str(p) != str(target) or mode != "wrong input"]
        case.how = f"PATHS: {name}, {mode}: {argv[at]!r}" + (
            " with --overwrite" if "--overwrite" in argv else ""
        )
        case.argv = argv
        ws.run(case, result)

    body()


def _path_fixtures(ws: Workspace, case: Case) -> dict[str, Path]:
    f = {name: ws.copy_volume(name, case) for name in ("image", "prob", "labels")}
    f["model"] = case.inp / "model.pt"
    shutil.copy(ws.model, f["model"])
    f["tif"] = case.inp / "stack.tif"
    shutil.copy(ws.tiff, f["tif"])
    f["log"] = case.inp / "train.log.jsonl"
    f["log"].write_text('{"step": 1, "loss": 0.5}\n')
    f["note"] = case.inp / "notes.txt"
    f["note"].write_text("x")
    return f


def _path_templates(case: Case, f: dict[str, Path]) -> list[tuple[str, list[str], list[Path], int]]:
    """(command, argv, its inputs, index of its output in argv)."""
    o = case.out
    return [
        (
            "predict",
            ["predict", str(f["model"]), str(f["image"]), str(o / "p.zarr"), "--no-progress"],
            [f["model"], f["image"]],
            3,
        ),
        (
            "predict",
            [
                "predict",
                str(f["model"]),
                str(f["image"]),
                str(o / "p.zarr"),
                "--threshold",
                "0.5",
                "--no-progress",
            ],
            [f["model"], f["image"]],
            3,
        ),
        ("segment", ["segment", str(f["prob"]), str(o / "c.zarr")], [f["prob"]], 2),
        ("convert", ["convert", str(f["tif"]), str(o / "v.zarr"), "--no-progress"], [f["tif"]], 2),
        (
            "evaluate",
            ["evaluate", str(f["prob"]), str(f["labels"]), "--json", str(o / "r.json")],
            [f["prob"], f["labels"]],
            4,
        ),
        ("preview", ["preview", str(f["image"]), "-o", str(o / "p.png")], [f["image"]], 3),
        (
            "preview",
            ["preview", str(f["image"]), "--overlay", str(f["prob"]), "-o", str(o / "p.png")],
            [f["image"], f["prob"]],
            5,
        ),
        ("preview", ["preview", "--curves", str(f["log"]), "-o", str(o / "p.png")], [f["log"]], 4),
        (
            "train",
            ["train", str(f["image"]), str(f["labels"]), "-o", str(o / "m.pt"), *TINY_TRAIN],
            [f["image"], f["labels"]],
            4,
        ),
    ]


# ============================================================================ g. the corpus
def _tiny_train(ws: Workspace, case: Case, *extra: str, output: str | None = None) -> list[str]:
    """A valid, fast train command (1 step, at most 2 s) of the shared tiny volumes, plus ``extra``."""
    out = output if output is not None else str(case.out / "m.pt")
    return ["train", str(ws.image), str(ws.membranes), "-o", out, *TINY_TRAIN, *FAST_TRAIN, *extra]


def _edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    doc = json.loads(path.read_text())
    new = edit(doc)
    path.write_text(json.dumps(doc if new is None else new))


def _damaged_tiff(case: Case, ws: Workspace, zeroed: int, **kw: Any) -> Path:
    import tifffile

    path = case.inp / "src.tif"
    tifffile.imwrite(path, kw.pop("data", ws.image_array), photometric="minisblack", **kw)
    blob = bytearray(path.read_bytes())
    blob[-zeroed:] = b"\x00" * zeroed
    path.write_bytes(bytes(blob))
    return path


def _meta_case(which: str, target: str, edit: Callable[[Any], Any], command: str = "info") -> Callable:
    """Volume ``which`` with ``target`` (``zarr.json`` or ``0/zarr.json``) edited, fed to ``command``."""

    def build(ws: Workspace, case: Case) -> list[str]:
        vol = ws.copy_volume(which, case)
        _edit_json(vol / target, edit)
        if command == "predict":
            return ["predict", str(ws.model), str(vol), str(case.out / "p.zarr"), "--no-progress"]
        if command == "segment":
            return ["segment", str(vol), str(case.out / "c.zarr")]
        if command == "overlay":
            return ["preview", str(ws.image), "--overlay", str(vol), "-o", str(case.out / "p.png")]
        if command == "evaluate":
            return ["evaluate", str(vol), str(ws.truth_cells), "--json", str(case.out / "r.json")]
        return [command, str(vol)]

    return build


def _raw_meta(blob: bytes) -> Callable:
    def build(ws: Workspace, case: Case) -> list[str]:
        vol = ws.copy_volume("image", case)
        (vol / "0" / "zarr.json").write_bytes(blob)
        return ["info", str(vol)]

    return build


def _write(name: str, blob: bytes, argv: Callable[[Path], list[str]]) -> Callable:
    def build(ws: Workspace, case: Case) -> list[str]:
        path = case.inp / name
        path.write_bytes(blob)
        return argv(path)

    return build


def _scale(ms: dict, value: Any) -> None:
    ms["datasets"][0]["coordinateTransformations"][0]["scale"] = value


def _ome(edit: Callable[[dict], Any]) -> Callable[[Any], None]:
    return lambda d: edit(d["attributes"]["ome"]["multiscales"][0])


#: Every distinct failure the fuzz has found, as a concrete case (the family a case came from, a name,
#: how it is built, whether it must be refused, a timeout): a corpus run first and always, so that a fixed
#: failure stays fixed and an open one fails by name. Add each new root cause here (docs/reliability.md).
CORPUS: list[tuple[str, Callable[[Workspace, Case], list[str]], bool | None, float]] = [
    (
        "config that is not UTF-8",
        _write("c.toml", b'steps = "\xff"\n', lambda p: ["train", "--config", str(p)]),
        True,
        CASE_TIMEOUT_S,
    ),
    ("train --lr 1e200", lambda ws, c: _tiny_train(ws, c, "--lr", "1e200"), True, CASE_TIMEOUT_S),
    (
        "train --base-channels 1e20",
        lambda ws, c: _tiny_train(ws, c, "--base-channels", "99999999999999999999"),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "train --batch-size 2**31",
        lambda ws, c: _tiny_train(ws, c, "--batch-size", "2147483648"),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "train --seed 1e20",
        lambda ws, c: _tiny_train(ws, c, "--seed", "99999999999999999999"),
        None,
        CASE_TIMEOUT_S,
    ),
    ("train -o ''", lambda ws, c: _tiny_train(ws, c, output=""), True, CASE_TIMEOUT_S),
    ("train -o .", lambda ws, c: _tiny_train(ws, c, output="."), True, CASE_TIMEOUT_S),
    ("train -o (300 characters)", lambda ws, c: _tiny_train(ws, c, output="a" * 300), True, CASE_TIMEOUT_S),
    (
        "TIFF: ImageJ, last 1015 bytes zeroed",
        lambda ws, c: [
            "convert",
            str(
                _damaged_tiff(
                    c,
                    ws,
                    1015,
                    imagej=True,
                    resolution=(0.25, 0.25),
                    metadata={"spacing": 0.05, "unit": "um"},
                )
            ),
            str(c.out / "v.zarr"),
            "--no-progress",
        ],
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "TIFF: OME uint16, last 1089 bytes zeroed",
        lambda ws, c: [
            "convert",
            str(_damaged_tiff(c, ws, 1089, ome=True, data=ws.image_array.astype(np.uint16) * 7)),
            str(c.out / "v.zarr"),
            "--no-progress",
        ],
        True,
        CASE_TIMEOUT_S,
    ),
    ("zarr.json empty", _raw_meta(b""), True, CASE_TIMEOUT_S),
    ("zarr.json null", _raw_meta(b"null"), True, CASE_TIMEOUT_S),
    ("zarr.json 100000 levels deep", _raw_meta(b"[" * 100000 + b"]" * 100000), True, CASE_TIMEOUT_S),
    (
        "zarr.json not UTF-8",
        _raw_meta(b'{"zarr_format": 3, "node_type": "array", "x": "\xff"}'),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        'zarr_format "3"',
        _meta_case("image", "0/zarr.json", lambda d: d.update(zarr_format="3")),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "unknown codec",
        _meta_case("labels", "0/zarr.json", lambda d: d.update(codecs=[{"name": "nonexistent"}])),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "fill_value 1e300",
        _meta_case("seg", "0/zarr.json", lambda d: d.update(fill_value=1e300)),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "chunk_key_encoding without a name",
        _meta_case("seg", "0/zarr.json", lambda d: d["chunk_key_encoding"].pop("name")),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "chunk shape 0 -> predict",
        _meta_case(
            "image",
            "0/zarr.json",
            lambda d: d["chunk_grid"]["configuration"].update(chunk_shape=[0, 64, 64]),
            "predict",
        ),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "float16 over uint8 chunks -> predict",
        _meta_case("image", "0/zarr.json", lambda d: d.update(data_type="float16"), "predict"),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "float16 over uint8 chunks -> segment",
        _meta_case("prob", "0/zarr.json", lambda d: d.update(data_type="float16"), "segment"),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "OME scale null",
        _meta_case("labels", "zarr.json", _ome(lambda m: _scale(m, None))),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "OME axes null",
        _meta_case("labels", "zarr.json", _ome(lambda m: m.update(axes=None))),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "OME datasets []",
        _meta_case("image", "zarr.json", _ome(lambda m: m.update(datasets=[])), "predict"),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "OME multiscales []",
        _meta_case("seg", "zarr.json", lambda d: d["attributes"]["ome"].update(multiscales=[])),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "shape 2**63 -> info",
        _meta_case("image", "0/zarr.json", lambda d: d.update(shape=[2**63, 64, 64])),
        True,
        5.0,
    ),
    (
        "shape 2**63 -> predict",
        _meta_case("image", "0/zarr.json", lambda d: d.update(shape=[2**63, 64, 64]), "predict"),
        True,
        10.0,
    ),
    (
        "shape grown past the stored chunks -> segment",
        _meta_case("prob", "0/zarr.json", lambda d: d.update(shape=[30, 640, 640]), "segment"),
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "provenance command holding a list -> info",
        _meta_case(
            "prob", "zarr.json", lambda d: d["attributes"]["volseg"]["provenance"]["command"].append(["x"])
        ),
        None,
        CASE_TIMEOUT_S,
    ),
    (
        "provenance source without a path -> info",
        _meta_case(
            "prob", "zarr.json", lambda d: d["attributes"]["volseg"]["provenance"]["sources"][0].pop("path")
        ),
        None,
        CASE_TIMEOUT_S,
    ),
    (
        "volseg.kind a dict -> preview --overlay",
        _meta_case("prob", "zarr.json", lambda d: d["attributes"]["volseg"].update(kind={"a": 1}), "overlay"),
        None,
        CASE_TIMEOUT_S,
    ),
    (
        "volseg.segment.options a string -> evaluate",
        _meta_case(
            "seg",
            "zarr.json",
            lambda d: d["attributes"]["volseg"]["segment"].update(options="0:0"),
            "evaluate",
        ),
        None,
        CASE_TIMEOUT_S,
    ),
    (
        "evaluate --json . (a folder holding no input)",
        lambda ws, c: ["evaluate", str(ws.prob), str(ws.membranes), "--json", "."],
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "predict --scheduler tcp://",
        lambda ws, c: [
            "predict",
            str(ws.model),
            str(ws.image),
            str(c.out / "p.zarr"),
            "--no-progress",
            "--scheduler",
            "tcp://",
        ],
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "demo --steps 0",
        lambda ws, c: ["demo", "--out", str(c.out / "d"), "--quick", "--steps", "0"],
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "segment --sigma 5e78",
        lambda ws, c: ["segment", str(ws.prob), str(c.out / "c.zarr"), "--sigma", "5e78"],
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "segment --min-distance 1e20",
        lambda ws, c: [
            "segment",
            str(ws.prob),
            str(c.out / "c.zarr"),
            "--min-distance",
            "99999999999999999999",
        ],
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "evaluate --json (not UTF-8)",
        lambda ws, c: ["evaluate", str(ws.prob), str(ws.membranes), "--json", str(c.out / "\udcff.json")],
        None,
        CASE_TIMEOUT_S,
    ),
    (
        "predict OUT (300 characters)",
        lambda ws, c: ["predict", str(ws.model), str(ws.image), "a" * 300, "--no-progress"],
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "convert OUT (300 characters)",
        lambda ws, c: ["convert", str(ws.tiff), "a" * 300, "--no-progress"],
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "preview --curves (300 characters)",
        lambda ws, c: ["preview", "--curves", "a" * 300, "-o", str(c.out / "p.png")],
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "evaluate a raw image as PRED",
        lambda ws, c: ["evaluate", str(ws.image), str(ws.membranes)],
        True,
        CASE_TIMEOUT_S,
    ),
    (
        "segment a raw image",
        lambda ws, c: ["segment", str(ws.image), str(c.out / "c.zarr")],
        True,
        CASE_TIMEOUT_S,
    ),
]


def gen_corpus(ws: Workspace, n: int, result: FamilyResult, deadline: float) -> None:
    """Family g: the corpus of every failure found so far (:data:`CORPUS`), all of it whatever ``n``."""
    for name, build, bad, timeout in CORPUS:
        if time.perf_counter() > deadline:
            break
        case = ws.new_case("corpus", f"CORPUS: {name}")
        case.argv, case.bad, case.timeout = build(ws, case), bad, timeout
        ws.run(case, result)


GENERATORS: dict[str, Callable[[Workspace, int, FamilyResult, float], None]] = {
    "model": gen_model,
    "config": gen_config,
    "tiff": gen_tiff,
    "zarr": gen_zarr,
    "options": gen_options,
    "paths": gen_paths,
    "corpus": gen_corpus,
}
