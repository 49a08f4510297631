"""The entry checks of every stage (storage/paths, nn/runtime, nn/intensity), each through a user's command.

Each test reproduces a failure a fuzzing pass found (issue 9): an input deleted by --overwrite,
an image the model was not trained for, a missing chunk read as zeros, a device torch lacks,
a codec level out of range, a URL taken as a folder. Each ends in one line and exit 2 (or,
for damage found while running, exit 1 with the chunk named) and leaves nothing that looks
complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from predict_support import em_like, unet_file, write_volume
from support import cli, one_line_error

import volseg
from volseg.errors import InputError, OptionError, OutputError
from volseg.nn import intensity, runtime
from volseg.nn.modelfile import save_model
from volseg.nn.unet import UNet, UNetConfig
from volseg.storage import paths as checks
from volseg.storage.conventions import Convention
from volseg.storage.volumes import create_volume, open_volume, volume_info


def complete(path: Path) -> bool:
    try:
        return open_volume(path).complete
    except InputError:
        return False


def trained_model(path: Path, mean: float = 122.0, std: float = 35.0, dtype: str = "uint8") -> Path:
    """A tiny model file carrying what 'volseg train' records about its training images."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, depth=3))
    save_model(
        path,
        model,
        normalization={"mode": "meanstd", "mean": mean, "std": std},
        convention=Convention(foreground=(0,), foreground_kind="boundary"),
        provenance={},
        metrics={},
        train_config={},
        extra={"intensity": {"mean": mean, "std": std, "lo": 0.0, "hi": 255.0}, "image_dtype": dtype},
    )
    return path


@pytest.fixture(scope="module")
def em(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks")
    img = em_like((2, 64, 64), seed=1)
    return {
        "root": root,
        "array": img,
        "image": write_volume(root / "img.zarr", img, (1, 32, 32)),
        "model": unet_file(root / "m.pt", base=4, depth=3),
    }


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------- 1. outputs never inputs
def test_predict_onto_its_own_input_is_refused_and_the_input_survives(em, tmp_path):
    image = tmp_path / "img.zarr"
    shutil.copytree(em["image"], image)
    before = tree(image)
    one_line_error(cli("predict", em["model"], image, image, "--overwrite"), "would replace the input IMAGE")
    (tmp_path / "link.zarr").symlink_to(image)
    (tmp_path / "sub").mkdir()
    routes = [
        tmp_path / "link.zarr",  # a symlink to the input
        tmp_path / "sub" / ".." / "img.zarr",  # a .. route to it
        image / "0" / "p.zarr",  # inside it
        tmp_path,  # the folder holding it (--overwrite would delete it)
    ]
    for out in routes:
        one_line_error(cli("predict", em["model"], image, out, "--overwrite"), "volseg never writes over")
    # the mask sibling (OUT-mask.zarr) is an output too
    masked = tmp_path / "p-mask.zarr"
    shutil.copytree(image, masked)
    one_line_error(
        cli("predict", em["model"], masked, tmp_path / "p.zarr", "--threshold", "0.5", "--overwrite"),
        "(mask) would replace",
    )
    assert not (tmp_path / "p.zarr").exists()
    assert tree(image) == before and complete(image)
    with pytest.raises(OutputError, match="would replace the model"):
        volseg.predict(em["model"], image, em["model"], overwrite=True)
    assert em["model"].is_file()


def test_outputs_that_are_inputs_are_refused_by_every_writer(em, tmp_path):
    image = tmp_path / "img.zarr"
    shutil.copytree(em["image"], image)
    before = tree(image)
    one_line_error(
        cli("train", image, image, "-o", image / "m.pt", "--steps", "1"), "written inside the input IMAGE"
    )
    one_line_error(cli("train", image, image, "-o", image, "--overwrite"), "would replace the input")
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, em["array"])
    one_line_error(cli("convert", tif, tmp_path, "--overwrite"), "holds the source")
    one_line_error(cli("convert", tif, tif, "--overwrite"), "replace the source")
    assert tree(image) == before and tif.is_file()


