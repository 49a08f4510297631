"""evaluate: hand-made cases, scikit-image agreement on streamed volumes, sections, JSON, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information
from support import translate, write_volume
from typer.testing import CliRunner

from volseg.app.cli import app
from volseg.errors import InputError, OptionError
from volseg.stages.evaluate import EvaluateOptions, EvaluateResult, evaluate, parse_foreground
from volseg.storage.volumes import create_volume, open_volume

runner = CliRunner()


def _write(path, data, chunks=None, kind="image", **extra):
    return write_volume(path, data, chunks or np.shape(data), kind, extra=extra or None)


def _labels(tmp_path, name, data, chunks=None):
    return _write(tmp_path / name, np.asarray(data, np.uint32), chunks, kind="label")


# ------------------------------------------------------- instance cases, by hand
# One 2 x 2 section. Pairs of distinct pixels: 6. With sizes s, sum(s^2) - n counts ordered pairs.
TWO_CELLS = [[[1, 1], [2, 2]]]


def _instance(tmp_path, pred, truth=TWO_CELLS):
    _labels(tmp_path, "t.zarr", truth)
    _labels(tmp_path, "p.zarr", pred)
    return evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr").overall


def test_perfect_instances(tmp_path):
    o = _instance(tmp_path, [[[7, 7], [3, 3]]])  # the same cells under other ids
    assert o["adapted_rand_error"] == 0 and o["voi_split"] == 0 and o["voi_merge"] == 0
    assert o["v_rand"] == 1 and o["v_info"] == 1


def test_single_merge(tmp_path):
    # truth {1,1},{2,2}; pred one segment. Together in both: 2*2 ordered pairs, in truth 4, in pred 12:
    # precision 4/12, recall 4/4, F = 2 (1/3) / (4/3) = 1/2 -> error 1/2. H(true | pred) = 1 bit.
    # V_rand = 2 (2^2 + 2^2) / ((2^2 + 2^2) + 4^2) = 16/24; V_info = 2 I / (H_T + H_P) = 0 / (1 + 0).
    o = _instance(tmp_path, [[[5, 5], [5, 5]]])
    assert o["adapted_rand_error"] == pytest.approx(0.5)
    assert o["adapted_rand_precision"] == pytest.approx(1 / 3) and o["adapted_rand_recall"] == pytest.approx(
        1
    )
    assert o["voi_split"] == pytest.approx(0, abs=1e-12) and o["voi_merge"] == pytest.approx(1)
    assert o["v_rand"] == pytest.approx(2 / 3) and o["v_info"] == pytest.approx(0, abs=1e-12)


def test_single_split(tmp_path):
    # truth one cell; pred two halves: the mirror image of the merge.
    o = _instance(tmp_path, [[[5, 5], [6, 6]]], truth=[[[1, 1], [1, 1]]])
    assert o["adapted_rand_error"] == pytest.approx(0.5)
    assert o["adapted_rand_precision"] == pytest.approx(1) and o["adapted_rand_recall"] == pytest.approx(
        1 / 3
    )
    assert o["voi_split"] == pytest.approx(1) and o["voi_merge"] == pytest.approx(0, abs=1e-12)
    assert o["v_rand"] == pytest.approx(2 / 3) and o["v_info"] == pytest.approx(0, abs=1e-12)


def test_all_background_instances(tmp_path):
    # Adapted Rand and VOI count predicted 0 as one segment (= the merge case). V_rand / V_info follow the
    # Fiji script: each background pixel is its own cluster, so H_P = log2 4 = 2 bits, I = H_T = 1 bit:
    # V_rand = 2 * 4 / (8 + 4) = 2/3, V_info = 2 * 1 / (1 + 2) = 2/3.
    o = _instance(tmp_path, [[[0, 0], [0, 0]]])
    assert o["adapted_rand_error"] == pytest.approx(0.5) and o["voi_merge"] == pytest.approx(1)
    assert o["v_rand"] == pytest.approx(2 / 3) and o["v_info"] == pytest.approx(2 / 3)


# --------------------------------------------------------- binary cases, by hand
# One 4 x 5 section; the truth (ISBI convention: 0 membrane, 255 cell) has a membrane in column 2.
MEMBRANE = np.full((1, 4, 5), 255, np.uint8)
MEMBRANE[:, :, 2] = 0


def _binary(tmp_path, prob_membrane, truth=MEMBRANE, **kw):
    _write(tmp_path / "t.zarr", truth, kind="mask")
    _write(tmp_path / "p.zarr", (np.asarray(prob_membrane) * 255).astype(np.uint8), kind="probability")
    return evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", options=EvaluateOptions(foreground=(0,), **kw))


def test_perfect_probabilities(tmp_path):
    o = _binary(tmp_path, MEMBRANE == 0).overall
    assert (o["pixel_error"], o["dice"], o["iou"], o["v_rand"], o["v_info"]) == (0, 1, 1, 1, 1)


def test_all_background_probabilities(tmp_path):
    # No membrane predicted: 4 of 20 pixels wrong, no true positive (Dice = IoU = 0); the two 8-pixel
    # cells merge: V_rand = 2 (64 + 64) / (128 + 256) = 2/3, V_info = 0 (the prediction is one cluster).
    o = _binary(tmp_path, np.zeros(MEMBRANE.shape)).overall
    assert o["pixel_error"] == pytest.approx(0.2) and o["dice"] == 0 and o["iou"] == 0
    assert o["v_rand"] == pytest.approx(2 / 3) and o["v_info"] == pytest.approx(0, abs=1e-12)
    # the challenge's pixel error: all 20 pixels called cell, 16 are: F = 32 / 36
    assert o["pixel_error_isbi"] == pytest.approx(1 - 32 / 36)


def test_binary_split(tmp_path):
    # Truth section 1: one 20-pixel cell; the prediction draws a membrane through it: 4 false positives,
    # two 8-pixel cells and 4 boundary singletons: V_rand = 2 (64 + 64 + 4) / (400 + 132) = 264/532.
    # (Section 0, scored perfectly, holds the membrane: a truth without any is refused.)
    truth = np.concatenate([MEMBRANE, np.full((1, 4, 5), 255, np.uint8)])
    row = _binary(tmp_path, np.tile(MEMBRANE == 0, (2, 1, 1)), truth=truth).sections[1]
    assert row["pixel_error"] == pytest.approx(0.2) and row["dice"] == 0
    assert row["v_rand"] == pytest.approx(264 / 532)


def test_object_convention_flips_the_classes(tmp_path):
    # A model of cells (foreground 255, kind object) scored on the same truth gives the same ISBI scores.
    cell_prob = (MEMBRANE != 0).astype(float)
    r = _binary(tmp_path, cell_prob, foreground_kind="object")
    assert r.foreground_kind == "object"
    o = evaluate(
        tmp_path / "p.zarr",
        tmp_path / "t.zarr",
        options=EvaluateOptions(foreground=(255,), foreground_kind="object"),
    ).overall
    assert (o["pixel_error"], o["dice"], o["v_rand"], o["v_info"]) == (0, 1, 1, 1)


# ---------------------------------------------------- scikit-image on streamed volumes
def _random_cells(shape, n, seed):
    rng = np.random.default_rng(seed)
    from scipy import ndimage as ndi

    seeds = np.zeros(shape, np.uint32)
    idx = tuple(rng.integers(0, s, n) for s in shape)
    seeds[idx] = np.arange(1, n + 1)
    _, ind = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    return seeds[tuple(ind)]


def test_3d_instances_agree_with_scikit_image(tmp_path):
    truth = _random_cells((6, 40, 40), 30, seed=1)
    truth[:, :, :3] = 0  # some background, ignored in the truth
    pred = _random_cells((6, 40, 40), 25, seed=2)
    _labels(tmp_path, "t.zarr", truth, chunks=(2, 16, 16))
    _labels(tmp_path, "p.zarr", pred, chunks=(3, 16, 16))
    opts = EvaluateOptions(instance_mode="3d")
    o = evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", options=opts).overall
    error, precision, recall = adapted_rand_error(truth, pred)
    assert o["adapted_rand_error"] == pytest.approx(error, rel=1e-9)
    # scikit-image names precision and recall the other way round (volseg.core.metrics.AdaptedRand)
    assert o["adapted_rand_precision"] == pytest.approx(recall) and o["adapted_rand_recall"] == pytest.approx(
        precision
    )
    split, merge = variation_of_information(truth, pred, ignore_labels=(0,))
    assert o["voi_split"] == pytest.approx(split, rel=1e-9) and o["voi_merge"] == pytest.approx(
        merge, rel=1e-9
    )


def test_2d_instances_score_each_section_on_its_own(tmp_path):
    truth = _random_cells((3, 30, 30), 12, seed=3)
    pred = truth.copy()
    pred[1] = np.roll(truth[1], 3, axis=1)
    _labels(tmp_path, "t.zarr", truth, chunks=(1, 16, 16))
    _labels(tmp_path, "p.zarr", pred, chunks=(2, 16, 16))
    r = evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", options=EvaluateOptions(instance_mode="2d"))
    offset = (np.arange(3, dtype=np.uint64) * 10_000)[:, None, None]
    error, _, _ = adapted_rand_error(truth + offset, pred + offset)
    assert r.overall["adapted_rand_error"] == pytest.approx(error, rel=1e-9)
    assert [row["section"] for row in r.sections] == [0, 1, 2]
    assert r.sections[0]["adapted_rand_error"] == 0 and r.sections[1]["adapted_rand_error"] > 0


def test_segmentation_against_binary_truth_uses_cells(tmp_path):
    # A binary truth becomes cells (4-connected components of non-membrane pixels) per section.
    truth = np.tile(MEMBRANE, (3, 1, 1))
    _write(tmp_path / "t.zarr", truth, kind="mask")
    cells = np.where(np.arange(5) < 2, 1, 2).astype(np.uint32)[None, None, :].repeat(4, 1).repeat(3, 0)
    _labels(tmp_path, "p.zarr", cells)
    r = evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", options=EvaluateOptions(foreground=(0,)))
    assert r.kind == "instance" and r.overall["adapted_rand_error"] == 0
    assert r.overall["v_rand"] == 1 and r.instance_mode == "2d"


# ------------------------------------------------------------- sections and JSON
def test_sections_and_json(tmp_path):
    truth = np.tile(MEMBRANE, (4, 1, 1))
    prob = np.tile((MEMBRANE == 0).astype(float), (4, 1, 1))
    prob[3] = 0  # the last section is all background
    _write(tmp_path / "t.zarr", truth, chunks=(1, 4, 5), kind="mask")
    _write(tmp_path / "p.zarr", (prob * 255).astype(np.uint8), chunks=(2, 2, 5), kind="probability")
    good = evaluate(
        tmp_path / "p.zarr", tmp_path / "t.zarr", sections="0:3", json_path=tmp_path / "r" / "r.json"
    )
    assert good.sections_scored == [0, 1, 2] and good.overall["dice"] == 1
    stored = json.loads((tmp_path / "r" / "r.json").read_text())
    assert stored["overall"] == good.overall and len(stored["sections"]) == 3
    everything = evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr")
    assert everything.overall["dice"] < 1 and everything.sections[3]["dice"] == 0


def test_result_is_the_json_report(tmp_path):
    _write(tmp_path / "t.zarr", np.tile(MEMBRANE, (2, 1, 1)), kind="mask")
    _write(
        tmp_path / "p.zarr", np.tile((MEMBRANE == 0) * 255, (2, 1, 1)).astype(np.uint8), kind="probability"
    )
    updates = []
    result = evaluate(
        tmp_path / "p.zarr", tmp_path / "t.zarr", json_path=tmp_path / "r.json", progress=updates.append
    )
    stored = json.loads((tmp_path / "r.json").read_text())
    assert stored == result.to_dict() and EvaluateResult.from_dict(stored) == result
    assert list(stored)[-3:] == ["sections", "isbi", "seconds"] and "instance_mode" not in stored
    assert updates[-1].finished and updates[-1].done == updates[-1].total == 2
    _labels(tmp_path, "c.zarr", np.ones((2, *MEMBRANE.shape[1:])))
    cells = evaluate(tmp_path / "c.zarr", tmp_path / "t.zarr").to_dict()
    assert "threshold" not in cells and "isbi" not in cells
    assert list(cells)[-4:] == ["instance_mode", "truth_cells", "counted_pixels", "seconds"]


def test_cli_table_and_json(tmp_path):
    _write(tmp_path / "t.zarr", np.tile(MEMBRANE, (2, 1, 1)), kind="mask")
    _write(
        tmp_path / "p.zarr", np.tile((MEMBRANE == 0) * 255, (2, 1, 1)).astype(np.uint8), kind="probability"
    )
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "p.zarr"),
            str(tmp_path / "t.zarr"),
            "--foreground",
            "0",
            "--sections",
            "1:2",
            "--json",
            str(tmp_path / "report.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "V_rand" in result.stdout and "Dice" in result.stdout and "1.0000" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sections_scored"] == [1] and report["overall"]["v_rand"] == 1


# --------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "case,needle",
    [
        ("shape", "overlap"),
        ("missing", "missing.zarr"),
        ("sections", "--sections"),
        ("foreground", "--foreground"),
    ],
)
def test_bad_inputs_are_one_line_exit_2(tmp_path, case, needle):
    _write(tmp_path / "t.zarr", np.tile(MEMBRANE, (3, 1, 1)), kind="mask")
    _write(tmp_path / "p.zarr", np.zeros((3, 4, 5), np.uint8), kind="probability")
    _write(tmp_path / "small.zarr", np.zeros((2, 4, 5), np.uint8), kind="probability")
    translate(tmp_path / "small.zarr", (3, 0, 0))  # lies beyond the truth's 3 sections
    pred, truth, extra = tmp_path / "p.zarr", tmp_path / "t.zarr", []
    if case == "shape":
        pred = tmp_path / "small.zarr"
    elif case == "missing":
        truth = tmp_path / "missing.zarr"
    elif case == "sections":
        extra = ["--sections", "2:9"]
    else:
        extra = ["--foreground", "membrane"]
    result = runner.invoke(app, ["evaluate", str(pred), str(truth), *extra])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output


def test_api_errors():
    with pytest.raises(OptionError):
        parse_foreground("0,x")
    with pytest.raises(OptionError, match="--instance-mode"):
        EvaluateOptions(instance_mode="4d")


def test_float_truth_is_refused(tmp_path):
    _write(tmp_path / "t.zarr", np.zeros((1, 4, 4), np.float32))
    _write(tmp_path / "p.zarr", np.zeros((1, 4, 4), np.uint8), kind="probability")
    with pytest.raises(InputError, match="integer labels"):
        evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr")


def test_unwritten_sections_of_an_unfinished_run_are_refused(tmp_path):
    _write(tmp_path / "t.zarr", np.tile(MEMBRANE, (2, 1, 1)), kind="mask")
    vol = create_volume(tmp_path / "p.zarr", (2, 4, 5), "uint8", (1, 4, 5), kind="probability")
    vol.write_block((0, 0, 0), (MEMBRANE == 0).astype(np.uint8) * 255)  # section 1 never written
    assert evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", sections="0").overall["dice"] == 1
    with pytest.raises(InputError, match="section 1"):
        evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr")


def test_truth_metadata_names_the_membrane_values(tmp_path):
    # A truth with membrane = 1 (not ISBI's 0), saying so in its metadata as 'volseg synth' does.
    truth = (MEMBRANE == 0).astype(np.uint8)
    _write(tmp_path / "t.zarr", truth, kind="mask", label_convention={"1": "membrane", "0": "cell interior"})
    _write(tmp_path / "p.zarr", truth * 255, kind="probability")
    r = evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr")
    assert r.foreground == [1] and r.overall["dice"] == 1 and r.overall["v_rand"] == 1


# ------------------------------------------------------------ nonsense is refused
def _cli_error(args):
    result = runner.invoke(app, ["evaluate", *map(str, args)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_unwritable_json_report_is_one_line(tmp_path):
    _write(tmp_path / "t.zarr", np.tile(MEMBRANE, (2, 1, 1)), kind="mask")
    _write(
        tmp_path / "p.zarr", np.tile((MEMBRANE == 0) * 255, (2, 1, 1)).astype(np.uint8), kind="probability"
    )
    (tmp_path / "blocker").write_text("a file where the report's folder should be")
    message = _cli_error(
        [tmp_path / "p.zarr", tmp_path / "t.zarr", "--json", tmp_path / "blocker" / "r.json"]
    )
    assert "cannot write the report" in message and "writable" in message


def test_probability_truth_is_refused(tmp_path):
    prob = np.tile((MEMBRANE == 0) * 255, (2, 1, 1)).astype(np.uint8)
    _write(tmp_path / "p.zarr", prob, kind="probability")
    _write(tmp_path / "q.zarr", prob, kind="probability")
    with pytest.raises(InputError, match="probability volume.*TRUTH must be"):
        evaluate(tmp_path / "p.zarr", tmp_path / "q.zarr")
    assert "q.zarr" in _cli_error([tmp_path / "p.zarr", tmp_path / "q.zarr"])


def test_a_volume_against_itself_is_refused(tmp_path):
    _write(tmp_path / "p.zarr", np.tile(MEMBRANE, (2, 1, 1)), kind="mask")
    (tmp_path / "link.zarr").symlink_to(tmp_path / "p.zarr")
    for other in (tmp_path / "p.zarr", tmp_path / "link.zarr"):
        with pytest.raises(InputError, match="same volume"):
            evaluate(tmp_path / "p.zarr", other)
    assert "same volume" in _cli_error([tmp_path / "p.zarr", tmp_path / "p.zarr"])


def test_integer_truth_of_image_or_unknown_kind_is_accepted(tmp_path):
    # labels converted from a TIFF (ISBI train-labels.tif) are recorded as "image" today
    _write(tmp_path / "t.zarr", np.tile(MEMBRANE, (2, 1, 1)), kind="image")
    _write(
        tmp_path / "p.zarr", np.tile((MEMBRANE == 0) * 255, (2, 1, 1)).astype(np.uint8), kind="probability"
    )
    assert evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr").overall["dice"] == 1
    from volseg.storage.volumes import open_volume

    foreign = open_volume(tmp_path / "t.zarr", mode="r+")  # written by another tool: no volseg block
    del foreign.group.attrs["volseg"]
    assert evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr").overall["dice"] == 1


def test_foreground_absent_from_the_scored_truth_is_refused(tmp_path):
    truth = np.tile(MEMBRANE, (3, 1, 1))
    truth[2] = 255  # no membrane in the last section
    _write(tmp_path / "t.zarr", truth, kind="mask")
    _write(tmp_path / "p.zarr", np.zeros(truth.shape, np.uint8), kind="probability")
    _labels(tmp_path, "c.zarr", np.ones(truth.shape))
    for pred in ("p.zarr", "c.zarr"):
        with pytest.raises(InputError, match=r"--foreground value\(s\) \[7\].*\[0, 255\]"):
            evaluate(tmp_path / pred, tmp_path / "t.zarr", options=EvaluateOptions(foreground=(7,)))
        with pytest.raises(InputError, match=r"\[0\].*\[255\]"):
            evaluate(
                tmp_path / pred, tmp_path / "t.zarr", sections="2", options=EvaluateOptions(foreground=(0,))
            )
    message = _cli_error([tmp_path / "p.zarr", tmp_path / "t.zarr", "--foreground", "7"])
    assert "t.zarr" in message and "--foreground" in message and "7" in message
    # sections where it does occur are scored
    assert evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", sections="0:2").sections_scored == [0, 1]


def test_json_report_never_overwrites_an_input(tmp_path):
    _write(tmp_path / "t.zarr", np.tile(MEMBRANE, (2, 1, 1)), kind="mask")
    _write(
        tmp_path / "p.zarr", np.tile((MEMBRANE == 0) * 255, (2, 1, 1)).astype(np.uint8), kind="probability"
    )
    before = (tmp_path / "p.zarr" / "zarr.json").read_bytes()
    from volseg.errors import OutputError

    for target in (tmp_path / "p.zarr" / "zarr.json", tmp_path / "t.zarr", tmp_path / "p.zarr" / "r.json"):
        with pytest.raises(OutputError, match="--json"):
            evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", json_path=target)
    assert (tmp_path / "p.zarr" / "zarr.json").read_bytes() == before
    assert not (tmp_path / "p.zarr" / "r.json").exists()
    assert "--json" in _cli_error([tmp_path / "p.zarr", tmp_path / "t.zarr", "--json", tmp_path / "t.zarr"])


# --------------------------------------------------- placement by OME translation


def _write_placed(path, data, kind, offset=None, voxel_size=(50, 4, 4), chunks=(2, 16, 16)):
    data = np.asarray(data)
    vol = create_volume(path, data.shape, data.dtype, chunks, kind=kind, voxel_size=voxel_size)
    for b in vol.block_ids():
        vol.write_block(b, data[vol.block_region(b)])
    vol.mark_complete()
    return translate(path, offset) if offset is not None else path


def _membrane_truth(shape, n, seed):
    """ISBI-like truth: 0 on the membranes between Voronoi cells, 255 inside them."""
    cells = _random_cells(shape, n, seed)
    from skimage.segmentation import find_boundaries

    membrane = np.stack([find_boundaries(c, mode="inner") for c in cells])
    return np.where(membrane, 0, 255).astype(np.uint8), np.where(membrane, 0, cells).astype(np.uint32)


def _close(a, b):
    for key, value in a.items():
        if isinstance(value, float):
            assert b[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        else:
            assert b[key] == value, key


ROI = ((2, 5), (8, 31), (5, 37))


@pytest.mark.parametrize("truth_kind", ["binary", "label"])
@pytest.mark.parametrize("pred_kind", ["probability", "label"])
def test_roi_prediction_scores_like_the_hand_cropped_truth(tmp_path, pred_kind, truth_kind):
    binary, cells = _membrane_truth((6, 40, 44), 40, seed=5)
    truth = binary if truth_kind == "binary" else cells
    crop = tuple(slice(a, b) for a, b in ROI)
    rng = np.random.default_rng(0)
    if pred_kind == "probability":
        roi = np.clip((binary[crop] == 0) * 200 + rng.integers(0, 60, binary[crop].shape), 0, 255).astype(
            np.uint8
        )
    else:
        roi = _random_cells(tuple(b - a for a, b in ROI), 30, seed=6)
    tkind = "mask" if truth_kind == "binary" else "label"
    _write_placed(tmp_path / "t.zarr", truth, tkind)
    _write_placed(tmp_path / "p.zarr", roi, pred_kind, offset=[a for a, _ in ROI])
    # the reference: the same prediction, unplaced, against the truth cropped by hand
    _write_placed(tmp_path / "tc.zarr", truth[crop], tkind)
    _write_placed(tmp_path / "pc.zarr", roi, pred_kind)
    opts = EvaluateOptions(foreground=(0,))
    placed = evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", options=opts)
    reference = evaluate(tmp_path / "pc.zarr", tmp_path / "tc.zarr", options=opts)
    assert placed.region == {"z": [2, 5], "y": [8, 31], "x": [5, 37]}
    assert placed.sections_scored == [2, 3, 4]
    _close(reference.overall, placed.overall)
    for ref_row, row in zip(reference.sections, placed.sections, strict=True):
        assert row["section"] == ref_row["section"] + 2
        _close({k: v for k, v in ref_row.items() if k != "section"}, row)
    # --sections are the truth's section numbers
    one = evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", options=opts, sections="3")
    ref_one = evaluate(tmp_path / "pc.zarr", tmp_path / "tc.zarr", options=opts, sections="1")
    assert one.sections_scored == [3]
    _close(ref_one.overall, one.overall)
    with pytest.raises(OptionError, match="section 1 .*2:5"):
        evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", options=opts, sections="1:3")


def test_sub_volume_at_offset_zero_is_scored_on_the_overlap(tmp_path):
    binary, _ = _membrane_truth((4, 30, 30), 20, seed=7)
    _write_placed(tmp_path / "t.zarr", binary, "mask")
    _write_placed(tmp_path / "p.zarr", (binary[:2, :20] == 0).astype(np.uint8) * 255, "probability")
    report = evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", options=EvaluateOptions(foreground=(0,)))
    assert report.region == {"z": [0, 2], "y": [0, 20], "x": [0, 30]}
    assert report.overall["dice"] == 1 and report.sections_scored == [0, 1]
    result = runner.invoke(app, ["evaluate", str(tmp_path / "p.zarr"), str(tmp_path / "t.zarr")])
    assert result.exit_code == 0, result.output
    assert "scored the overlap" in " ".join(result.stdout.split())


def test_no_overlap_or_other_voxel_sizes_are_refused(tmp_path):
    binary, _ = _membrane_truth((4, 30, 30), 20, seed=8)
    _write_placed(tmp_path / "t.zarr", binary, "mask")
    prob = np.zeros((2, 10, 10), np.uint8)
    _write_placed(tmp_path / "far.zarr", prob, "probability", offset=(4, 0, 0))
    _write_placed(tmp_path / "side.zarr", prob, "probability", offset=(0, 5, 30))
    _write_placed(tmp_path / "fine.zarr", prob, "probability", offset=(1, 5, 5), voxel_size=(50, 2, 2))
    for name in ("far.zarr", "side.zarr"):
        with pytest.raises(InputError, match="does not overlap"):
            evaluate(tmp_path / name, tmp_path / "t.zarr")
        assert "overlap" in _cli_error([tmp_path / name, tmp_path / "t.zarr"])
    with pytest.raises(InputError, match="voxel size"):
        evaluate(tmp_path / "fine.zarr", tmp_path / "t.zarr")
    _write_placed(tmp_path / "half.zarr", prob, "probability", offset=(0, 0.5, 0))
    with pytest.raises(InputError, match="whole number of voxels"):
        evaluate(tmp_path / "half.zarr", tmp_path / "t.zarr")


def test_voxel_offset_reads_the_translation(tmp_path):
    from volseg.stages.evaluate import voxel_offset
    from volseg.storage.volumes import open_volume

    _write_placed(tmp_path / "a.zarr", np.zeros((2, 8, 8), np.uint8), "probability", offset=(3, 10, 20))
    _write_placed(tmp_path / "b.zarr", np.zeros((2, 8, 8), np.uint8), "probability")
    assert voxel_offset(open_volume(tmp_path / "a.zarr")) == (3, 10, 20)
    assert voxel_offset(open_volume(tmp_path / "b.zarr")) == (0, 0, 0)
    # malformed metadata is one line, not a traceback
    vol = open_volume(tmp_path / "b.zarr", mode="r+")
    ome = vol.group.attrs["ome"]
    for bad, needle in (
        ([{"type": "scale", "scale": [0, 4, 4]}], "scale"),
        (
            [{"type": "scale", "scale": [50, 4, 4]}, {"type": "translation", "translation": [1, 2]}],
            "translation",
        ),
        ("nonsense", "multiscales metadata is damaged"),
    ):
        ome["multiscales"][0]["datasets"][0]["coordinateTransformations"] = bad
        vol.group.attrs.update({"ome": ome})
        with pytest.raises(InputError, match=needle):
            voxel_offset(open_volume(tmp_path / "b.zarr"))


def _unplaced_copy(src, dst):
    """A copy of a volume without its OME translation: the reference of a placed evaluation."""
    import shutil

    from volseg.storage.volumes import open_volume

    shutil.copytree(src, dst)
    vol = open_volume(dst, mode="r+")
    ome = dict(vol.group.attrs["ome"])
    for dataset in ome["multiscales"][0]["datasets"]:
        dataset["coordinateTransformations"] = [
            t for t in dataset["coordinateTransformations"] if t["type"] != "translation"
        ]
    vol.group.attrs.update({"ome": ome})
    return dst


def test_predict_roi_then_segment_then_evaluate_against_the_whole_truth(tmp_path):
    from predict_support import em_like, unet_file, write_volume

    from volseg.stages.predict import predict
    from volseg.stages.segment import segment

    image = em_like((4, 64, 80), seed=2)
    write_volume(tmp_path / "img.zarr", image, (2, 32, 32))
    binary, _ = _membrane_truth((4, 64, 80), 25, seed=9)
    _write_placed(tmp_path / "t.zarr", binary, "mask")
    model = unet_file(tmp_path / "model.pt")
    predict(model, tmp_path / "img.zarr", tmp_path / "p.zarr", roi="1:3,8:56,16:72")
    segment(tmp_path / "p.zarr", tmp_path / "c.zarr")
    _write_placed(tmp_path / "tc.zarr", binary[1:3, 8:56, 16:72], "mask")
    for name in ("p", "c"):
        _unplaced_copy(tmp_path / f"{name}.zarr", tmp_path / f"{name}_ref.zarr")
        placed = evaluate(tmp_path / f"{name}.zarr", tmp_path / "t.zarr")
        reference = evaluate(tmp_path / f"{name}_ref.zarr", tmp_path / "tc.zarr")
        assert placed.region == {"z": [1, 3], "y": [8, 56], "x": [16, 72]}, name
        assert placed.kind == ("binary" if name == "p" else "instance")
        _close(reference.overall, placed.overall)
        assert [r["section"] for r in placed.sections] == [1, 2]
    result = runner.invoke(app, ["evaluate", str(tmp_path / "c.zarr"), str(tmp_path / "t.zarr")])
    assert result.exit_code == 0, result.output
    assert "scored the overlap z 1:3, y 8:56, x 16:72" in " ".join(result.stdout.split())


def test_json_url_is_refused_not_taken_as_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "t.zarr", np.tile(MEMBRANE, (2, 1, 1)), kind="mask")
    _write(
        tmp_path / "p.zarr", np.tile((MEMBRANE == 0) * 255, (2, 1, 1)).astype(np.uint8), kind="probability"
    )
    with pytest.raises(InputError, match="is a URL"):
        evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", json_path="s3://bucket/r.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr", "t.zarr"]


def test_a_raw_image_as_prediction_is_refused(tmp_path):
    from typer.testing import CliRunner

    from volseg.app.cli import app
    from volseg.storage.volumes import create_volume

    paths = []
    for name, kind in (("img.zarr", "image"), ("truth.zarr", "label")):
        vol = create_volume(tmp_path / name, (1, 16, 16), "uint8", (1, 16, 16), kind=kind)
        vol.write_block((0, 0, 0), (np.arange(256).reshape(1, 16, 16) % 2 * 255).astype(np.uint8))
        vol.mark_complete()
        paths.append(str(tmp_path / name))
    result = CliRunner().invoke(app, ["evaluate", *paths, "--foreground", "0"])
    assert result.exit_code == 2 and "is an image (raw EM) volume, but evaluate's PRED" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------- CREMI score, 3-D scores, worst objects
# Two sections of the same 2 x 4 pattern: truth cell 1 is split into segments 5 and 6; truth cells 2
# and 3 are merged into segment 7. Every object spans both sections (3-D ids).
SPLIT_MERGE_TRUTH = [[[1, 1, 2, 2], [1, 1, 3, 3]]] * 2
SPLIT_MERGE_PRED = [[[5, 5, 7, 7], [6, 6, 7, 7]]] * 2


def test_cremi_score_and_worst_objects_by_hand(tmp_path):
    # N = 16. VOI split = 8/16 * 1 bit (cell 1 halved), VOI merge = 8/16 * 1 bit (segment 7).
    # CREMI's ARAND counts pairs as n^2: truth 64 + 16 + 16, prediction 16 + 16 + 64, joint 4 * 16:
    # P = R = 2/3, ARAND 1/3, CREMI = sqrt(1/3 * 1).
    _labels(tmp_path, "t.zarr", SPLIT_MERGE_TRUTH, chunks=(1, 2, 4))
    _labels(tmp_path, "p.zarr", SPLIT_MERGE_PRED, chunks=(1, 2, 2))
    r = evaluate(
        tmp_path / "p.zarr",
        tmp_path / "t.zarr",
        EvaluateOptions(instance_mode="3d"),
        json_path=tmp_path / "r.json",
    )
    o = r.overall
    assert o["cremi_score"] == pytest.approx(np.sqrt(1 / 3)) and o[
        "cremi_adapted_rand_error"
    ] == pytest.approx(1 / 3)
    assert o["voi_split"] == pytest.approx(0.5) and o["voi_merge"] == pytest.approx(0.5)
    assert r.sections[1]["cremi_score"] == pytest.approx(np.sqrt(1 / 3))
    splits, merges = r.objects["splits"], r.objects["merges"]
    assert (splits["objects"], splits["split_objects"], splits["not_listed"]) == (3, 1, 0)
    assert splits["listed"] == [
        {
            "id": 1,
            "voxels": 8,
            "segments": 2,
            "voi_split": pytest.approx(0.5),
            "largest_fraction": 0.5,
            "largest_id": 5,
            "bbox": {"z": [0, 2], "y": [0, 2], "x": [0, 2]},
        }
    ]
    assert (merges["objects"], merges["merge_objects"]) == (3, 1)
    assert [m["id"] for m in merges["listed"]] == [7] and merges["listed"][0]["truth_objects"] == 2
    assert merges["listed"][0]["bbox"] == {"z": [0, 2], "y": [0, 2], "x": [2, 4]}
    assert json.loads((tmp_path / "r.json").read_text())["objects"] == json.loads(json.dumps(r.objects))
    # 2-D scoring: each section's cell 1 is its own object, named by its own id, found by its box
    two_d = evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", EvaluateOptions(instance_mode="2d"))
    listed = two_d.objects["splits"]["listed"]
    assert [(s["id"], s["largest_id"], s["bbox"]["z"]) for s in listed] == [(1, 5, [0, 1]), (1, 5, [1, 2])]
    assert [m["id"] for m in two_d.objects["merges"]["listed"]] == [7, 7]
    assert evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", EvaluateOptions(objects=0)).objects is None


def test_streamed_3d_scores_of_a_synth_truth_equal_the_whole_volume(tmp_path):
    from scipy import ndimage as ndi

    from volseg.core.metrics import Contingency
    from volseg.stages.synth import synth

    out = synth(tmp_path / "s", shape=(6, 48, 56), seed=3, chunks=(2, 24, 24))
    truth = np.asarray(open_volume(out.cells).array[:])
    # a prediction that merges two cells, splits one across z and shifts the rest a little
    pred = np.roll(truth, 2, axis=2).astype(np.uint32)
    ids = np.unique(truth)
    pred[pred == ids[1]] = ids[2]
    pred[3:][pred[3:] == ids[3]] = 10_000
    pred = ndi.grey_dilation(pred, size=(1, 2, 1))
    _labels(tmp_path, "p.zarr", pred, chunks=(4, 20, 20))
    r = evaluate(tmp_path / "p.zarr", out.cells, EvaluateOptions(instance_mode="3d", objects=3))
    whole = Contingency(ignore_labels=()).add(truth, pred)  # the synth truth has no background
    assert r.overall["cremi_score"] == pytest.approx(whole.cremi().score, rel=1e-12)
    assert r.overall["v_rand"] == pytest.approx(whole.v_rand(), rel=1e-12)
    error, _, _ = adapted_rand_error(truth, pred, ignore_labels=())
    split, merge = variation_of_information(truth, pred)
    assert r.overall["adapted_rand_error"] == pytest.approx(error, rel=1e-9)
    assert (r.overall["voi_split"], r.overall["voi_merge"]) == pytest.approx((split, merge), rel=1e-9)
    splits = r.objects["splits"]
    assert len(splits["listed"]) == 3 and splits["not_listed"] == splits["split_objects"] - 3
    voi = [s["voi_split"] for s in splits["listed"]]
    assert voi == sorted(voi, reverse=True)
    worst = whole.objects("true")
    assert [s["id"] for s in splits["listed"]] == worst.labels[:3].tolist()
    box = splits["listed"][0]["bbox"]
    where = np.nonzero(truth == splits["listed"][0]["id"])
    assert box == {ax: [int(w.min()), int(w.max()) + 1] for ax, w in zip("zyx", where, strict=True)}
    assert any(m["id"] == ids[2] and m["truth_objects"] >= 2 for m in r.objects["merges"]["listed"])


def test_cli_prints_the_cremi_score_and_the_worst_objects(tmp_path):
    _labels(tmp_path, "t.zarr", SPLIT_MERGE_TRUTH)
    _labels(tmp_path, "p.zarr", SPLIT_MERGE_PRED)
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "p.zarr"), str(tmp_path / "t.zarr"), "--instance-mode", "3d"]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "CREMI" in text and f"{np.sqrt(1 / 3):.4f}" in text
    assert "worst split: truth object 1 (8 voxels, 2 segments" in text and "z 0:2, y 0:2, x 0:2" in text
    assert "worst merge: segment 7 (8 voxels, 2 truth objects" in text
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "p.zarr"),
            str(tmp_path / "t.zarr"),
            "--objects",
            "0",
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code == 0 and "worst" not in result.stdout
    assert "objects" not in json.loads((tmp_path / "r.json").read_text())
