"""benchmarks/segment3d.py without running the benchmark: its affinity worker and its report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from volseg.core.affinities import affinities, boundaries_from_affinities, synth_instances
from volseg.stages.synth import synth
from volseg.storage.volumes import open_volume

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("segment3d_benchmark", ROOT / "benchmarks" / "segment3d.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_affinity_worker_writes_the_truth_its_noisy_affinities_and_their_boundary_map(bench, tmp_path):
    synth(tmp_path / "synth", shape=(3, 64, 64), seed=2)
    bench.affinity_worker({"work": str(tmp_path)})
    cells = np.asarray(open_volume(tmp_path / "synth" / "cells.zarr").array[:])
    membranes = np.asarray(open_volume(tmp_path / "synth" / "membranes.zarr").array[:])
    truth = synth_instances(cells, membranes)
    np.testing.assert_array_equal(np.asarray(open_volume(tmp_path / "truth.zarr").array[:]), truth)
    vol = open_volume(tmp_path / "affs.zarr", channels=True)
    assert vol.kind == "affinity" and vol.channels == 9 and vol.complete
    affs = np.asarray(vol.array[:]).astype(np.float32) / 255
    target, known = affinities(truth, vol.meta["offsets"])
    same, cut = (target == 1) & known, (target == 0) & known
    assert affs[same].mean() > 0.85 and affs[cut].mean() < 0.15  # 0.9 / 0.1 plus noise of sd 0.1
    assert abs(affs[same].std() - 0.1) < 0.03
    prob = np.asarray(open_volume(tmp_path / "prob.zarr").array[:]).astype(np.float32) / 255
    expect = boundaries_from_affinities(affs, vol.meta["offsets"])
    assert np.abs(prob - expect).max() <= 0.5 / 255 + 1e-6


def test_doc_section_reports_every_method_beside_predict(bench):
    row = {"mvox_per_s": 1.0, "cpu_seconds_per_mvox": 2.0, "peak_rss_mb": 100.0, "vs_predict": 2.0}
    scores = {
        "adapted_rand_error": 0.01,
        "voi_split": 0.1,
        "voi_merge": 0.2,
        "cremi_score": 0.05,
        "v_rand": 0.99,
    }
    r = {
        "date": "2026-12-02", "quick": False, "shape": [32, 1024, 1024], "voxels": 32 * 1024 * 1024.0,
        "machine": {"cpu": "CPU", "cores": 2, "cpu_class": "AVX2", "load_average_at_start": [0.1, 0.1, 0.1]},
        "model": {"train": {"steps": 600}},
        "stages": {"predict": {"mvox_per_s": 0.5, "cpu_seconds_per_mvox": 4.0, "peak_rss_mb": 900.0}},
        "methods": {name: {**row, **scores, "input": what} for name, _, _, what in bench.METHODS},
    }  # fmt: skip
    text = bench.doc_section(r)
    assert text.startswith("## segment3d\n") and "CPU class **AVX2**" in text and "**0.500 Mvox/s**" in text
    assert all(f"| {name} |" in text for name, *_ in bench.METHODS)
