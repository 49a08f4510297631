"""predict chooses tile, backend and thread layout from speeds measured on the machine (volseg.nn.speeds).

The choice is the highest output rate: measured speed at a tile over the pixels the plan computes per output
pixel at that tile. Pure cases use made-up speeds (the figures of docs/benchmarks.md's AVX2 runtimes table);
runs check that a measured choice is used, recorded, kept on resume, and gives the default run's values.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from predict_support import em_like, unet_file, write_volume

from volseg.core import tiling
from volseg.nn import speeds as sp
from volseg.nn.speeds import Candidate
from volseg.stages.predict import PredictOptions, plan_prediction, predict
from volseg.stages.predict.plan import BACKEND_MARGIN, ModelInfo, lay_out
from volseg.storage.volumes import open_volume

INFO = ModelInfo(
    key="k", path=None, config={"base_channels": 16}, divisor=16, halo=96, context=0, channels=1,
    normalization=None, meta={},
)  # fmt: skip

#: Computed Mvox/s like those measured on the 2-core AVX2 machine (benchmarks/runtimes.py).
AVX2 = {
    Candidate("torch", 512, 2): 1.14,
    Candidate("torch", 1024, 2): 0.88,
    Candidate("torch", 2048, 2): 0.69,
    Candidate("torch", 512, 1): 0.91,
    Candidate("torch", 1024, 1): 0.76,
    Candidate("torch", 2048, 1): 0.55,
    Candidate("openvino", 512, 1): 1.33,
    Candidate("openvino", 1024, 1): 1.37,
    Candidate("openvino", 2048, 1): 1.50,
}


def layout(shape, speeds, chunks=(1, 1024, 1024), **options):
    opts = PredictOptions(device="cpu", **options)
    roi = tuple((0, s) for s in shape)
    return lay_out(opts, INFO, roi, chunks, 1, (opts.tile, 96, 0), "cpu", "fp32", speeds, shape, "cache")


def overhead(shape, lay):
    return tiling.plan_overhead(shape[1:], lay.block_shape[1:], (0, 0), lay.tile, 96, 16, shape[1:], 0)


def test_the_highest_output_rate_wins_on_4096_sections():
    shape = (8, 4096, 4096)
    lay = layout(shape, AVX2)
    assert (lay.backend, lay.tile, lay.streams) == ("openvino", 2048, 1)
    # every allowed candidate was scored; the winner's rate is its speed over its computed pixels
    rows = {r["candidate"]: r for r in lay.choice["candidates"]}
    assert set(rows) == {c.label for c in AVX2}
    assert lay.choice["rate"] == pytest.approx(1.50 / overhead(shape, lay), abs=1e-3)
    assert max(r["rate"] for r in rows.values()) == pytest.approx(lay.choice["rate"], abs=1e-3)


def test_torch_alone_keeps_mid_tiles_where_small_ones_pay_the_halo():
    shape = (8, 4096, 4096)
    lay = layout(shape, AVX2, backend="torch")
    # 512: 1.14 / 1.76; 1024: 0.88 / 1.30; 2048: 0.69 / 1.10 -> 1024, two forwards at once
    assert (lay.backend, lay.tile, lay.streams) == ("torch", 1024, 2)
    assert overhead(shape, lay) == pytest.approx(1.30, abs=0.01)


def test_small_sections_take_the_fastest_small_tile():
    shape = (4, 512, 512)  # one tile covers a section: no halo at any tile, so raw speed decides
    lay = layout(shape, AVX2, chunks=(1, 512, 512))
    assert (lay.backend, lay.tile) == ("openvino", 512)
    lay = layout(shape, AVX2, chunks=(1, 512, 512), backend="torch")
    assert (lay.tile, lay.streams) == (512, 2)


def test_another_backend_needs_the_margin():
    shape = (8, 4096, 4096)
    torch_best = 0.88 / 1.30
    others = [c for c in AVX2 if c.backend != "torch"]
    close = {**AVX2, **{c: torch_best * 1.096 * (BACKEND_MARGIN - 0.05) for c in others}}
    assert layout(shape, close).backend == "torch"
    far = {**AVX2, **{c: torch_best * 1.096 * (BACKEND_MARGIN + 0.05) for c in others}}
    assert layout(shape, far).backend == "openvino"


def test_given_tile_and_backend_narrow_the_choice():
    shape = (8, 4096, 4096)
    lay = layout(shape, AVX2, tile=512)
    assert (lay.backend, lay.tile) == ("openvino", 512)
    assert {Candidate.parse(r["candidate"]).tile for r in lay.choice["candidates"]} == {512}
    lay = layout(shape, AVX2, tile=512, backend="torch")  # nothing left open: the static plan
    assert (lay.backend, lay.tile, lay.streams, lay.choice["source"]) == ("torch", 512, 2, "given")


def test_the_memory_limit_leaves_out_tiles_that_do_not_fit():
    shape = (8, 4096, 4096)
    free = layout(shape, AVX2)
    assert free.tile == 2048
    # blocks of one chunk (1024^2) at most: the 2048 tile cannot run, its speed does not count
    lay = layout(shape, AVX2, block=(1, 1024, 1024))
    rows = {r["candidate"]: r for r in lay.choice["candidates"]}
    assert rows["openvino/2048/1"]["fits"] is False and (lay.backend, lay.tile) == ("openvino", 1024)
    small = layout(shape, AVX2, tile=512)  # a limit that only 512's blocks fit
    limit = 400 * 2**20 + 2 * small.memory_per_block
    lay = layout(shape, AVX2, memory_limit=limit)
    assert lay.memory_per_block * 2 + 400 * 2**20 <= limit
    assert lay.tile == Candidate.parse(lay.choice["chosen"]).tile


def test_a_part_job_never_chooses_so_that_all_parts_agree():
    lay = layout((8, 4096, 4096), AVX2, part="2/4")
    assert (lay.backend, lay.tile, lay.streams, lay.choice["source"]) == ("torch", 1024, 2, "default")


def test_without_speeds_the_static_default_is_kept():
    lay = layout((8, 4096, 4096), None)
    assert (lay.backend, lay.tile, lay.streams, lay.choice["source"]) == ("torch", 1024, 2, "default")
    lay = layout((8, 4096, 4096), None, backend="torch", tile=1024)
    assert lay.choice["source"] == "given"


# ------------------------------------------------------------------------------- runs
@pytest.fixture()
def inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLSEG_CACHE_DIR", str(tmp_path / "cache"))
    image = write_volume(tmp_path / "i.zarr", em_like((2, 600, 600), seed=3), (1, 600, 600))
    return image, unet_file(tmp_path / "m.pt", base=4, depth=3)


def cache_speeds(model, speeds):
    from volseg.nn.modelfile import load_model

    config = load_model(model).config.to_dict()
    sp.store_speeds(sp.speed_key(config, "fp32"), speeds)


def test_a_run_uses_recorded_speeds_keeps_its_choice_on_resume_and_equals_the_default(inputs, tmp_path):
    image, model = inputs
    opts = {"device": "cpu", "precision": "fp32", "dtype": "float32", "backend": "torch"}
    default = predict(model, image, tmp_path / "d.zarr", **opts)  # no speeds: tile 1024 (the section)
    assert default.plan["tile"] == 600 and default.plan["choice"]["source"] == "default"
    cache_speeds(model, {Candidate("torch", 512, 1): 5.0, Candidate("torch", 1024, 2): 1.0})
    plan = plan_prediction(model, image, tmp_path / "c.zarr", **opts)
    assert (plan.tile, plan.streams, plan.serial, plan.choice["source"]) == (512, 1, True, "cache")
    assert any(line.startswith("choice     torch/512/1") for line in plan.describe())
    chosen = predict(model, image, tmp_path / "c.zarr", **opts)
    settings = open_volume(tmp_path / "c.zarr").meta["predict"]["settings"]
    assert (settings["tile"], settings["streams"], settings["chosen_by"]) == (512, 1, "cache")
    a, b = (open_volume(tmp_path / n).data.compute() for n in ("d.zarr", "c.zarr"))
    assert np.abs(a - b).max() < 1e-5  # another tile and thread layout: the same values
    assert chosen.blocks_written == default.blocks_written
    # the speeds change; the finished (or interrupted) run keeps its tile instead of refusing the output
    cache_speeds(model, {Candidate("torch", 512, 1): 1.0, Candidate("torch", 1024, 2): 5.0})
    assert plan_prediction(model, image, tmp_path / "new.zarr", **opts).tile == 600
    again = predict(model, image, tmp_path / "c.zarr", **opts)
    assert again.blocks_skipped == again.blocks_total and again.plan["tile"] == 512


def test_a_large_run_probes_once_and_caches(inputs, tmp_path, monkeypatch):
    image, model = inputs
    monkeypatch.setattr(sp, "PROBE_MIN_VOXELS", 1)  # this small run counts as large
    monkeypatch.setattr(sp, "TILES", (64, 128))
    opts = {"device": "cpu", "precision": "fp32", "backend": "torch"}
    plan = plan_prediction(model, image, tmp_path / "p.zarr", **opts)
    assert plan.choice["source"] == "probe" and plan.tile in (64, 128)
    cached = json.loads(sp.cache_path().read_text())
    (entry,) = cached.values()
    assert set(entry["speeds"]) == {c.label for c in sp.candidates(["torch"], (64, 128))}
    assert all(v > 0 for v in entry["speeds"].values())
    assert plan_prediction(model, image, tmp_path / "p.zarr", **opts).choice["source"] == "cache"


def test_probe_measures_each_candidate_and_the_key_names_the_architecture():
    from volseg.nn.unet import UNet, UNetConfig

    net = UNet(UNetConfig(base_channels=4, depth=2))
    wanted = sp.candidates(["torch"], (32,), cores=2)
    speeds = sp.probe(net, wanted, halo=net.halo, seconds=0.05, cores=2)
    assert set(speeds) == set(wanted) and all(math.isfinite(v) and v > 0 for v in speeds.values())
    key = sp.speed_key(net.config.to_dict(), "fp32")
    assert key == sp.speed_key(net.config.to_dict(), "fp32")
    assert key != sp.speed_key(net.config.to_dict(), "bf16")
    assert key != sp.speed_key(UNetConfig(base_channels=8, depth=2).to_dict(), "fp32")


def test_an_unwritable_or_damaged_cache_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLSEG_CACHE_DIR", str(tmp_path))
    sp.cache_path().write_text("{not json")
    assert sp.cached_speeds("k") == {}
    sp.store_speeds("k", {Candidate("torch", 512, 2): 1.5})
    assert sp.cached_speeds("k") == {Candidate("torch", 512, 2): 1.5}


def test_auto_backend_takes_an_installed_runtime_that_measured_faster(inputs, tmp_path):
    import importlib.util

    if not (importlib.util.find_spec("openvino") and importlib.util.find_spec("onnx")):
        pytest.skip("openvino is not installed (pip install 'volseg[openvino]')")
    image, model = inputs
    opts = {"device": "cpu", "precision": "fp32", "dtype": "float32"}
    cache_speeds(model, {Candidate("torch", 1024, 2): 1.0, Candidate("openvino", 1024, 1): 2.0})
    result = predict(model, image, tmp_path / "ov.zarr", **opts)
    assert (result.plan["backend"], result.plan["serial"], result.plan["torch_threads"]) == (
        "openvino",
        result.plan["parallel"] > 1,
        sp.available_cores(),
    )
    ident = open_volume(tmp_path / "ov.zarr").meta["predict"]["identity"]
    assert ident["backend"] == "openvino"
    torch_run = predict(model, image, tmp_path / "t.zarr", backend="torch", **opts)
    a, b = (open_volume(tmp_path / n).data.compute() for n in ("ov.zarr", "t.zarr"))
    assert np.abs(a - b).max() < 1e-5 and torch_run.plan["backend"] == "torch"


def test_a_blocks_chunks_are_written_in_parallel_and_a_failed_one_is_not_marked_done(tmp_path, monkeypatch):
    import threading

    from volseg.errors import IncompleteRunError
    from volseg.storage.volumes import Volume

    image = write_volume(tmp_path / "i.zarr", em_like((1, 256, 256), seed=2), (1, 64, 64))
    model = unet_file(tmp_path / "m.pt", base=4, depth=3)
    opts = {"device": "cpu", "precision": "fp32", "backend": "torch", "block": (1, 256, 256), "retries": 0}
    clean = predict(model, image, tmp_path / "clean.zarr", **opts)
    assert clean.blocks_total == 1
    real = Volume.write_block
    threads: set[str] = set()

    def flaky(self, index, data, **kw):
        threads.add(threading.current_thread().name)
        if tuple(index) == (0, 1, 2) and self.path.name == "out.zarr":
            raise OSError("disk full (injected)")
        return real(self, index, data, **kw)

    monkeypatch.setattr(Volume, "write_block", flaky)
    with pytest.raises(IncompleteRunError):
        predict(model, image, tmp_path / "out.zarr", **opts)
    assert any(name.startswith("volseg-write") for name in threads)  # the pool wrote them
    out = open_volume(tmp_path / "out.zarr")
    done = set(out.done_blocks())
    assert (0, 1, 2) not in done and len(done) == 15  # every other chunk is done and durable
    monkeypatch.setattr(Volume, "write_block", real)
    again = predict(model, image, tmp_path / "out.zarr", **opts)
    assert again.blocks_written == 1
    a, b = (open_volume(tmp_path / n).data.compute() for n in ("clean.zarr", "out.zarr"))
    assert np.array_equal(a, b)
