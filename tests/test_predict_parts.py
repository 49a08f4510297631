"""predict --part K/N: N independent jobs (a job array) take fixed shares; together they write one run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from predict_support import em_like, unet_file, write_volume
from support import cli, one_line_error

from volseg.errors import OptionError
from volseg.stages.predict import PredictOptions, predict
from volseg.storage.volumes import open_volume

OPTS = {"device": "cpu", "precision": "fp32", "backend": "torch", "block": (1, 64, 64), "chunks": (1, 64, 64)}


@pytest.fixture()
def inputs(tmp_path):
    image = write_volume(tmp_path / "img.zarr", em_like((6, 128, 128), seed=8), (1, 64, 64))
    return image, unet_file(tmp_path / "m.pt", base=4, depth=3)


def test_parts_in_any_order_write_exactly_the_single_run_and_the_last_completes_it(inputs, tmp_path):
    image, model = inputs
    single = predict(model, image, tmp_path / "one.zarr", threshold=0.5, **OPTS)
    out = tmp_path / "parts.zarr"
    shares = []
    for k in (2, 3, 1):
        r = predict(model, image, out, part=f"{k}/3", threshold=0.5, **OPTS)
        shares.append(r.blocks_written)
        assert r.status == ("complete" if k == 1 else "incomplete")
    assert sum(shares) == single.blocks_written == 24 and shares == [8, 8, 8]
    for name in ("", "-mask"):
        a = open_volume(tmp_path / f"one{name}.zarr").array[:]
        b = open_volume(tmp_path / f"parts{name}.zarr").array[:]
        np.testing.assert_array_equal(a, b)
    info = json.loads(cli("info", out, "--json").stdout)["completion"]
    assert info["status"] == "complete"
    assert [p["blocks_done"] for p in info["parts"]] == [8, 8, 8] and info["parts"][0]["part"] == "1/3"


def test_info_shows_each_part_and_a_job_of_another_run_is_refused(inputs, tmp_path):
    image, model = inputs
    out = tmp_path / "p.zarr"
    predict(model, image, out, part="1/4", **OPTS)
    parts = json.loads(cli("info", out, "--json").stdout)["completion"]["parts"]
    assert [(p["blocks_done"], p["blocks"]) for p in parts] == [(6, 6), (0, 6), (0, 6), (0, 6)]
    assert "parts" in cli("info", out).stdout
    with pytest.raises(OptionError, match="4 parts"):
        predict(model, image, out, part="2/3", **OPTS)
    result = cli(
        "predict", model, image, out, "--part", "2/4", "--block", "1,64,64", "--tta", "--device", "cpu"
    )
    one_line_error(result, "exists from another run")


@pytest.mark.parametrize("bad", ["0/3", "4/3", "3", "a/b"])
def test_bad_parts_are_refused(bad):
    with pytest.raises(OptionError, match="--part"):
        PredictOptions(part=bad)


def test_a_part_never_overwrites():
    """Each job of the array would delete the others' chunks."""
    with pytest.raises(OptionError, match="--part 1/2 and --overwrite exclude each other"):
        PredictOptions(part="1/2", overwrite=True)


def test_a_job_array_started_at_once_writes_the_single_run(inputs, tmp_path):
    image, model = inputs
    out = tmp_path / "array.zarr"
    args = ["--block", "1,64,64", "--chunks", "1,64,64", "--device", "cpu", "--precision", "fp32"]
    args += ["--backend", "torch", "--no-progress"]
    jobs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "volseg",
                "predict",
                str(model),
                str(image),
                str(out),
                "--part",
                f"{k}/3",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for k in (1, 2, 3)
    ]
    for job in jobs:
        _, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
    predict(model, image, tmp_path / "one.zarr", **OPTS)
    np.testing.assert_array_equal(open_volume(out).array[:], open_volume(tmp_path / "one.zarr").array[:])
    assert open_volume(out).complete
    assert not (tmp_path / "array.zarr.creating").exists()
