"""The predict stage: exact tiling, seam-free U-Net output, resume, refusals, failures, bad input."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from predict_support import AddOne, FailOn, Phase, em_like, unet_file, write_volume
from typer.testing import CliRunner

import volseg
from volseg.app.cli import app
from volseg.errors import IncompleteRunError, ModelError, OptionError, OutputError
from volseg.nn.inference import InferOptions, infer_image
from volseg.nn.modelfile import load_model, model_checksum
from volseg.stages.predict import PredictOptions, mask_path, plan_prediction, predict
from volseg.storage.volumes import open_volume

runner = CliRunner()
EXACT = {"dtype": "float32", "activation": "none", "precision": "fp32"}


def read(path) -> np.ndarray:
    return open_volume(path).array[:]


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """A 7 x 333 x 517 uint8 volume stored in 1 x 128 x 128 chunks."""
    root = tmp_path_factory.mktemp("odd")
    img = np.random.default_rng(1).integers(0, 256, (7, 333, 517), dtype=np.uint8)
    return img, write_volume(root / "img.zarr", img, (1, 128, 128))


@pytest.fixture(scope="module")
def em(tmp_path_factory):
    """ISBI-like sections, a tiny U-Net file (base 4, depth 3) and its whole-section fp32 reference."""
    root = tmp_path_factory.mktemp("em")
    img = em_like((4, 150, 170), seed=3)
    path = write_volume(root / "img.zarr", img, (2, 64, 64))
    model_file = unet_file(root / "model.pt")
    model = load_model(model_file)
    ref = infer_image(model, img, InferOptions(precision="fp32"), model.volseg_meta["normalization"])
    return {"img": img, "image": path, "model": model_file, "ref": ref, "root": root}


# ------------------------------------------------------------------ exact tiling
@pytest.mark.parametrize(
    ("chunks", "block", "roi", "tile"),
    [
        ((3, 100, 129), (3, 100, 129), None, 64),
        ((2, 37, 51), (2, 111, 200), None, 48),
        ((7, 333, 517), None, None, 1024),
        ((1, 61, 65), (1, 61, 65), "1:6,10:300,3:500", 32),
    ],
)
def test_add_one_through_the_tiler_is_exact(tmp_path, odd, chunks, block, roi, tile):
    img, image = odd
    result = predict(
        AddOne(divisor=16, halo=16),
        image,
        tmp_path / "o.zarr",
        chunks=chunks,
        block=block,
        roi=roi,
        tile=tile,
        **EXACT,
    )
    (z0, z1), (y0, y1), (x0, x1) = result.plan["roi"]
    np.testing.assert_array_equal(read(tmp_path / "o.zarr"), img[z0:z1, y0:y1, x0:x1].astype(np.float32) + 1)
    assert result.status == "complete" and result.blocks_failed == 0


def test_tta_and_float16_output(tmp_path, odd):
    img, image = odd
    predict(
        AddOne(divisor=16, halo=16),
        image,
        tmp_path / "t.zarr",
        roi="0:2,0:150,0:99",
        tta=True,
        tile=64,
        **{**EXACT, "dtype": "float16"},
    )
    out = read(tmp_path / "t.zarr")
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, (img[:2, :150, :99].astype(np.float32) + 1).astype(np.float16))


def test_z_context_is_mirrored_like_the_reference(tmp_path, odd):
    img, image = odd
    predict(AddOne(divisor=4, halo=4, context=2), image, tmp_path / "o.zarr", chunks=(2, 200, 200), **EXACT)
    padded = np.pad(img.astype(np.float32), ((2, 2), (0, 0), (0, 0)), mode="symmetric")
    expected = sum(padded[i : i + 7] for i in range(5)) + 1
    np.testing.assert_array_equal(read(tmp_path / "o.zarr"), expected)


@pytest.mark.parametrize(
    ("chunks", "roi", "tile"),
    [
        ((1, 50, 77), "0:2,:,:", 32),
        ((3, 41, 29), "0:4,7:150,13:240", 16),
        ((2, 333, 517), "2:3,101:333,0:517", 64),
    ],
)
def test_windows_sit_on_the_global_pooling_grid(tmp_path, odd, chunks, roi, tile):
    """A model that encodes each pixel's pooling phase: any misaligned window would show."""
    img, image = odd
    model = Phase(divisor=16, halo=16)
    ref = infer_image(model, img, InferOptions(tile=96, activation="none", precision="fp32"), None)
    result = predict(
        model, image, tmp_path / "o.zarr", chunks=chunks, block=chunks, roi=roi, tile=tile, **EXACT
    )
    (z0, z1), (y0, y1), (x0, x1) = result.plan["roi"]
    np.testing.assert_array_equal(read(tmp_path / "o.zarr"), ref[z0:z1, y0:y1, x0:x1])


