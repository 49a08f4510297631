"""What the values of a volume or of a model's output mean, as data.

A :class:`Convention` is one frozen record: how stored values map to probabilities (``probability =
value * scale + offset``), which label values are the positive class, and whether high values mean
membrane (``boundary``) or cells (``object``). It is stored as JSON fields: under ``volseg.convention``
in a volume's attributes and under ``convention`` in a model file (format version 2). Readers of
files written by volseg 0.1 (which wrote a ``values`` record and a ``label_convention`` text) are kept
in :func:`legacy_convention`.

The kind checks live here too: what a volume holds (image, probability, label, mask) is part of what
its values mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from volseg.errors import InputError

if TYPE_CHECKING:
    from volseg.storage.volumes import Volume

__all__ = [
    "FOREGROUND_KINDS",
    "Convention",
    "from_probability",
    "legacy_convention",
    "recorded_convention",
    "recorded_kind",
    "require_complete",
    "require_kind",
    "to_probability",
    "truth_membrane_values",
    "value_scale",
]

FOREGROUND_KINDS = ("boundary", "object")
_BOUNDARY_WORDS = ("boundary", "boundaries", "membrane", "membranes")
_OBJECT_WORDS = ("object", "objects", "interior", "cell", "cells", "cell interior")


@dataclass(frozen=True)
class Convention:
    """What stored values mean.

    Attributes
    ----------
    scale, offset
        ``probability = value * scale + offset`` (uint8 probabilities: ``1 / 255``, ``0``).
    foreground
        Label values of the positive class in the training labels, or ``None`` when not recorded.
    foreground_kind
        ``"boundary"`` when high values mean membrane, ``"object"`` when they mean cells (the
        membrane probability is then ``1 - p``), ``None`` when not recorded.
    """

    scale: float = 1.0
    offset: float = 0.0
    foreground: tuple[int, ...] | None = None
    foreground_kind: str | None = None

    def __post_init__(self) -> None:
        if self.foreground_kind not in (None, *FOREGROUND_KINDS):
            raise ValueError(
                f"foreground_kind {self.foreground_kind!r}: use one of {', '.join(FOREGROUND_KINDS)}"
            )
        if self.foreground is not None:
            object.__setattr__(self, "foreground", tuple(int(v) for v in self.foreground))

    @property
    def membrane_is_high(self) -> bool:
        """True unless high values are recorded to mean cells."""
        return self.foreground_kind != "object"

    def for_dtype(self, dtype: Any) -> Convention:
        """The same meaning, stored as ``dtype`` (uint8: scale ``1 / 255``; floats: 1)."""
        return replace(self, scale=_dtype_scale(np.dtype(dtype)), offset=0.0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["foreground"] = None if self.foreground is None else list(self.foreground)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Convention:
        """Read a stored record; unknown keys are ignored, bad values raise ``ValueError``."""
        fg = data.get("foreground")
        if fg is not None and (not isinstance(fg, (list, tuple)) or not all(_is_int(v) for v in fg)):
            raise ValueError(f"convention foreground {fg!r}: expected a list of integers")
        scale, offset = data.get("scale", 1.0), data.get("offset", 0.0)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (scale, offset)):
            raise ValueError(f"convention scale {scale!r} / offset {offset!r}: expected numbers")
        return cls(
            float(scale), float(offset), None if fg is None else tuple(fg), data.get("foreground_kind")
        )

    def describe(self) -> str:
        """The sentence 0.1 stored as ``label_convention`` (still written, for older readers)."""
        values = ",".join(str(v) for v in self.foreground or ())
        if self.foreground_kind == "object":
            return f"probability of labels in [{values}] (objects: membrane probability = 1 - p)"
        return f"probability of labels in [{values}] (boundaries: membrane probability = p)"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _dtype_scale(dtype: np.dtype) -> float:
    if np.issubdtype(dtype, np.integer) and dtype != np.bool_:
        return 1.0 / float(np.iinfo(dtype).max)
    return 1.0


# ------------------------------------------------------------------- probability scaling
def from_probability(probs: np.ndarray, dtype: str) -> np.ndarray:
    """Float probabilities -> stored values (uint8: ``rint(p * 255)`` clipped to 0..255)."""
    if dtype == "uint8":
        return np.clip(np.rint(probs * np.float32(255)), 0, 255).astype(np.uint8)
    return probs.astype(dtype)


def to_probability(values: np.ndarray, scale: float, offset: float = 0.0) -> np.ndarray:
    """Stored values -> float32 probabilities ``clip(values * scale + offset, 0, 1)``."""
    return np.clip(values.astype(np.float32) * np.float32(scale) + np.float32(offset), 0.0, 1.0)


def value_scale(vol: Volume) -> tuple[float, float]:
    """``(scale, offset)`` with ``probability = value * scale + offset`` for ``vol``.

    From the volume's recorded convention (or 0.1's ``values`` record); else integers span ``0..max``
    of their dtype (uint8: ``1 / 255``) and floats are probabilities already.
    """
    meta = vol.meta
    for record in (meta.get("convention"), meta.get("values")):
        if isinstance(record, dict) and isinstance(record.get("scale"), (int, float)):
            return float(record["scale"]), float(record.get("offset") or 0.0)
    return _dtype_scale(np.dtype(vol.dtype)), 0.0


# --------------------------------------------------------------------------- reading
def recorded_convention(vol: Volume) -> Convention:
    """What ``vol``'s metadata says its values mean (unrecorded fields stay ``None``).

    Reads the ``convention`` record, then the model record that ``volseg predict`` copies into the
    volume (``predict.model``), then the fields volseg 0.1 wrote (:func:`legacy_convention`).
    """
    meta = vol.meta
    scale, offset = value_scale(vol)
    predict = meta.get("predict")
    model = (predict.get("model") or {}) if isinstance(predict, dict) else {}
    foreground: tuple[int, ...] | None = None
    kind: str | None = None
    for block in (meta, model):
        found = _from_block(block)
        foreground = foreground if foreground is not None else found.foreground
        kind = kind or found.foreground_kind
    return Convention(scale, offset, foreground, kind)


def _from_block(block: Mapping[str, Any]) -> Convention:
    record = block.get("convention")
    if isinstance(record, dict):
        try:
            return Convention.from_dict(record)
        except ValueError:
            pass  # damaged: fall back to the older fields beside it
    return legacy_convention(block)


def legacy_convention(block: Mapping[str, Any]) -> Convention:
    """The convention of a metadata block or model file written by volseg 0.1.

    0.1 recorded ``foreground`` (a list), sometimes ``foreground_kind`` or ``positive`` words, and a
    ``label_convention`` that was either a value -> meaning mapping (synth) or a sentence written by
    train, e.g. ``"probability of labels in [255] (objects: membrane probability = 1 - p)"``.
    """
    fg = block.get("foreground")
    foreground = (
        tuple(int(v) for v in fg) if isinstance(fg, (list, tuple)) and all(map(_is_int, fg)) else None
    )
    return Convention(foreground=foreground, foreground_kind=_legacy_kind(block))


def _legacy_kind(block: Mapping[str, Any]) -> str | None:
    for key in ("foreground_kind", "positive"):
        value = str(block.get(key, "")).lower()
        if value in _BOUNDARY_WORDS:
            return "boundary"
        if value in _OBJECT_WORDS:
            return "object"
    convention = block.get("label_convention")
    if isinstance(
        convention, dict
    ):  # value -> meaning, e.g. synth's {"255": "cell interior", "0": "membrane"}
        meanings = {str(v).lower() for k, v in convention.items() if str(k) not in ("0", "0.0")}
        if meanings & set(_OBJECT_WORDS):
            return "object"
        if meanings & set(_BOUNDARY_WORDS):
            return "boundary"
        return None
    text = str(convention or "").lower()  # 0.1's sentence, see Convention.describe
    if "(objects" in text:
        return "object"
    if "(boundaries" in text:
        return "boundary"
    return None


def truth_membrane_values(truth: Volume) -> tuple[int, ...] | None:
    """The membrane values of a label volume whose metadata maps values to meanings (synth does)."""
    record = truth.meta.get("convention")
    if isinstance(record, dict):
        try:
            conv = Convention.from_dict(record)
        except ValueError:
            conv = Convention()
        if conv.foreground is not None and conv.foreground_kind == "boundary":
            return conv.foreground
    mapping = truth.meta.get("label_convention")
    if not isinstance(mapping, dict) or not all(str(k).lstrip("-").isdigit() for k in mapping):
        return None
    membrane = tuple(int(k) for k, v in mapping.items() if str(v).lower() in _BOUNDARY_WORDS)
    return membrane or None


# ----------------------------------------------------------------------------- kinds
def recorded_kind(vol: Volume) -> str | None:
    """The kind the volume's metadata records (image, probability, label, mask), else None.

    ``None`` for volumes written by other tools (no ``volseg`` block), whose kind is unknown.
    """
    meta = vol.meta
    kind = meta.get("kind") if meta else None
    if kind is None and "image-label" in (vol.group.attrs.get("ome") or {}):
        return "label"
    return kind if isinstance(kind, str) else None


_KIND_WORDS = {
    "image": "an image (raw EM) volume",
    "probability": "a probability volume",
    "label": "a label volume",
    "mask": "a mask volume",
    "affinity": "an affinity volume",
    None: "a volume of unrecorded kind",
}


def require_kind(
    vol: Volume, allowed: Iterable[str], role: str, fix: str, *, unknown_ok: bool = False
) -> str | None:
    """Refuse a volume whose recorded kind is not in ``allowed``; return the kind.

    Parameters
    ----------
    vol
        The opened input.
    allowed
        Kinds the stage accepts for this input.
    role
        What the input is for, e.g. ``"segment's PROB"``.
    fix
        What to do instead, e.g. ``"pass the output of 'volseg predict', or --input-kind probability"``.
    unknown_ok
        Accept a volume whose kind is not recorded (another tool wrote it).
    """
    allowed = tuple(allowed)
    kind = recorded_kind(vol)
    if kind in allowed or (kind is None and unknown_ok):
        return kind
    names = [_KIND_WORDS[k].split(" ", 1)[1].removesuffix(" volume") for k in allowed]
    need = f"{'an' if names[0][0] in 'aeiou' else 'a'} {' or '.join(names)} volume"
    raise InputError(f"{vol.path}: is {_KIND_WORDS.get(kind, kind)}, but {role} must be {need}; {fix}")


def require_complete(vol: Volume, role: str = "input") -> None:
    """Refuse an input that an unfinished (or failed) run wrote."""
    if vol.meta.get("status") == "incomplete":
        raise InputError(
            f"{vol.path}: the {role} is incomplete (an unfinished run wrote it); finish it first, "
            "e.g. rerun the command that wrote it"
        )