def test_the_relation_is_found_through_hard_links(tmp_path):
    a = tmp_path / "a.tif"
    a.write_bytes(b"x")
    os.link(a, tmp_path / "b.tif")
    with pytest.raises(OutputError, match="would replace the source"):
        checks.output_not_input({"OUT": tmp_path / "b.tif"}, [("source", a)])
    checks.output_not_input({"OUT": tmp_path / "c.tif"}, [("source", a)])  # unrelated: fine


# ------------------------------------------------------- 2. the image the model expects
@pytest.mark.parametrize(
    ("dtype", "scale", "needle"),
    [("uint16", 257.0, "is uint16, but the model"), ("float32", 1 / 255, "is float32, but the model")],
)
def test_another_dtype_than_the_training_images_is_refused(em, tmp_path, dtype, scale, needle):
    model = trained_model(tmp_path / "m.pt")
    other = write_volume(tmp_path / "o.zarr", (em["array"] * scale).astype(dtype), (1, 32, 32))
    line = one_line_error(cli("predict", model, other, tmp_path / "p.zarr"), needle, "--rescale")
    assert "mean 122, std 35" in line and not (tmp_path / "p.zarr").exists()
    # --rescale maps it onto the training range: the same probabilities as the uint8 image, rescaled alike
    assert cli("predict", model, other, tmp_path / "p.zarr", "--rescale").exit_code == 0
    assert cli("predict", model, em["image"], tmp_path / "ref.zarr", "--rescale").exit_code == 0
    got = np.asarray(open_volume(tmp_path / "p.zarr").array[:]).astype(int)
    ref = np.asarray(open_volume(tmp_path / "ref.zarr").array[:]).astype(int)
    assert np.abs(got - ref).max() <= 1


