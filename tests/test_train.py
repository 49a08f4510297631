"""Training: it learns, resumes exactly, checkpoints atomically, stops cleanly, and refuses bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import support
import torch
from typer.testing import CliRunner

from volseg.app.cli import app
from volseg.core.augment import AugmentConfig
from volseg.core.progress import Update
from volseg.errors import InputError, OptionError, OutputError
from volseg.nn.inference import InferOptions, infer_image
from volseg.nn.modelfile import load_model, read_model_file
from volseg.nn.unet import UNetConfig
from volseg.stages.synth import synth_block
from volseg.stages.train import (
    TrainConfig,
    TrainingInterrupted,
    load_config_file,
    lr_factor,
    parse_duration,
    resolve_config,
    train,
    validation_metrics,
)
from volseg.stages.train.config import option_default, option_names, write_config_toml

runner = CliRunner()
SHAPE = (8, 96, 96)
# A tiny, fast model and run; fp32 on CPU so that runs are bitwise reproducible.
TINY = dict(
    patch_size=64, batch_size=4, base_channels=6, depth=2, val_slices="6:8", device="cpu", precision="fp32",
    workers=0, augment="light", lr=3e-3, warmup_steps=5,
)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models gain nothing from more threads, and the test machine's cores are shared
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_volume(path: Path, data: np.ndarray, kind: str = "image") -> Path:
    return support.write_volume(path, data, (1, 48, 48), kind)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    image, _, membranes = synth_block(SHAPE, seed=3)
    return {
        "root": root,
        "image": write_volume(root / "image.zarr", image),
        "labels": write_volume(root / "labels.zarr", membranes, "label"),
    }


def run(data, out: Path, **kw):
    return train(image=str(data["image"]), labels=str(data["labels"]), output=str(out), **{**TINY, **kw})


def steps_of(log: Path) -> list[dict]:
    return [r for r in map(json.loads, log.read_text().splitlines()) if r["kind"] == "step"]


# ------------------------------------------------------------------ it learns
def test_loss_falls_and_dice_beats_the_trivial_baseline(data, tmp_path):
    result = run(data, tmp_path / "m.pt", steps=80, val_every=40)
    losses = [r["loss"] for r in steps_of(result.log)]
    assert len(losses) == 80
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    truth = np.asarray(read_model_file(result.model)["extra"]["val_sections"])
    assert truth.tolist() == [6, 7]
    _, _, membranes = synth_block(SHAPE, seed=3)
    p = float((membranes[6:8] == 0).mean())
    # predicting "membrane" everywhere gives Dice 2p / (1 + p); "nothing" gives 0 and pixel error p
    assert result.metrics["dice"] > 2 * p / (1 + p) + 0.1
    assert result.metrics["pixel_error_best"] < p
    assert 0.0 <= result.metrics["v_rand"] <= 1.0 and result.best_step in (40, 80)
    # the outputs a user looks at
    assert result.curves.stat().st_size > 10_000 and result.config_file.exists()
    vals = [r for r in map(json.loads, result.log.read_text().splitlines()) if r["kind"] == "val"]
    assert [v["step"] for v in vals] == [40, 80]
    model = load_model(result.model)
    meta = model.volseg_meta
    assert meta["foreground"] == [0] and meta["normalization"]["mode"] == "meanstd"
    assert meta["train_config"]["steps"] == 80 and "membrane probability = p" in meta["label_convention"]
    assert meta["convention"]["foreground"] == [0] and meta["convention"]["foreground_kind"] == "boundary"
    plain = json.loads(json.dumps(result.to_dict()))
    assert (
        plain["steps"] == 80
        and plain["model"] == str(result.model)
        and plain["config"]["model"]["depth"] == 2
    )
    assert 0.0 <= result.data_wait_fraction < 1.0 and result.steps_per_second > 0
    # validation scores what predict gives: the best model through infer_image on the held-out sections
    image, _, _ = synth_block(SHAPE, seed=3)
    prob = infer_image(model, image[6:8], InferOptions(precision="fp32"), meta["normalization"])
    assert validation_metrics(prob, membranes[6:8] == 0, "boundary") == result.metrics


# ------------------------------------------------------------------ exact resume
def interrupt_at(step: int):
    def on_step(s: int, loss: float) -> None:
        if s == step:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, handled at the end of the step

    return on_step


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact(data, tmp_path, workers):
    options = dict(steps=20, val_every=7, dropout=0.2, augment="default")  # validations at 7, 14, 20
    straight = run(data, tmp_path / "a.pt", **options)
    with pytest.raises(TrainingInterrupted) as info:
        run(data, tmp_path / "b.pt", workers=workers, on_step=interrupt_at(10), **options)
    assert info.value.step == 10 and "--resume" in str(info.value)
    assert read_model_file(tmp_path / "b.last.pt")["training_state"]["step"] == 10
    resumed = run(data, tmp_path / "b.pt", workers=workers, resume=True, **options)
    assert resumed.steps == 20
    a, b = read_model_file(straight.last), read_model_file(resumed.last)
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    for key, state in a["training_state"]["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["training_state"]["optimizer"]["state"][key][name])
    assert a["metrics"] == b["metrics"]
    assert [r["step"] for r in steps_of(resumed.log)] == list(range(1, 21))
    assert [r["loss"] for r in steps_of(resumed.log)] == [r["loss"] for r in steps_of(straight.log)]


def test_resume_refuses_changed_options_and_missing_checkpoint(data, tmp_path):
    with pytest.raises(Exception, match="no checkpoint"):
        run(data, tmp_path / "none.pt", resume=True)
    run(data, tmp_path / "m.pt", steps=2, val_every=2)
    with pytest.raises(OptionError, match="--lr 0.5 differs from the checkpoint's 0.003"):
        run(data, tmp_path / "m.pt", steps=4, resume=True, lr=0.5)
    with pytest.raises(OptionError, match="--depth 3 differs from the checkpoint's 2"):
        run(data, tmp_path / "m.pt", steps=4, resume=True, depth=3)
    with pytest.raises(OptionError, match="augment p_noise 0.0 differs from the checkpoint's 0.2"):
        run(data, tmp_path / "m.pt", steps=4, resume=True, augment_prob="noise=0")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        run(data, tmp_path / "m.pt", steps=2)


# ------------------------------------------------------------------ checkpoints
def test_a_failed_save_leaves_the_previous_checkpoint(data, tmp_path, monkeypatch):
    first = run(data, tmp_path / "m.pt", steps=4, val_every=4)
    before = first.last.read_bytes()

    real_replace = os.replace

    def broken_replace(src, dst):
        if str(dst).endswith(".pt"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr("volseg.storage.files.os.replace", broken_replace)
    with pytest.raises(OutputError, match="No space left on device.*previous file, if any, is intact"):
        run(data, tmp_path / "m.pt", steps=8, val_every=2, resume=True)
    monkeypatch.undo()
    assert first.last.read_bytes() == before
    assert read_model_file(first.last)["training_state"]["step"] == 4
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def cli_args(data, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "volseg", "train", str(data["image"]), str(data["labels"]), "-o", str(out),
        "--patch-size", "64", "--batch-size", "4", "--base-channels", "6", "--depth", "2",
        "--val-slices", "6:8", "--device", "cpu", "--workers", "0", "--no-progress", *extra,
    ]  # fmt: skip


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def wait_for_steps(log: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if log.exists() and sum(1 for line in log.read_text().splitlines() if '"kind": "step"' in line) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.communicate()}")
        time.sleep(0.05)
    pytest.fail("training did not start in time")


def test_ctrl_c_saves_and_exits_130_then_kill_9_leaves_a_loadable_checkpoint(data, tmp_path):
    out = tmp_path / "m.pt"
    log = tmp_path / "m.log.jsonl"
    proc = subprocess.Popen(
        cli_args(data, out, "--steps", "100000", "--val-every", "3"),
        stderr=subprocess.PIPE,
        text=True,
        env=ONE_THREAD,
    )
    wait_for_steps(log, 5, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted at step" in lines[0] and "--resume" in lines[0], err
    step = read_model_file(tmp_path / "m.last.pt")["training_state"]["step"]
    assert step >= 5

    proc = subprocess.Popen(
        cli_args(data, out, "--resume", "--val-every", "1"), stderr=subprocess.PIPE, text=True, env=ONE_THREAD
    )
    wait_for_steps(log, step + 4, proc)
    proc.kill()  # kill -9, quite likely while a checkpoint is written (one per step here)
    proc.wait(timeout=30)
    state = read_model_file(tmp_path / "m.last.pt")["training_state"]
    assert state["step"] >= step
    load_model(tmp_path / "m.last.pt")
    load_model(out)


# ------------------------------------------------------------------ options and config
def test_config_file_and_command_line_override(data, tmp_path):
    config = tmp_path / "train.toml"
    config.write_text(
        f'image = "{data["image"]}"\nlabels = "{data["labels"]}"\npatch-size = 64\nbatch_size = 2\n'
        'base_channels = 4\ndepth = 2\nsteps = 50\nlr = 0.002\nval_slices = "6:8"\nforeground = [0]\n'
        'device = "cpu"\nprecision = "fp32"\nprogress = false\naugment = "none"\n'
    )
    out = tmp_path / "m.pt"
    result = runner.invoke(
        app, ["train", "-o", str(out), "--config", str(config), "--steps", "3", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "3 steps" in result.stdout and "V_rand" in result.stdout
    saved = read_model_file(out)["train_config"]
    assert (
        saved["steps"] == 3
        and saved["lr"] == 0.002
        and saved["batch_size"] == 2
        and TrainConfig(augment=saved["augment"]).augment == AugmentConfig.preset("none")
        and saved["model"]["base_channels"] == 4
    )
    resolved = load_config_file(tmp_path / "m.config.toml")
    assert resolved["steps"] == 3 and resolved["patch_size"] == 64 and resolved["foreground"] == [0]
    assert TrainConfig(**resolved) == TrainConfig(**{**saved, "overwrite": False, "resume": False})


def test_other_losses_context_and_objects_train(data, tmp_path):
    for i, kw in enumerate(
        [
            dict(loss="weighted_bce"),
            dict(loss="dice", context=1),
            dict(loss="bce", foreground_kind="object", foreground=(255,), min_foreground=0.5),
        ]
    ):
        result = run(data, tmp_path / f"m{i}.pt", steps=3, val_every=3, **kw)
        assert result.steps == 3 and np.isfinite(result.metrics["v_rand"])


def test_time_limit_and_schedule():
    assert parse_duration("20m") == 1200 and parse_duration("1h30m") == 5400
    assert parse_duration("45s") == 45 and parse_duration("90") == 90 and parse_duration(2.5) == 2.5
    for bad in ("soon", "-5", "0", "1x"):
        with pytest.raises(OptionError, match="--time-limit"):
            parse_duration(bad)
    assert lr_factor(0, 0.0, 10) == pytest.approx(0.1)
    assert lr_factor(9, 0.0, 10) == pytest.approx(1.0)
    assert lr_factor(50, 0.5, 10) == pytest.approx(0.5)
    assert lr_factor(99, 1.0, 10) == pytest.approx(0.0)


def test_time_limit_ends_the_run(data, tmp_path):
    result = run(data, tmp_path / "m.pt", time_limit="2s", val_every=1000)
    assert result.steps > 0 and result.seconds < 30 and result.metrics
    steps = steps_of(result.log)
    # stopped once the budget was used (the log rounds to ms: 1.9996 s is written 2.0)
    assert steps[-1]["time"] >= 2.0 >= steps[-2]["time"]
    assert steps[-1]["lr"] < max(r["lr"] for r in steps)  # the cosine runs over the time budget


# ------------------------------------------------------------------ bad input
def bad_line(args: list[str]) -> str:
    result = runner.invoke(app, ["train", *args, "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("volseg: error:") and "Traceback" not in result.output
    return lines[0]


def test_bad_input_is_one_line_exit_2(data, tmp_path):
    root = data["root"]
    img, lab = str(data["image"]), str(data["labels"])
    out = str(tmp_path / "m.pt")

    def bad(args: list[str]) -> str:
        return bad_line([*args, "--patch-size", "64", "--depth", "2"])

    assert "no such volume" in bad([str(root / "missing.zarr"), lab, "-o", out])
    assert "no such volume" in bad([img, str(root / "missing.zarr"), "-o", out])
    small = write_volume(tmp_path / "small.zarr", np.zeros((8, 64, 96), np.uint8), "label")
    assert "differs from image shape" in bad([img, str(small), "-o", out])
    empty = write_volume(tmp_path / "empty.zarr", np.full(SHAPE, 255, np.uint8), "label")
    assert "empty label volume" in bad([img, str(empty), "-o", out])
    assert "outside the declared --label-values" in bad([img, lab, "-o", out, "--label-values", "0,1"])
    assert "no pixel holds a --foreground value [3]" in bad([img, lab, "-o", out, "--foreground", "3"])
    assert "leaves none for training" in bad([img, lab, "-o", out, "--val-slices", "0:8"])
    too_big = [img, lab, "-o", out, "--patch-size", "128", "--depth", "2"]
    assert "use --patch-size 96 or less" in bad_line(too_big)
    assert "use 48 or 64" in bad_line([img, lab, "-o", out, "--patch-size", "50", "--depth", "4"])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "choose a writable location" in bad([img, lab, "-o", str(blocker / "m.pt")])
    config = tmp_path / "bad.toml"
    config.write_text("patch_size = 64\nlearning_rate = 0.1\n")
    assert "unknown key 'learning_rate'" in bad([img, lab, "-o", out, "--config", str(config)])
    assert "--time-limit" in bad([img, lab, "-o", out, "--time-limit", "soon"])
    assert "--augment-prob" in bad([img, lab, "-o", out, "--augment-prob", "wobble=1"])
    assert not Path(out).exists()


def test_validation_metrics_read_boundaries_and_objects():
    _, _, membranes = synth_block((2, 64, 64), seed=1)
    membrane = membranes == 0
    perfect = validation_metrics(membrane.astype(np.float32), membrane, "boundary")
    assert perfect["v_rand"] == perfect["v_info"] == perfect["dice"] == 1.0 and perfect["pixel_error"] == 0.0
    cells = ~membrane  # the same truth, with the cells as the positive class
    objects = validation_metrics(cells.astype(np.float32), cells, "object")
    assert objects["v_rand"] == objects["v_info"] == 1.0
    inverted = validation_metrics(cells.astype(np.float32), membrane, "boundary")
    assert inverted["pixel_error"] == 1.0 and inverted["v_rand"] < 0.5


# ------------------------------------------------------------------ configs from their annotations
def test_flat_keys_and_nested_tables_are_one_config(tmp_path):
    flat = tmp_path / "flat.toml"
    flat.write_text(
        'base_channels = 4\ndepth = 2\naugment = "heavy"\naugment_prob = "noise=0"\nprogress = false\n'
    )
    nested = tmp_path / "nested.toml"
    nested.write_text('[model]\nbase-channels = 4\ndepth = 2\n\n[augment]\npreset = "heavy"\np_noise = 0.0\n')
    a, b = resolve_config(file=flat), resolve_config(file=nested)
    assert a == b and a.model == UNetConfig(base_channels=4, depth=2)
    assert a.augment == AugmentConfig.preset("heavy").with_probabilities({"noise": 0.0})
    assert load_config_file(flat)["progress"] is False  # the CLI's business, not an option of the run
    # later layers win key by key inside a table; a preset replaces the whole table
    c = resolve_config(None, nested, depth=3, augment_prob="elastic=0")
    assert (c.model.depth, c.model.base_channels, c.augment.p_elastic, c.augment.p_noise) == (3, 4, 0.0, 0.0)
    assert resolve_config(None, nested, augment="light").augment == AugmentConfig.preset("light")
    assert resolve_config(TrainConfig(augment="light"), None, base_channels=8).augment.p_noise == 0.2
    # the resolved config written as TOML reads back to the same config
    write_config_toml(c, tmp_path / "c.toml")
    assert TrainConfig(**load_config_file(tmp_path / "c.toml")) == c
    # values are coerced from the dataclasses' annotations
    coerced = TrainConfig(foreground="0,255", lr="0.01", patch_size=128.0, model={"dropout": 0})
    assert coerced.foreground == (0, 255) and coerced.lr == 0.01 and coerced.patch_size == 128
    assert coerced.model.dropout == 0.0 and isinstance(coerced.model.dropout, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model = 5", "model 5: expected a table of UNetConfig fields"),
        ("[model]\nseed = 1", "model: unknown key 'seed'; known keys are base_channels"),
        ("depth = 2\n[model]\ndepth = 3", "depth is given twice"),
        ('depth = "deep"', "--depth 'deep': expected an integer"),
        ("[model]\nout_channels = 2", "training makes a binary model"),
        ("[model]\ndepth = 9", "model depth=9: use 1..8"),
        ("augment = 5", "--augment 5: expected a preset name or a table of AugmentConfig fields"),
        ('augment = "wild"', "--augment 'wild': unknown preset"),
        ('[augment]\np_noise = "x"', "augment p_noise 'x': expected a number"),
        ("[augment]\nscale_range = [1]", r"augment scale_range \[1\]: expected a list of 2 numbers"),
        ("[augment]\np_noise = 2.0", "augmentation probability noise=2.0"),
        ("progress = 3", "--progress 3: expected true or false"),
        ("overwrite = 1", "--overwrite 1: expected true or false"),
        ('foreground = "a"', "--foreground 'a': expected comma-separated integers"),
        ("patch_size = 1.5", "--patch-size 1.5: expected an integer"),
    ],
)
def test_bad_config_values_are_one_line(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    with pytest.raises(OptionError, match=message):
        resolve_config(file=config)


def test_cli_defaults_are_the_dataclasses():
    """Each train option's default (typer's, or its help's ``[default: X]``) is TrainConfig's."""
    import enum
    import re

    import typer.main

    command = typer.main.get_command(app).commands["train"]
    checked, different = [], []
    for param in command.params:
        if param.name not in option_names():
            continue
        expected = option_default(param.name)
        written = re.search(r"\[default: ([^\]]+)\]", param.help or "")
        if param.default is not None:
            shown = param.default.value if isinstance(param.default, enum.Enum) else param.default
            ok = shown == expected and not written  # declared once in the command
        elif written:  # options whose default the CLI cannot hold (a tuple, a preset, steps unless a limit)
            text = ",".join(map(str, expected)) if isinstance(expected, tuple) else str(expected)
            ok = written.group(1).split(" unless ")[0] == text
        else:
            ok = expected is None or isinstance(expected, bool)
        checked.append(param.name)
        if not ok:
            different.append(param.name)
    assert different == [] and len(checked) >= 28
    assert option_default("depth") == UNetConfig().depth and option_default("augment") == "default"


def test_val_slices_take_the_section_grammar(data, tmp_path, monkeypatch):
    """--val-slices 0:8:4 (steps, as --sections takes them) trains; a figure that fails only warns."""

    def no_figure(log, png):
        raise RuntimeError("no display")

    monkeypatch.setattr("volseg.storage.curves.plot_curves", no_figure)
    out = tmp_path / "m.pt"
    args = cli_args(data, out, "--steps", "2", "--val-every", "2", "--precision", "fp32")[3:]
    args[args.index("6:8")] = "0:8:4"
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert read_model_file(out)["extra"]["val_sections"] == [0, 4]
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert warnings and all(line.startswith("volseg: warning: could not draw") for line in warnings)
    with pytest.raises(OptionError, match="--val-slices '0:9': range 0:9 reaches outside"):
        run(data, tmp_path / "n.pt", steps=1, val_slices="0:9")
    assert not (tmp_path / "n.pt").exists()


def test_progress_reports_steps_with_loss_and_lr(data, tmp_path):
    updates: list[Update] = []
    run(data, tmp_path / "m.pt", steps=3, val_every=3, progress=updates.append)
    assert {u.task for u in updates} == {"train"} and updates[-1].finished
    steps = [u for u in updates if u.done > 0 and not u.finished]
    assert [u.done for u in steps] == [1, 2, 3] and all(u.total == 3 and u.unit == "steps" for u in steps)
    assert all({"loss", "lr", "steps/s"} <= set(u.info) for u in steps)
    with pytest.raises(InputError, match="no checkpoint"):
        run(data, tmp_path / "none.pt", resume=True, progress=updates.append)


def test_sigterm_saves_an_exact_checkpoint_exits_75_and_resumes(data, tmp_path):
    from volseg.core.preempt import PREEMPTED_EXIT

    out, log = tmp_path / "m.pt", tmp_path / "m.log.jsonl"
    proc = subprocess.Popen(
        cli_args(data, out, "--steps", "60", "--val-every", "50"), stderr=subprocess.PIPE, text=True,
        env=ONE_THREAD,
    )  # fmt: skip
    wait_for_steps(log, 4, proc)
    proc.send_signal(signal.SIGTERM)  # what SLURM sends at the time limit or on preemption
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == PREEMPTED_EXIT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "stopped by SIGTERM at step" in lines[0] and "--resume" in lines[0], err
    step = read_model_file(tmp_path / "m.last.pt")["training_state"]["step"]
    assert 4 <= step < 60
    assert [r["step"] for r in steps_of(log)] == list(range(1, step + 1))  # the log ends at the checkpoint
    resumed = subprocess.run(
        cli_args(data, out, "--resume", "--steps", "60", "--val-every", "50"),
        capture_output=True, text=True, env=ONE_THREAD,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert read_model_file(tmp_path / "m.last.pt")["training_state"]["step"] == 60