# ------------------------------------------------------------------- seam-free
@pytest.mark.parametrize(
    ("tile", "chunks", "roi"),
    [
        (16, (1, 50, 60), "1:2,:,:"),
        (24, (2, 37, 41), None),
        (64, (3, 77, 170), "1:4,5:140,9:170"),
        (None, (4, 150, 170), None),
    ],
)
def test_unet_stitched_equals_whole_section(tmp_path, em, tile, chunks, roi):
    """Any tile the model accepts, any chunking (each chunk its own block), a ROI: within 1e-4."""
    result = predict(
        em["model"],
        em["image"],
        tmp_path / "p.zarr",
        tile=tile,
        chunks=chunks,
        block=chunks,
        roi=roi,
        dtype="float32",
        precision="fp32",
    )
    (z0, z1), (y0, y1), (x0, x1) = result.plan["roi"]
    diff = np.abs(read(tmp_path / "p.zarr") - em["ref"][z0:z1, y0:y1, x0:x1]).max()
    assert diff < 1e-4


@pytest.mark.parametrize(
    ("edge", "chunks", "roi"), [(8, (2, 37, 41), None), (None, (3, 77, 170), "1:4,5:140,9:170")]
)
def test_mirrored_edge_stitched_equals_its_whole_section(tmp_path, em, edge, chunks, roi):
    """--edge mirrors that much at the volume's edges (None here: the whole halo, as the U-Net paper)."""
    model = load_model(em["model"])
    edge = model.halo if edge is None else edge
    norm = model.volseg_meta["normalization"]
    ref, no_edge = (
        infer_image(model, em["img"], InferOptions(edge=e, activation="none", precision="fp32"), norm)
        for e in (edge, 0)
    )
    assert np.abs(ref - no_edge).max() > 100 * 1e-4  # the edge changes the border pixels
    result = predict(
        em["model"],
        em["image"],
        tmp_path / "p.zarr",
        tile=24,
        chunks=chunks,
        block=chunks,
        roi=roi,
        edge=edge,
        **EXACT,
    )
    (z0, z1), (y0, y1), (x0, x1) = result.plan["roi"]
    assert result.plan["edge"] == edge
    assert np.abs(read(tmp_path / "p.zarr") - ref[z0:z1, y0:y1, x0:x1]).max() < 1e-4


@pytest.mark.isbi
def test_unet_seam_free_on_isbi(tmp_path, isbi_dir):
    import tifffile

    img = tifffile.imread(isbi_dir / "train-volume.tif")[:2, :200, :264]
    image = write_volume(tmp_path / "img.zarr", img, (1, 77, 91))
    model_file = unet_file(tmp_path / "m.pt", base=4, depth=4, seed=5)
    model = load_model(model_file)
    ref = infer_image(model, img, InferOptions(precision="fp32"), model.volseg_meta["normalization"])
    predict(
        model_file,
        image,
        tmp_path / "p.zarr",
        tile=64,
        block=(1, 100, 132),
        dtype="float32",
        precision="fp32",
    )
    assert np.abs(read(tmp_path / "p.zarr") - ref).max() < 1e-4


def test_schedulers_agree_bitwise(tmp_path, em):
    outputs = {}
    for scheduler in ("synchronous", "threads", "processes"):
        predict(
            em["model"],
            em["image"],
            tmp_path / f"{scheduler}.zarr",
            scheduler=scheduler,
            chunks=(1, 64, 64),
            block=(1, 64, 64),
        )
        outputs[scheduler] = read(tmp_path / f"{scheduler}.zarr")
    assert outputs["synchronous"].dtype == np.uint8
    np.testing.assert_array_equal(outputs["threads"], outputs["synchronous"])
    np.testing.assert_array_equal(outputs["processes"], outputs["synchronous"])


