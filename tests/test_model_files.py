"""Model files that are damaged, foreign or unsafe end in one ModelError line, never a traceback."""

from __future__ import annotations

import io
import os
import pathlib
import warnings
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from volseg.app.cli import app
from volseg.errors import ModelError, OptionError
from volseg.nn.intensity import normalize
from volseg.nn.modelfile import FORMAT, FORMAT_VERSION, load_model, read_model_file, save_model
from volseg.nn.unet import UNet, UNetConfig
from volseg.storage.conventions import Convention, legacy_convention
from volseg.storage.volumes import create_volume

runner = CliRunner()
NORM = {"mode": "meanstd", "mean": 120.0, "std": 30.0}


def _model_bytes(tmp_path: pathlib.Path) -> tuple[bytes, bytes, dict]:
    """A real tiny model file, the same payload in torch's legacy (non-zip) format, and the payload."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=2, depth=1, convs_per_level=1)).eval()
    path = save_model(
        tmp_path / "real.pt",
        model,
        normalization=NORM,
        convention=Convention(foreground=(0,), foreground_kind="boundary"),
        provenance={"sources": ["a.tif"]},
        metrics={"val_dice": 0.5},
        train_config={"steps": 3},
    )
    payload = torch.load(path, weights_only=True)
    legacy = io.BytesIO()
    torch.save(payload, legacy, _use_new_zipfile_serialization=False)
    return path.read_bytes(), legacy.getvalue(), payload


def _garbage_zip(real: bytes, rng: np.random.Generator) -> bytes:
    """The real archive with one member replaced by random bytes (or all members random)."""
    with zipfile.ZipFile(io.BytesIO(real)) as source:
        members = [(info.filename, source.read(info)) for info in source.infolist()]
    victim = int(rng.integers(len(members)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for i, (name, data) in enumerate(members):
            if i == victim or rng.random() < 0.2:
                data = rng.bytes(int(rng.integers(0, 2 * len(data) + 2)))
            z.writestr(name, data)
    return out.getvalue()


def _fuzz_case(i: int, real: bytes, legacy: bytes, rng: np.random.Generator) -> bytes:
    source = real if i % 2 else legacy
    kind = (i // 2) % 5
    if kind == 0:  # random bytes, sometimes behind a header that makes torch look further
        head = [b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x02\x8a\n"][int(rng.integers(4))]
        return head + rng.bytes(int(rng.integers(0, 600)))
    if kind == 1:  # truncated
        return source[: int(rng.integers(1, len(source)))]
    if kind == 2:  # a few bytes changed anywhere
        data = bytearray(source)
        for _ in range(int(rng.integers(1, 8))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        return bytes(data)
    if kind == 3:  # a run of bytes deleted or inserted
        at = int(rng.integers(len(source)))
        cut = int(rng.integers(1, 40))
        return source[:at] + (rng.bytes(cut) if rng.random() < 0.5 else b"") + source[at + cut :]
    return _garbage_zip(real, rng)


def test_damaged_model_files_are_one_model_error(tmp_path, capfd):
    real, legacy, _ = _model_bytes(tmp_path)
    rng = np.random.default_rng(20240607)
    path = tmp_path / "case.pt"
    loaded = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(300):
            path.write_bytes(_fuzz_case(i, real, legacy, rng))
            reader = load_model if i % 3 else read_model_file
            try:
                reader(path)
                loaded += 1  # a change that kept the file valid (e.g. inside a weight)
            except ModelError as exc:
                message = str(exc)
                assert message.startswith(f"model {path}: ") and "\n" not in message, message
                assert len(message) < 400 and message.isprintable(), message
    assert not [str(w.message) for w in caught]
    assert capfd.readouterr().err == ""
    assert loaded < 30  # the zip members' checksums catch changed weights


def test_model_file_of_unsafe_first_bytes_is_a_model_error(tmp_path):
    path = tmp_path / "m.pt"
    for data in (b"\x80\x02.", b".", b"\x80\x02h\x05.", b"}q\x00(X\x01\x00\x00\x00aq\x01.", b"\x00" * 64):
        path.write_bytes(data)
        with pytest.raises(ModelError, match="not a volseg model file"):
            load_model(path)


def _odd_payloads(payload: dict) -> dict[str, tuple[object, str]]:
    tensors = payload["state_dict"]
    first = next(iter(tensors))
    return {
        "list": ([1, 2, 3], "it holds a list"),
        "tensor": (torch.zeros(3), "it holds a Tensor"),
        "empty dict": ({}, "plain state_dict"),
        "format only": ({"format": FORMAT}, "format_version is missing"),
        "format tensor": ({**payload, "format": torch.zeros(2)}, "not a volseg model file"),
        "version tensor": ({**payload, "format_version": torch.ones(3)}, "format_version is a Tensor"),
        "version True": ({**payload, "format_version": True}, "format_version is a bool"),
        "config list": ({**payload, "config": [1, 2]}, "config is a list"),
        "config missing": ({k: v for k, v in payload.items() if k != "config"}, "config is missing"),
        "config int keys": ({**payload, "config": {1: 2}}, "damaged or inconsistent"),
        "config bad value": ({**payload, "config": {**payload["config"], "norm": 3}}, "damaged"),
        "config huge": (
            {**payload, "config": {**payload["config"], "convs_per_level": 10**9, "depth": 8}},
            "damaged or inconsistent",
        ),
        "state_dict list": ({**payload, "state_dict": [1]}, "state_dict is a list"),
        "state_dict ints": ({**payload, "state_dict": dict.fromkeys(tensors, 3)}, "state_dict"),
        "state_dict int keys": ({**payload, "state_dict": {1: tensors[first]}}, "state_dict"),
        "state_dict short": ({**payload, "state_dict": {first: tensors[first]}}, "damaged or inconsistent"),
        "wrong shape": (
            {**payload, "state_dict": {**tensors, first: torch.zeros(7, 7)}},
            "damaged or inconsistent",
        ),
        "complex weight": (
            {**payload, "state_dict": {**tensors, first: tensors[first].to(torch.complex64)}},
            "damaged or inconsistent",
        ),
        "NaN weight": (
            {**payload, "state_dict": {**tensors, first: torch.full_like(tensors[first], torch.nan)}},
            "holds NaN or infinite values",
        ),
        "normalization str": ({**payload, "normalization": "x"}, "normalization is a str"),
        "normalization bad": ({**payload, "normalization": {"mode": "meanstd"}}, "damaged"),
        "foreground str": ({**payload, "foreground": "0"}, "foreground"),
        "foreground floats": ({**payload, "foreground": [0.5]}, "foreground"),
        "label_convention int": ({**payload, "label_convention": 3}, "label_convention is a int"),
        "convention missing": (
            {k: v for k, v in payload.items() if k != "convention"},
            "convention is missing",
        ),
        "convention list": ({**payload, "convention": [0]}, "convention is a list"),
        "convention kind": (
            {**payload, "convention": {**payload["convention"], "foreground_kind": "cell"}},
            "foreground_kind 'cell'",
        ),
        "convention foreground": (
            {**payload, "convention": {**payload["convention"], "foreground": [255]}},
            "convention foreground [255] differs from foreground [0]",
        ),
        "metrics list": ({**payload, "metrics": []}, "metrics is a list"),
        "training_state list": ({**payload, "training_state": [1]}, "training_state is a list"),
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_valid_torch_files_of_odd_objects_are_refused(tmp_path, legacy):
    _, _, payload = _model_bytes(tmp_path)
    path = tmp_path / "odd.pt"
    for name, (obj, needle) in _odd_payloads(payload).items():
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(ModelError) as err:
            load_model(path)
        message = str(err.value)
        assert needle in message and message.startswith(f"model {path}: "), (name, message)
        assert "\n" not in message and len(message) < 400, (name, message)
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    assert load_model(path).config == UNetConfig(base_channels=2, depth=1, convs_per_level=1)


# ---------------------------------------------------------------- format versions
FIXTURE_V1 = pathlib.Path(__file__).parent / "fixtures" / "model-v1.pt"  # tests/fixtures/make_model_v1.py
# What the fixture's network gave, with volseg 0.1's code, on the 8 x 8 ramp below: the sum of its 64
# logits and the logits at flat indices 0, 7, 9, 27, 36, 63.
V1_SUM = -32.54779580235481
V1_LOGITS = [-0.6064786314964294, -0.48551443219184875, -0.7315471768379211, -0.4514014422893524]
V1_LOGITS += [-0.4264313876628876, -0.4279768764972687]


def test_a_format_1_file_written_by_volseg_0_1_still_loads_and_predicts_the_same():
    data = read_model_file(FIXTURE_V1)
    assert data["format_version"] == 1 and "convention" not in torch.load(FIXTURE_V1, weights_only=True)
    legacy = {"scale": 1.0, "offset": 0.0, "foreground": [0], "foreground_kind": "boundary"}
    assert data["convention"] == legacy  # derived from foreground and the label_convention text
    model = load_model(FIXTURE_V1)
    meta = model.volseg_meta
    assert model.config == UNetConfig(base_channels=2, depth=1, convs_per_level=1)
    assert meta["convention"] == legacy and meta["foreground"] == [0]
    assert meta["label_convention"] == "probability of labels in [0] (boundaries: membrane probability = p)"
    ramp = np.arange(64, dtype=np.uint8).reshape(1, 1, 8, 8) * 4
    with torch.no_grad():
        logits = model(torch.from_numpy(normalize(ramp, meta["normalization"]))).flatten()
    assert logits.double().sum().item() == pytest.approx(V1_SUM, abs=1e-5)
    torch.testing.assert_close(logits[[0, 7, 9, 27, 36, 63]], torch.tensor(V1_LOGITS), rtol=0, atol=1e-6)


def test_a_format_2_file_stores_the_convention_as_data_and_the_older_fields(tmp_path):
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=2, depth=1, convs_per_level=1)).eval()
    convention = Convention(foreground=(255, 128), foreground_kind="object")
    parts = dict(normalization=NORM, provenance={}, metrics={}, train_config={})
    path = save_model(tmp_path / "m.pt", model, convention=convention, **parts)
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION == 2
    assert (
        raw["convention"]
        == convention.to_dict()
        == {
            "scale": 1.0,
            "offset": 0.0,
            "foreground": [255, 128],
            "foreground_kind": "object",
        }
    )
    assert raw["foreground"] == [255, 128]
    text = "probability of labels in [255,128] (objects: membrane probability = 1 - p)"
    assert raw["label_convention"] == text
    assert legacy_convention(raw) == convention  # a reader of 0.1's fields sees the same meaning
    assert load_model(path).volseg_meta["convention"] == convention.to_dict()
    assert read_model_file(path)["convention"] == convention.to_dict()


def test_save_model_takes_one_convention_of_a_probability(tmp_path):
    model = UNet(UNetConfig(base_channels=2, depth=1, convs_per_level=1))
    parts = dict(normalization=NORM, provenance={}, metrics={}, train_config={})
    boundary = Convention(foreground=(0,), foreground_kind="boundary")
    refused = {
        "convention is missing": {},
        "scale 0.00392157 / offset 0": {"convention": boundary.for_dtype("uint8")},
        "pass convention alone": {"convention": boundary, "foreground": [0]},
        "convention is a dict": {"convention": boundary.to_dict()},
    }
    for needle, kw in refused.items():
        with pytest.raises(OptionError, match=needle):
            save_model(tmp_path / "m.pt", model, **parts, **kw)
    assert not list(tmp_path.iterdir())
    # 0.1's two fields still work while callers move to convention=
    text = "probability of labels in [3] (objects: membrane probability = 1 - p)"
    path = save_model(tmp_path / "m.pt", model, **parts, foreground=[3], label_convention=text)
    raw = torch.load(path, weights_only=True)
    assert raw["label_convention"] == text and raw["foreground"] == [3]
    assert raw["convention"] == Convention(foreground=(3,), foreground_kind="object").to_dict()


def test_newer_and_older_format_versions_are_refused(tmp_path):
    _, _, payload = _model_bytes(tmp_path)
    path = tmp_path / "v.pt"
    for version in (3, 0):
        torch.save({**payload, "format_version": version}, path)
        with pytest.raises(ModelError) as err:
            read_model_file(path)
        assert str(err.value) == (
            f"model {path}: format version {version} is not supported; this volseg reads versions 1 and 2 "
            "(upgrade volseg for newer files)"
        )
    # a format-1 file has no convention field to check: its foreground and text are read instead
    torch.save({**{k: v for k, v in payload.items() if k != "convention"}, "format_version": 1}, path)
    assert load_model(path).volseg_meta["convention"]["foreground"] == [0]


# ------------------------------------------------------------------- pickled code
class _Evil:
    """Unpickling it would run its reduce; torch.save records only the function and the arguments."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class _Custom:
    pass