def test_a_range_far_off_is_refused_and_a_moderate_shift_warned(em, tmp_path):
    stats = intensity.sample_stats(open_volume(em["image"]).array)
    mean, std = stats["mean"], stats["std"]
    far = trained_model(tmp_path / "far.pt", mean=mean + 6 * std, std=std)
    one_line_error(cli("predict", far, em["image"], tmp_path / "p.zarr"), "lie far outside the range")
    narrow = trained_model(tmp_path / "narrow.pt", mean=mean, std=std / 5)
    one_line_error(cli("predict", narrow, em["image"], tmp_path / "p.zarr"), "far outside")
    near = trained_model(tmp_path / "near.pt", mean=mean + 2 * std, std=std)
    result = cli("predict", near, em["image"], tmp_path / "p.zarr", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "volseg: warning:" in result.stderr and "brightness or contrast differs" in result.stderr
    same = trained_model(tmp_path / "same.pt", mean=mean, std=std)
    result = cli("predict", same, em["image"], tmp_path / "q.zarr", "--no-progress")
    assert result.exit_code == 0 and "warning" not in result.stderr


def test_sample_stats_reads_few_chunks_and_matches_numpy(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (3, 40, 50), dtype=np.uint8)
    vol = open_volume(write_volume(tmp_path / "v.zarr", data, (1, 20, 25)))
    whole = intensity.sample_stats(vol.array, max_chunks=100)
    assert whole["mean"] == pytest.approx(data.mean()) and whole["std"] == pytest.approx(data.std())
    roi = intensity.sample_stats(vol.array, roi=((1, 2), (0, 20), (25, 50)), max_chunks=100)
    assert roi["mean"] == pytest.approx(data[1, :20, 25:].mean())


# ---------------------------------------------------------------- 3. missing chunks
def test_a_missing_chunk_of_a_volseg_volume_is_damage(em, tmp_path):
    image = tmp_path / "img.zarr"
    shutil.copytree(em["image"], image)
    (image / "0" / "c" / "1" / "1" / "0").unlink()
    info = volume_info(image)["completion"]
    assert info["status"] == "damaged" and info["chunks_missing"] == 1
    assert info["missing_examples"] == ["0/c/1/1/0"]
    shown = cli("info", image)
    assert shown.exit_code == 0 and "chunks missing" in shown.output and "damaged" in shown.output
    with pytest.raises(InputError, match="chunk 0/c/1/1/0 is missing"):
        np.asarray(open_volume(image).array[1])
    # predict samples a few chunks before it starts: this one is among them, so nothing is written
    result = cli("predict", em["model"], image, tmp_path / "p.zarr", "--no-progress")
    one_line_error(result, "chunk 0/c/1/1/0 is missing")
    assert not (tmp_path / "p.zarr").exists()


def test_damage_found_while_predicting_fails_its_blocks_naming_the_chunk(em, tmp_path):
    # 16 chunks: the 8 sampled before the run are 0, 2, 4, 6, 9, 11, 13, 15 (C order); chunk 1 is not
    image = write_volume(tmp_path / "img.zarr", em_like((4, 64, 64), seed=2), (1, 32, 32))
    (image / "0" / "c" / "0" / "0" / "1").unlink()
    out = tmp_path / "p.zarr"
    args = ("predict", em["model"], image, out, "--no-progress", "--block", "1,32,32", "--retries", "3")
    line = one_line_error(cli(*args), "chunk 0/c/0/0/1 is missing", "could not read their input", code=1)
    # the halo (48 px) of every block of section 0 reads that chunk; the other sections are done
    assert "4 of 16 blocks" in line and "rerun the same command to retry" not in line
    assert not complete(out) and {b[0] for b in open_volume(out).done_blocks()} == {1, 2, 3}
    assert len(open_volume(out).done_blocks()) == 12


def test_a_missing_chunk_of_another_writers_volume_is_the_fill_value(tmp_path):
    import zarr

    path = tmp_path / "foreign.zarr"
    vol = create_volume(path, (2, 8, 8), "uint8", (1, 4, 4), fill_value=7)
    vol.array[:] = 1
    meta = dict(vol.group.attrs["volseg"])
    meta.pop("every_chunk_stored")  # as another tool (or an older volseg) writes it
    zarr.open_group(str(path), mode="r+").attrs.update({"volseg": meta})
    (path / "0" / "c" / "0" / "0" / "1").unlink()
    data = np.asarray(open_volume(path).array[:])
    assert (data[0, :4, 4:] == 7).all() and data.sum() == 7 * 16 + (128 - 16)
    assert "chunks_missing" not in volume_info(path)["completion"]


# ------------------------------------------------------------------------ 6. devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without usable CUDA")
def test_devices_torch_lacks_are_refused_before_any_output(em, tmp_path):
    for device in ("cuda", "cuda:1", "mps", "tpu"):
        out = tmp_path / f"p-{device.replace(':', '')}.zarr"
        line = one_line_error(cli("predict", em["model"], em["image"], out, "--device", device), device)
        assert out.exists() is False
        assert ("torch" in line) or ("volseg runs on" in line) or ("not a torch device" in line)
    line = one_line_error(
        cli("train", em["image"], em["image"], "-o", tmp_path / "t" / "m.pt", "--device", "cuda")
    )
    assert "without CUDA" in line or "no usable GPU" in line
    assert not (tmp_path / "t").exists()


def test_check_device_counts_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.check_device("cuda:1") == "cuda:1" and runtime.check_device("auto") == "auto"
    with pytest.raises(OptionError, match="has 2 GPU"):
        runtime.check_device("cuda:2")


# --------------------------------------------------------------------- 10. codec levels
@pytest.mark.parametrize("codec", ["zstd:99", "zstd:-200000", "blosc-zstd:10", "gzip:-1", "zstd:x"])
def test_codec_levels_are_checked(tmp_path, codec):
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, np.zeros((2, 16, 16), np.uint8))
    one_line_error(cli("convert", tif, tmp_path / "v.zarr", "--codec", codec), "--codec")
    one_line_error(cli("synth", tmp_path / "s", "--shape", "2,32,32", "--codec", codec), "--codec")
    assert not (tmp_path / "v.zarr").exists() and not (tmp_path / "s").exists()


