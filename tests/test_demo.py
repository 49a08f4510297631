"""The demo end to end, in its reduced form: every output exists and the model learned."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from volseg.app.cli import app
from volseg.storage.volumes import open_volume

runner = CliRunner()


def test_quick_demo_runs_the_whole_chain(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--quick", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary["seconds"]) == {
        "synth",
        "tiff",
        "convert",
        "train",
        "predict",
        "segment",
        "evaluate",
        "preview",
    }
    for key in ("image", "labels", "prob", "cells"):
        assert open_volume(summary["outputs"][key]).complete, key
    prob = summary["scores"]["probabilities"]
    # Real learning: beats the trivial "everything is cell" baseline, whose pixel error is the membrane
    # fraction (~0.19 on the synthetic data) and whose membrane Dice is 0.
    membrane_fraction = 1 - open_volume(out / "labels.zarr").data.astype(bool).mean().compute()
    assert prob["pixel_error"] < 0.8 * membrane_fraction
    assert prob["dice"] > 0.5
    # ...and the summary says so itself, against the same trivial answer
    assert summary["learned"] is True
    assert abs(summary["scores"]["trivial"]["pixel_error"] - _held_out_membrane(out)) < 1e-9
    assert summary["scores"]["cells"]["adapted_rand_error"] < 0.5
    with Image.open(summary["outputs"]["preview_prob"]) as im:
        assert im.size[0] > 100 and im.size[1] > 100
    assert json.loads((out / "summary.json").read_text())["outputs"]["model"].endswith("model.pt")


def _held_out_membrane(out):
    labels = open_volume(out / "labels.zarr").data[-1:].compute()  # --quick holds out the last section
    return float((labels == 0).mean())


def test_a_demo_that_did_not_learn_says_so_and_exits_1(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--quick", "--steps", "1"])
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("volseg: demo: the model did not learn: held-out pixel error")
    assert "trivial answer" in last and "--steps" in last
    assert json.loads((out / "summary.json").read_text())["learned"] is False


def test_demo_refuses_existing_folder(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["demo", "--out", str(out), "--quick"])
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    result = runner.invoke(app, ["demo", "--out", str(out), "--quick", "--overwrite"])
    assert result.exit_code == 2 and "not a volseg demo folder" in result.stderr
    assert (out / "notes.txt").read_text() == "mine"


def test_demo_bad_data_path(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--data", "nope.tif,labels.tif"])
    assert result.exit_code == 2 and "nope.tif" in result.stderr


def test_demo_never_empties_a_folder_holding_its_data(tmp_path):
    import numpy as np
    import tifffile

    out = tmp_path / "demo"
    out.mkdir()
    (out / "image.zarr").mkdir()  # looks like an earlier demo, so --overwrite would empty it
    for name in ("img.tif", "lab.tif"):
        tifffile.imwrite(out / name, np.zeros((4, 64, 64), np.uint8), photometric="minisblack")
    data = f"{out / 'img.tif'},{out / 'lab.tif'}"
    result = runner.invoke(app, ["demo", "--out", str(out), "--data", data, "--quick", "--overwrite"])
    assert result.exit_code == 2 and "volseg never writes over its inputs" in result.stderr
    assert (out / "img.tif").is_file() and (out / "lab.tif").is_file()
