"""benchmarks/gpu.sh's non-GPU parts on the CPU: the gpu tests skip cleanly and the benchmark runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_runs_its_cpu_check(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--cpu-check"], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "gpu-cpu-check.json").read_text())
    assert report["shape"] == [2, 256, 256] and report["predict"]["voxels"] == 2 * 256 * 256
    assert report["end_to_end_mvox_per_s"] > 0 and report["forward_ceiling"]["device"] == "cpu"
    assert report["machine"]["cpu_class"] and report["runtime"]["torch"]
    assert 0 < report["ratio_to_ceiling"] <= 1.5