# ------------------------------------------------------------------------- 12. URLs
def test_urls_are_never_taken_as_folders(em, tmp_path, monkeypatch):
    """Volumes may be URLs (tests/test_storage.py); what must be local says so; no folder "s3:" appears."""
    monkeypatch.chdir(tmp_path)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, np.zeros((2, 16, 16), np.uint8))
    for args, needle in (
        (("convert", tif, "s3://bucket/img.zarr"), "no credentials"),
        (("convert", "https://example.org/s.tif", "v.zarr"), "must be a local path"),
        (("predict", em["model"], "memory://nowhere/img.zarr", "memory://b/p.zarr"), "no such volume"),
        (("--endpoint-url", "http://127.0.0.1:9", "info", "s3://bucket/img.zarr"), "cannot reach"),
        (("evaluate", em["image"], em["image"], "--json=s3://b/r.json"), "must be a local path"),
        (("predict", em["model"], em["image"], "ftp://host/p.zarr"), "does not read ftp://"),
        (("predict", em["model"], em["image"], "https://host/p.zarr"), "read only"),
    ):
        one_line_error(cli(*args), needle)
    assert sorted(os.listdir(tmp_path)) == ["s.tif"]  # no folder "s3:" or "https:" appeared
    with pytest.raises(InputError, match="no credentials"):
        volseg.convert(tif, "s3://bucket/img.zarr")
    with pytest.raises(InputError, match="is a URL"):
        volseg.open_volume(Path("s3://bucket/img.zarr"))  # what pathlib leaves of a URL: s3:/bucket
    # a scheduler address is a URL by right: it reaches the scheduler check, not the URL check
    planned = cli(
        "predict", em["model"], em["image"], "p.zarr", "--scheduler", "tcp://127.0.0.1:1", "--dry-run"
    )
    assert planned.exit_code == 0 and "scheduler  tcp://127.0.0.1:1" in planned.output


# --------------------------------------------------------------------- usage errors
def test_click_usage_errors_are_one_line(em):
    one_line_error(cli("predict", em["model"], em["image"], "p.zarr", "--tile", "abc"), "--tile", "--help")
    one_line_error(cli("predict"), "Missing argument")
    one_line_error(cli("segment", "a.zarr", "b.zarr", "--mode", "4d"), "--mode")
    one_line_error(cli("nonsense"), "No such command")
    one_line_error(cli("info", em["image"], "--bogus"), "--bogus")


# ------------------------------------------------------------------ kinds recorded
def test_convert_records_the_kind_and_predict_refuses_non_images(em, tmp_path):
    tif = tmp_path / "labels.tif"
    tifffile.imwrite(tif, (em["array"] > 100).astype(np.uint8) * 255)
    assert cli("convert", tif, tmp_path / "l.zarr", "--kind", "label").exit_code == 0
    labels = open_volume(tmp_path / "l.zarr")
    assert labels.kind == "label" and "image-label" in labels.group.attrs["ome"]
    one_line_error(cli("predict", em["model"], tmp_path / "l.zarr", tmp_path / "p.zarr"), "is a label volume")
    floats = tmp_path / "f.tif"
    tifffile.imwrite(floats, np.zeros((2, 8, 8), np.float32))
    one_line_error(cli("convert", floats, tmp_path / "f.zarr", "--kind", "label"), "float32", "--kind")
    assert not (tmp_path / "f.zarr").exists()
    meta = json.loads((tmp_path / "l.zarr" / "zarr.json").read_text())
    assert meta["attributes"]["volseg"]["provenance"]["config"]["kind"] == "label"
