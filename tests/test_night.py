"""benchmarks/night.py without running the night: its projection arithmetic, options and report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def night():
    spec = importlib.util.spec_from_file_location("night_benchmark", ROOT / "benchmarks" / "night.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_project_is_linear_in_voxels_and_divides_only_the_scaling_stages(night):
    rates = {"convert": 10.0, "predict": 1.0, "segment": 2.0}
    assert night.project(rates, 1e9) == {"convert": 100.0, "predict": 1000.0, "segment": 500.0}
    assert night.project(rates, 2e9)["predict"] == 2000.0
    assert night.project(rates, 1e9, 10, ("predict", "segment")) == {
        "convert": 100.0,
        "predict": 100.0,
        "segment": 50.0,
    }
    assert night.project(rates, 1e9, 10) == {"convert": 10.0, "predict": 100.0, "segment": 50.0}
    assert night.bound(night.project(rates, 1e9, 10, ("predict", "segment"))) == "convert"
    with pytest.raises(ValueError, match="machines 0"):
        night.project(rates, 1e9, 0)
    with pytest.raises(ValueError, match="stage predict"):
        night.project({"predict": 0.0}, 1e9)


def test_projections_of_the_target_stack(night):
    rates = {"synth": 1.0, "convert": 100.0, "predict": 1.0, "segment": 2.0}
    rates |= {"evaluate-prob": 4.0, "evaluate-cells": 8.0}
    voxels = 1000 * 8192 * 8192
    p = night.projections(rates, None)
    one = p["this_machine"]
    assert p["voxels"] == voxels and "synth" not in one["seconds"]
    assert one["night_seconds"] == pytest.approx(voxels / 1e6 * (1 / 100 + 1 + 1 / 2))
    evaluate = voxels / 1e6 * (1 / 4 + 1 / 8)
    assert one["with_evaluate_seconds"] == pytest.approx(one["night_seconds"] + evaluate)
    assert one["night_bound"] == "predict"
    hundred = p["machines"]["100"]
    assert hundred["seconds"]["convert"] == one["seconds"]["convert"]  # one process: not divided
    assert hundred["seconds"]["predict"] == pytest.approx(one["seconds"]["predict"] / 100)
    assert hundred["night_bound"] == "convert"  # 6.7e8 s / 1e8 vs 6.7e2 s: convert stays whole
    assert hundred["if_every_stage_by_blocks"]["night_seconds"] == pytest.approx(one["night_seconds"] / 100)
    assert p["gpu"] == "not measured"
    gpu = night.projections(rates, 50.0)["gpu"]
    assert gpu["seconds"]["predict"] == pytest.approx(voxels / 50e6)
    assert gpu["night_bound"] == "segment"


def test_gpu_figure_only_from_a_cuda_measurement(night, tmp_path):
    assert night.gpu_figure(tmp_path) == (None, "not measured")
    report = {"date": "2026-12-02", "end_to_end_mvox_per_s": 42.5, "plan": {"device": "cuda:0"}}
    (tmp_path / "gpu.json").write_text(json.dumps(report))
    rate, where = night.gpu_figure(tmp_path)
    assert rate == 42.5 and "cuda:0" in where and "2026-12-02" in where
    report["plan"]["device"] = "cpu"  # gpu.sh --cpu-check writes CPU figures: not a GPU's
    (tmp_path / "gpu.json").write_text(json.dumps(report))
    assert night.gpu_figure(tmp_path) == (None, "not measured")


def test_options(night):
    args = night.parser().parse_args(["--quick"])
    night.check(args)
    assert (args.depth, args.side, args.train_steps) == (12, 1024, 20)
    args = night.parser().parse_args([])
    assert (args.depth, args.side, args.tiff) == (64, 4096, "folder")
    assert args.depth * args.side**2 >= 2**30  # the default night is at least 1 Gvox
    for bad in (["--depth", "4"], ["--side", "100"], ["--train-steps", "0"], ["--model", "/no/such.pt"]):
        with pytest.raises(SystemExit, match=bad[0]):
            night.check(night.parser().parse_args(bad))


def _results(night) -> dict:
    def run(depth: int, scale: float) -> dict:
        stages = {}
        for i, k in enumerate(night.STAGES):
            stages[k] = {"seconds": 10.0 * (i + 1) * scale, "cpu_seconds": 9.0, "peak_rss_mb": 100.0 + i}
            stages[k]["mvox_per_s"] = depth * 1024**2 / stages[k]["seconds"] / 1e6
        stages["predict"]["summary"] = {"tile": 1024, "backend": "torch", "streams": 2}
        stages["predict"]["summary"] |= {"chosen_by": "default", "mvox_per_s": 0.5}
        stages["evaluate-prob"]["scores"] = {"pixel_error": 0.05, "v_rand": 0.9}
        stages["evaluate-cells"]["scores"] = {"adapted_rand_error": 0.1}
        total = sum(s["seconds"] for s in stages.values())
        for s in stages.values():
            s["share"] = s["seconds"] / total
        shape = [depth, 1024, 1024]
        return {"shape": shape, "voxels": depth * 1024**2, "total_seconds": total, "stages": stages}

    kill = {"blocks_total": 4, "blocks_done_at_kill": 2, "killed": True, "exit_status": -9}
    kill |= {"rerun_seconds": 3.0, "equal": {"equal": True}}
    machine = {"cpu": "test CPU", "cpu_class": "AVX2", "cores": 2, "python": "3.11"}
    machine["load_average_at_start"] = [0.5, 0.5, 0.5]
    return {
        "date": "2026-12-02",
        "machine": machine,
        "quick": True,
        "tiff": "a folder of one TIFF per section",
        "json_name": "benchmarks/results/night.json",
        "load_average_at_end": [1.0, 1.0, 1.0],
        "model": {"source": "trained here", "architecture": "default U-Net", "train": {"steps": 20}},
        "runs": {"full": run(12, 4.0), "quarter": run(3, 1.0)},
        "kill": {
            "predict": {**kill, "rerun_summary": {"blocks_skipped": 2}},
            "segment": {**kill, "killed": False, "exit_status": 0, "rerun_summary": {"resumed_blocks": 4}},
        },
        "prefix_equal": {"image.zarr": {"equal": True}, "prob.zarr": {"equal": False}},
    }


def test_report_section(night):
    r = _results(night)
    night.derive(r)
    assert r["bound"] == "segment" and r["bound_all"] == "evaluate-cells"
    assert r["memory_flat"]["predict"]["ratio"] == 1.0
    text = night.doc_section(r)
    assert text.startswith("## Night run\n") and "A `--quick` run (12 x 1024 x 1024)" in text
    assert "| predict | 2 of 4 | 3.0 | 2 | yes |" in text
    assert "NOT killed" in text  # a run that finished before the kill is said so, not passed off
    assert "prob.zarr NO" in text and "1000 x 8192 x 8192" in text
    assert "On a GPU" in text
