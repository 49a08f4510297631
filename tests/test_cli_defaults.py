"""Every CLI default is the default of the API field or parameter the option fills.

The CLI's ``[default: ...]`` help texts are rendered by typer from these defaults, so a test that keeps
them equal to the dataclasses' (and the stage functions') keeps the help, docs/cli.md (generated) and
the Python API telling the same story.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
from typing import Any

import pytest
import typer

from volseg.app.cli import app


def _options() -> dict[str, list[Any]]:
    from volseg.app.demo import DemoOptions
    from volseg.core.synth import SynthParams
    from volseg.stages.convert import ConvertOptions
    from volseg.stages.evaluate import EvaluateOptions
    from volseg.stages.predict import PredictOptions
    from volseg.stages.preview import PreviewOptions
    from volseg.stages.segment import SegmentOptions
    from volseg.stages.synth import synth
    from volseg.stages.train import TrainConfig

    return {
        "convert": [ConvertOptions],
        "synth": [SynthParams, synth],
        "train": [TrainConfig],
        "predict": [PredictOptions],
        "segment": [SegmentOptions],
        "evaluate": [EvaluateOptions],
        "preview": [PreviewOptions],
        "demo": [DemoOptions],
    }


def _fields(cls: Any) -> dict[str, Any]:
    """Field name -> default, nested dataclass fields included (their own names, outer ones win).

    For a function: its keyword parameters with defaults.
    """
    if not dataclasses.is_dataclass(cls):
        params = inspect.signature(cls).parameters.values()
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        if dataclasses.is_dataclass(default):
            out = {**_fields(type(default)), **out}
        out[f.name] = default
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, (tuple, list)):
        items = tuple(_plain(v) for v in value)
        return items[0] if len(items) == 1 else items
    if value is None or value == "auto":  # the CLI writes "auto" where the API takes None
        return None
    if isinstance(value, str):
        try:
            return _plain([float(p) for p in value.split(",")])
        except ValueError:
            return {"true": True, "false": False}.get(value.lower(), value)
    if value is None or value == "auto":  # the CLI writes "auto" where the API takes None
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


COMMANDS = ("convert", "synth", "train", "predict", "segment", "evaluate", "preview", "demo")


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_defaults_are_the_dataclass_defaults(command: str) -> None:
    group = typer.main.get_command(app)
    params = group.commands[command].params
    fields: dict[str, Any] = {}
    for cls in _options()[command]:
        fields.update(_fields(cls))
    compared, different = [], []
    for param in params:
        if (
            param.name not in fields
            or param.name == "progress"
            or dataclasses.is_dataclass(fields[param.name])
        ):
            continue  # progress: a flag here, a callable in the API; a nested config: compared field by field
        cli = param.default
        if cli is None:  # "not given" (a TOML config may set it): the help text states the default
            found = re.search(r"\[default: ([^\]]+)\]", getattr(param, "help", None) or "")
            if found is None:
                continue
            cli = found.group(1)
            if " " in cli:  # prose such as "2000 unless --time-limit", not a value
                continue
        compared.append(param.name)
        if _plain(cli) != _plain(fields[param.name]):
            flag = "--" + param.name.replace("_", "-")
            different.append(f"{flag}: CLI {cli!r}, API {fields[param.name]!r}")
    assert different == [], f"volseg {command}: defaults declared twice and different: {different}"
    assert compared, f"volseg {command}: no option matched a field of {_options()[command]}"


def test_cli_choices_are_the_api_choices() -> None:
    """Each enum of the CLI offers exactly the values the API accepts (declared once, in the API)."""
    from volseg.app import choices
    from volseg.core.augment import PRESETS
    from volseg.core.segmentation import MODES, SEEDS
    from volseg.nn.backends import BACKENDS
    from volseg.nn.runtime import PRECISIONS
    from volseg.nn.speeds import BACKEND_CHOICES
    from volseg.nn.unet import NORMS, UPSAMPLES
    from volseg.stages.evaluate.options import INSTANCE_MODES
    from volseg.stages.predict.options import DTYPES
    from volseg.stages.preview import STYLES
    from volseg.stages.segment.options import INPUT_KINDS
    from volseg.stages.segment.options import METHODS as SEGMENT_METHODS
    from volseg.stages.train.config import LOSSES, TARGETS
    from volseg.storage.conventions import FOREGROUND_KINDS
    from volseg.storage.volumes import KINDS

    pairs = {
        choices.Loss: LOSSES,
        choices.ForegroundKind: FOREGROUND_KINDS,
        choices.AugmentPreset: PRESETS,
        choices.Norm: NORMS,
        choices.Upsample: UPSAMPLES,
        choices.Precision: PRECISIONS,
        choices.SegmentMode: MODES,
        choices.SegmentMethod: SEGMENT_METHODS,
        choices.Target: TARGETS,
        choices.SeedKind: SEEDS,
        choices.InputKind: INPUT_KINDS,
        choices.InstanceMode: INSTANCE_MODES,
        choices.PreviewStyle: STYLES,
        choices.OutDtype: DTYPES,
        choices.VolumeKind: KINDS,
        choices.Backend: BACKEND_CHOICES,
    }
    enums = {v for v in vars(choices).values() if isinstance(v, type) and issubclass(v, enum.Enum)}
    assert enums - {enum.Enum} == set(pairs), "a CLI enum without its API tuple in this test"
    assert ("auto", *BACKENDS) == BACKEND_CHOICES
    for cli_enum, api in pairs.items():
        assert sorted(e.value for e in cli_enum) == sorted(api), cli_enum.__name__