# --------------------------------------------------------------- output, metadata
def test_output_metadata_threshold_mask_and_api(tmp_path, em):
    out = tmp_path / "prob.zarr"
    result = volseg.predict(em["model"], em["image"], out, PredictOptions(threshold=0.5, dtype="float32"))
    vol = open_volume(out)
    meta = vol.meta
    assert vol.complete and vol.voxel_size == (50.0, 4.0, 4.0) and vol.kind == "probability"
    assert meta["predict"]["model"]["checksum"] == model_checksum(em["model"])
    assert meta["predict"]["model"]["config"]["base_channels"] == 4
    assert meta["predict"]["identity"]["source"] == str(em["image"].resolve())
    assert meta["predict"]["settings"]["threshold"] == 0.5
    assert str(em["model"].resolve()) in [s["path"] for s in meta["provenance"]["sources"]]
    model_convention = load_model(em["model"]).volseg_meta["convention"]  # copied, stored as float32
    assert meta["convention"] == {**model_convention, "scale": 1.0, "offset": 0.0}
    mask = open_volume(mask_path(out))
    assert result.mask == str(mask.path) and mask.complete and mask.kind == "mask"
    assert "convention" not in mask.meta  # 0 / 1 values, not probabilities
    np.testing.assert_array_equal(mask.array[:], (vol.array[:] >= 0.5).astype(np.uint8))

    u8 = predict(em["model"], em["image"], tmp_path / "u8.zarr", roi="1:3,10:100,20:150")
    vol8 = open_volume(tmp_path / "u8.zarr")
    assert vol8.dtype == np.uint8 and vol8.shape == (2, 90, 130)
    assert vol8.meta["values"]["scale"] == pytest.approx(1 / 255)
    assert vol8.meta["convention"]["scale"] == pytest.approx(1 / 255)
    assert vol8.meta["convention"]["foreground"] == meta["convention"]["foreground"]
    translation = vol8.group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][1]
    assert translation == {"type": "translation", "translation": [50.0, 40.0, 80.0]}
    expected = np.rint(read(out)[1:3, 10:100, 20:150] * 255)
    assert np.abs(vol8.array[:].astype(int) - expected).max() <= 1  # bf16 (auto) vs fp32 rounding at most
    assert u8.voxels == 2 * 90 * 130


def test_memory_limit_and_dry_run_plan(tmp_path, em):
    big = plan_prediction(em["model"], em["image"], tmp_path / "p.zarr", chunks=(1, 32, 32))
    limit = big.memory_total - 1
    small = plan_prediction(
        em["model"], em["image"], tmp_path / "p.zarr", chunks=(1, 32, 32), memory_limit=limit
    )
    assert small.memory_total <= limit < big.memory_total
    assert small.block_shape < big.block_shape or small.tile < big.tile
    with pytest.raises(OptionError, match="--memory-limit .* too small"):
        plan_prediction(em["model"], em["image"], tmp_path / "p.zarr", memory_limit=1e5)
    res = runner.invoke(
        app,
        [
            "predict",
            str(em["model"]),
            str(em["image"]),
            str(tmp_path / "p.zarr"),
            "--dry-run",
            "--tile",
            "32",
        ],
    )
    assert res.exit_code == 0, res.output
    for word in ("blocks", "halo", "overhead", "(T + 2h)^2 / T^2", "memory", "scheduler", "estimate"):
        assert word in res.stdout
    assert not (tmp_path / "p.zarr").exists()
    # the estimate comes from a probe of the run's own model on its own windows (tile + 2 halo)
    plan = predict(em["model"], em["image"], tmp_path / "p.zarr", tile=32, dry_run=True)
    assert plan.probe["tile"] == plan.tile + 2 * plan.halo and plan.probe["batch"] == plan.batch_size
    computed = math.prod(plan.out_shape) * plan.compute_overhead
    assert plan.estimate_seconds == pytest.approx(
        computed / (plan.probe["mvox_per_s"] * 1e6), rel=0.05, abs=0.1
    )
    assert plan.to_dict()["estimate_seconds"] == plan.estimate_seconds and not (tmp_path / "p.zarr").exists()


