"""The choices of the CLI's options, as enums typer shows in ``--help``.

Each enum's values are those of an API tuple (``tests/test_cli_defaults.py`` keeps them equal).
"""

from __future__ import annotations

import enum


class Loss(str, enum.Enum):
    bce_dice = "bce_dice"
    weighted_bce = "weighted_bce"
    bce = "bce"
    dice = "dice"


class AugmentPreset(str, enum.Enum):
    none = "none"
    light = "light"
    default = "default"
    heavy = "heavy"


class Norm(str, enum.Enum):
    batch = "batch"
    group = "group"
    instance = "instance"
    none = "none"


class Upsample(str, enum.Enum):
    transpose = "transpose"
    bilinear = "bilinear"


class Precision(str, enum.Enum):  # also used by predict
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class SegmentMode(str, enum.Enum):
    two_d = "2d"
    three_d = "3d"


class SegmentMethod(str, enum.Enum):
    watershed = "watershed"
    cc = "cc"
    agglo = "agglo"
    mws = "mws"


class Target(str, enum.Enum):
    boundary = "boundary"
    affinities = "affinities"


class SeedKind(str, enum.Enum):
    distance = "distance"
    hminima = "hminima"


class InputKind(str, enum.Enum):
    probability = "probability"
    mask = "mask"


class InstanceMode(str, enum.Enum):
    auto = "auto"
    two_d = "2d"
    three_d = "3d"


class ForegroundKind(str, enum.Enum):
    boundary = "boundary"
    object = "object"


class PreviewStyle(str, enum.Enum):
    both = "both"
    fill = "fill"
    outline = "outline"


class OutDtype(str, enum.Enum):
    uint8 = "uint8"
    float16 = "float16"
    float32 = "float32"


class VolumeKind(str, enum.Enum):
    image = "image"
    label = "label"
    mask = "mask"
    probability = "probability"


class Backend(str, enum.Enum):
    auto = "auto"
    torch = "torch"
    openvino = "openvino"
    onnxruntime = "onnxruntime"