def _evil_cases(marker: pathlib.Path) -> dict[str, tuple[object, str]]:
    return {
        "os.system": (_Evil(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
        "open": (_Evil(open, str(marker), "w"), f"{open.__module__}.open"),
        "Path.touch": (_Evil(pathlib.Path.touch, marker), "builtins.getattr"),
        "custom class": (_Custom(), f"{__name__}._Custom"),
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickled_code_is_refused_named_and_not_run(tmp_path, capfd, legacy):
    marker = tmp_path / "PWNED"
    for name, (obj, global_name) in _evil_cases(marker).items():
        path = tmp_path / f"evil-{name}.pt"
        torch.save(
            {"format": FORMAT, "format_version": 1, "x": obj}, path, _use_new_zipfile_serialization=not legacy
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ModelError) as err:
                load_model(path)
        assert str(err.value) == (
            f"model {path}: refused, the file holds pickled code (it tried to load {global_name}); "
            "volseg model files never need it, use a model written by 'volseg train'"
        ), name
        assert not caught, [str(w.message) for w in caught]
        assert not marker.exists()
    assert capfd.readouterr().err == ""


def test_pickled_code_without_a_named_global_is_refused(tmp_path):
    from volseg.nn.modelfile import _unsafe_reason

    assert _unsafe_reason("Weights only load failed. GLOBAL posix.system was not allowed") == "posix.system"
    assert _unsafe_reason(
        "x\nWeightsUnpickler error: Unsupported global: GLOBAL open was not an allowed"
    ) == ("builtins.open")
    assert _unsafe_reason("Trying to call reduce for unrecognized function <built-in function eval>") == ""
    assert _unsafe_reason("Unsupported global: GLOBAL a b.c was not an allowed global by default.") == ""
    assert _unsafe_reason(
        "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
    ) == ("posix.system")
    assert _unsafe_reason("Unsupported operand 149") is None
    path = tmp_path / "scripted.pt"  # a TorchScript archive is code
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, not yet gone
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(ModelError) as err:
        read_model_file(path)
    assert str(err.value) == (
        f"model {path}: refused, the file holds pickled code or objects volseg does not run; "
        "volseg model files never need them, use a model written by 'volseg train'"
    )


# --------------------------------------------------------------------------- CLI
def test_cli_predict_with_a_bad_model_is_one_line(tmp_path):
    image = create_volume(tmp_path / "image.zarr", (1, 16, 16), "uint8", (1, 16, 16))
    image.write_block(next(iter(image.block_ids())), np.zeros((1, 16, 16), np.uint8))
    image.mark_complete()
    bad = tmp_path / "bad.pt"
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Evil(os.system, "true")}, evil, _use_new_zipfile_serialization=False)
    for data, needle in (
        (b"\x80\x02.", "not a volseg model file"),
        (None, "refused, the file holds pickled code"),
    ):
        model = bad if data else evil
        if data:
            bad.write_bytes(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = runner.invoke(
                app, ["predict", str(model), str(tmp_path / "image.zarr"), str(tmp_path / "o.zarr")]
            )
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"volseg: error: model {model}: "), result.stderr
        assert needle in lines[0] and "Traceback" not in result.output
        assert not caught, [str(w.message) for w in caught]
        assert not (tmp_path / "o.zarr").exists()