# ----------------------------------------------------------- resume and refusals
def test_rerun_resumes_and_mismatched_rerun_is_refused(tmp_path, em):
    out = tmp_path / "p.zarr"
    first = predict(em["model"], em["image"], out, chunks=(1, 75, 85), block=(1, 75, 85))
    again = predict(em["model"], em["image"], out, chunks=(1, 75, 85), block=(1, 75, 85))
    assert first.blocks_written == 16 and again.blocks_written == 0 and again.blocks_skipped == 16
    other = unet_file(tmp_path / "other.pt", seed=1)
    with pytest.raises(OutputError, match="exists from another run.*model_checksum"):
        predict(other, em["image"], out, chunks=(1, 75, 85))
    with pytest.raises(OutputError, match="exists from another run.*tile"):
        predict(em["model"], em["image"], out, chunks=(1, 75, 85), tile=16)
    with pytest.raises(OutputError, match="exists from another run.*edge"):
        predict(em["model"], em["image"], out, chunks=(1, 75, 85), edge=8)
    with pytest.raises(OutputError, match="would replace the input IMAGE"):
        predict(em["model"], em["image"], em["image"])
    redone = predict(other, em["image"], out, chunks=(1, 75, 85), overwrite=True)
    assert redone.blocks_written > 0 and open_volume(out).complete
    # a mask left by another run is refused too, even when the probabilities are gone
    predict(em["model"], em["image"], tmp_path / "q.zarr", threshold=0.5, roi="0:1,:,:")
    shutil.rmtree(tmp_path / "q.zarr")
    with pytest.raises(OutputError, match="q-mask.zarr: exists from another run.*threshold"):
        predict(em["model"], em["image"], tmp_path / "q.zarr", threshold=0.7, roi="0:1,:,:")


def test_failed_blocks_are_retried_reported_and_not_marked_done(tmp_path):
    img = np.random.default_rng(0).integers(0, 200, (3, 40, 40), dtype=np.uint8)
    img[1, 5, 20] = 255  # in chunk (1, 0, 1)
    image = write_volume(tmp_path / "img.zarr", img, (1, 16, 16))
    model = FailOn(255, divisor=1, halo=0)
    with pytest.raises(IncompleteRunError, match="1 of 27 blocks failed after 2 retries") as info:
        predict(model, image, tmp_path / "o.zarr", block=(1, 16, 16), retries=2, **EXACT)
    assert model.failures == 3 and info.value.exit_code == 1
    assert info.value.result.blocks_failed == 1 and info.value.result.blocks_written == 26
    vol = open_volume(tmp_path / "o.zarr")
    assert vol.done_blocks() == {b for b in vol.block_ids()} - {(1, 0, 1)}
    assert vol.meta["status"] == "incomplete"
    with pytest.raises(IncompleteRunError):  # a rerun runs only the failed block
        predict(model, image, tmp_path / "o.zarr", block=(1, 16, 16), retries=0, **EXACT)
    assert model.failures == 4


