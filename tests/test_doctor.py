"""volseg doctor: the machine as /proc/cpuinfo and torch see it, its speeds, the summary in provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from support import cli, one_line_error

from volseg.core.resources import CPU_FLAGS, cpu_class, machine_summary
from volseg.storage.volumes import create_volume


def _proc_flags() -> set[str]:
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return set()
    line = next((ln for ln in path.read_text().splitlines() if ln.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def test_doctor_json_reports_the_machine_and_measured_speeds():
    result = cli("doctor", "--json", "--seconds", "0.2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    machine, runtime = report["machine"], report["runtime"]
    flags = _proc_flags()
    assert machine["cpu_flags"] == [f for f in CPU_FLAGS if f in flags]  # against /proc/cpuinfo itself
    assert machine["cpu_class"] == cpu_class(flags)
    assert machine["cores"] >= 1 and machine["memory_bytes"] > 2**28
    import torch

    assert runtime["torch"] == str(torch.__version__) and runtime["threads"] == torch.get_num_threads()
    assert runtime["auto_precision_cpu"] in ("bf16", "fp32")
    if torch.backends.mkldnn.is_available():
        assert runtime["onednn"] and runtime["onednn"][0].isdigit()
    # bf16 is chosen exactly where the CPU has it natively (docs/tuning.md)
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        assert runtime["auto_precision_cpu"] == "fp32"
    # nothing measured in the test's own cache: predict's static default, and the doctor says so
    pick = report["predict_on_4096_sections"]
    assert pick["source"] == "default" and pick["chosen"].startswith("torch/1024/")
    assert runtime["backend"] == "auto" and "torch" in runtime["backends_installed"]
    forward, step = report["forward"], report["train_step"]
    assert forward["mvox_per_s"] > 0 and forward["tile"] == 512 and forward["calls"] >= 2
    assert step["steps_per_s"] > 0 and step["steps"] >= 2


def test_doctor_table_and_bad_options():
    result = cli("doctor", "--seconds", "0.1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    for word in ("cpu", "cores", "torch", "auto picks", "forward", "Mvox/s", "steps/s"):
        assert word in result.stdout
    one_line_error(cli("doctor", "--seconds", "0"), "--seconds 0")
    one_line_error(cli("doctor", "--device", "cuda:7", "--seconds", "0.1"), "--device cuda:7")


def test_every_volume_records_the_machine_it_was_made_on(tmp_path):
    vol = create_volume(tmp_path / "v.zarr", (1, 4, 4), np.uint8, (1, 4, 4))
    recorded = vol.provenance["machine"]
    summary = machine_summary()
    assert {k: recorded[k] for k in summary} == json.loads(json.dumps(summary))


def test_doctor_tune_measures_predicts_candidates_and_caches_them(tmp_path, monkeypatch):
    from predict_support import unet_file

    from volseg.nn import speeds as sp

    monkeypatch.setenv("VOLSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sp, "TILES", (64, 128))
    model = unet_file(tmp_path / "m.pt", base=4, depth=3)
    result = cli("doctor", "--tune", "--json", "--seconds", "0.1", "--model", str(model))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    wanted = {c.label for c in sp.candidates(sp.installed_backends(), (64, 128))}
    assert set(report["speeds"]) == wanted and all(v > 0 for v in report["speeds"].values())
    cached = sp.cached_speeds(report["key"])
    assert {c.label for c in cached} == wanted  # what predict reads for this model on this machine
    choice = report["on_4096_sections"]
    backend = choice["chosen"].split("/")[0]
    rows = [r for r in choice["candidates"] if "rate" in r and r["candidate"].startswith(backend + "/")]
    same = [r["rate"] for r in rows]
    assert choice["chosen"] in wanted and choice["rate"] == max(same)  # the best of its backend
    table = cli("doctor", "--tune", "--seconds", "0.1", "--model", str(model))
    assert table.exit_code == 0 and "predict picks" in table.stdout
