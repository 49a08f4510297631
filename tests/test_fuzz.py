"""Fuzz the CLI's error contract: bad input gets one line, exit 2, no traceback, nothing that looks complete.

Six families of seeded inputs (tests/fuzz_support.py), each its own test so that a failure names
its family: mutated model files, training configs, TIFFs, zarr.json metadata, option strings
(every option of every command, found by introspecting the click app) and aliased or odd paths; and
a corpus of every distinct failure found so far. Each test lists every distinct failure (grouped by
root cause) with its first reproduction.

The default budget keeps the whole module under a minute on 2 cores; ``VOLSEG_FUZZ_CASES=N`` or
``VOLSEG_FUZZ_SCALE=K`` runs more of the very same cases (benchmarks/fuzz.py runs a large budget).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from fuzz_support import ERROR_PREFIX, FAMILIES, Workspace, fuzzable_options, invoke, run_family


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("fuzz"))


def _check(ws: Workspace, family: str) -> None:
    result = run_family(ws, family)
    print(result.summary())
    assert result.cases > 0
    assert not result.failures, result.summary()


def test_fuzz_model_files(ws):
    """Random bytes, bit flips, truncations, zip-member splices, pickled code and payload edits -> predict."""
    _check(ws, "model")


def test_fuzz_train_configs(ws):
    """Mutated TOML (wrong types, unknown keys, huge numbers, broken syntax, binary) -> train --config."""
    _check(ws, "config")


def test_fuzz_tiff_files(ws):
    """Truncated, bit-flipped, IFD-patched, random and odd-dtype / odd-rank TIFFs -> convert."""
    _check(ws, "tiff")


def test_fuzz_zarr_metadata(ws):
    """Group and array zarr.json of real volumes mutated -> info, predict, segment, evaluate, preview."""
    _check(ws, "zarr")


def test_fuzz_option_strings(ws):
    """A nasty string for an option of a command (every option that takes a value) -> exit 0 or 2."""
    _check(ws, "options")


def test_fuzz_paths(ws):
    """Outputs that are, or are inside, an input (with and without --overwrite); URLs; odd names."""
    _check(ws, "paths")


def test_every_option_is_fuzzed():
    """The option family covers every command's value options, found from the app itself."""
    options = fuzzable_options()
    assert {"predict", "train", "convert", "segment", "evaluate", "preview", "synth", "demo"} <= set(options)
    flags = {f for ps in options.values() for p in ps for f in p.opts}
    assert {"--tile", "--halo", "--codec", "--voxel-size", "--sections", "--alpha", "--lr"} <= flags
    assert set(FAMILIES) == {"model", "config", "tiff", "zarr", "options", "paths", "corpus"}


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda ws, case: ["info", str(ws.image), "--json"], id="good-info"),
        pytest.param(
            lambda ws, case: ["predict", str(_junk(case)), str(ws.image), "out/p.zarr"], id="junk-model"
        ),
        pytest.param(
            lambda ws, case: ["segment", str(ws.prob), "out/c.zarr", "--sigma", "nan"], id="bad-option"
        ),
    ],
)
def test_in_process_agrees_with_a_real_process(ws, make):
    """The in-process runner sees what a user sees: same exit code, same first stderr line."""
    case = ws.new_case("smoke")
    argv = make(ws, case)
    inside = invoke(argv, case.root)
    real = subprocess.run(
        [sys.executable, "-m", "volseg", *argv], cwd=case.root, capture_output=True, text=True, timeout=120
    )
    assert (inside.exit_code, inside.traceback is not None) == (real.returncode, "Traceback" in real.stderr)
    first = [ln for ln in real.stderr.splitlines() if ln.strip()][:1]
    assert [ln for ln in inside.stderr.splitlines() if ln.strip()][:1] == first
    if real.returncode == 2:
        assert first[0].startswith(ERROR_PREFIX)


def _junk(case):
    path = case.inp / "junk.bin"
    path.write_bytes(b"\x00\x01not a model or an image" * 3)
    return path


def test_fuzz_corpus(ws):
    """Every distinct failure found so far, as a concrete case: fixed ones stay fixed, open ones fail."""
    _check(ws, "corpus")