def test_kill_minus_9_then_resume_is_bitwise_identical(tmp_path, em):
    img = em_like((8, 64, 96), seed=9)
    image = write_volume(tmp_path / "img.zarr", img, (1, 32, 32))
    args = [
        str(em["model"]),
        str(image),
        str(tmp_path / "p.zarr"),
        "--scheduler",
        "synchronous",
        "--no-progress",
        "--threshold",
        "0.5",
    ]
    cmd = [sys.executable, "-m", "volseg", "predict", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done_dir = tmp_path / "p.zarr" / ".volseg" / "done"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if done_dir.is_dir() and len(os.listdir(done_dir)) >= 5:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(os.listdir(done_dir))
    assert 5 <= killed_at < 8 * 2 * 3, "the run was not interrupted mid-way"
    assert open_volume(tmp_path / "p.zarr").meta["status"] == "incomplete"
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stdout
    predict(em["model"], image, tmp_path / "ref.zarr", scheduler="synchronous", threshold=0.5)
    np.testing.assert_array_equal(read(tmp_path / "p.zarr"), read(tmp_path / "ref.zarr"))
    np.testing.assert_array_equal(
        read(mask_path(tmp_path / "p.zarr")), read(mask_path(tmp_path / "ref.zarr"))
    )
    assert open_volume(tmp_path / "p.zarr").complete


# -------------------------------------------------------------------- bad input
def _cli(*args: str):
    result = runner.invoke(app, ["predict", *map(str, args)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("volseg: error:"), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_bad_inputs_are_one_line_exit_2(tmp_path, em):
    model, image, out = em["model"], em["image"], tmp_path / "p.zarr"
    assert "no such file" in _cli(tmp_path / "missing.pt", image, out)
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    assert "not a volseg model" in _cli(tmp_path / "junk.pt", image, out)
    assert "no such volume" in _cli(model, tmp_path / "missing.zarr", out)
    assert "--tile 20 is not a multiple of 8" in _cli(model, image, out, "--tile", "20")
    assert "--halo" in _cli(model, image, out, "--halo", "-8")
    assert "--halo 20 is not a multiple of 8" in _cli(model, image, out, "--halo", "20")
    assert "--edge 12 is not a multiple of 8" in _cli(model, image, out, "--edge", "12")
    assert "--edge" in _cli(model, image, out, "--edge", "-8")
    assert "--roi z range 0:9 is outside the volume" in _cli(model, image, out, "--roi", "0:9,0:10,0:10")
    assert "--scheduler" in _cli(model, image, out, "--scheduler", "mpi")
    assert not out.exists()
    predict(model, image, out, roi="0:1,:,:")
    assert "exists from another run" in _cli(model, image, out, "--roi", "0:2,:,:")
    with pytest.raises(ModelError):
        predict(object(), image, out)


def test_unreachable_scheduler_fails_fast(tmp_path, em):
    import socket

    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    line = _cli(em["model"], em["image"], tmp_path / "p.zarr", "--scheduler", f"tcp://127.0.0.1:{port}")
    assert "no dask scheduler answered" in line and time.monotonic() - start < 15


def test_cli_runs_and_prints_a_summary(tmp_path, em):
    res = runner.invoke(
        app,
        [
            "predict",
            str(em["model"]),
            str(em["image"]),
            str(tmp_path / "p.zarr"),
            "--chunks",
            "2,75,85",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "blocks written" in res.stdout and "Mvox/s" in res.stdout and "(complete)" in res.stdout
    assert Path(tmp_path / "p.zarr").is_dir()


def test_gpus_are_shared_out_one_per_worker_thread(monkeypatch):
    """With several GPUs, cuda / auto become cuda:k, one per worker (here: per thread), in turn."""
    import threading

    import torch

    import volseg.stages.predict as stage

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert stage.worker_device("cpu") == "cpu" and stage.worker_device("cuda:1") == "cuda:1"
    seen: list[tuple[str, str]] = []

    def worker() -> None:
        seen.append((stage.worker_device("cuda"), stage.worker_device("auto")))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a == b for a, b in seen)  # a thread keeps its GPU
    assert sorted(a for a, _ in seen) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1", "cuda:2", "cuda:2"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert stage.worker_device("cuda") == "cuda"


def test_group_norm_models_are_told_their_tiles_seam(tmp_path, em):
    """A model whose output depends on the tile is not silently stitched: the plan says so."""
    grouped = unet_file(tmp_path / "group.pt", norm="group")
    tiled = plan_prediction(grouped, em["image"], tmp_path / "p.zarr", tile=32, chunks=(1, 64, 64))
    assert any("group norm" in n and "seams" in n for n in tiled.notes)
    assert any(line.startswith("note") for line in tiled.describe())
    whole = plan_prediction(grouped, em["image"], tmp_path / "p.zarr", block=(1, 150, 170))
    assert whole.notes == []  # one tile per section: nothing to stitch
    assert plan_prediction(em["model"], em["image"], tmp_path / "p.zarr", tile=32).notes == []


def test_planning_imports_and_runs_without_torch():
    """The pure planning module sizes blocks and memory without loading torch (or dask)."""
    code = (
        "import sys\n"
        "import volseg.stages.predict.plan as plan\n"
        "info = plan.ModelInfo('k', None, {'base_channels': 16}, 16, 32, 0, 1, None, {})\n"
        "cpb = plan.grouping((8, 3000, 3000), (1, 512, 512), None, 1024, 4)\n"
        "mem = plan.estimate_memory((4, 1024, 1024), 1024, 32, 4, info, 'bf16', 1)\n"
        "assert cpb == (4, 2, 2) and mem > 0, (cpb, mem)\n"
        "loaded = [m for m in ('torch', 'dask', 'distributed') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
