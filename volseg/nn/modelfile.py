"""The model file: one file per trained model (or training checkpoint), safe to load.

:func:`save_model` writes it with :func:`torch.save`, atomically (through
:func:`volseg.storage.files.atomic_writer`), holding only tensors and plain data, so that
``torch.load(path, weights_only=True)`` loads it without running pickled code. Format version 2::

    {"format": "volseg-model", "format_version": 2, "config": UNetConfig.to_dict(),
     "normalization": {"mode": "meanstd", "mean": float, "std": float},
     "convention": Convention.to_dict(), "foreground": [int, ...], "label_convention": str,
     "provenance": dict, "metrics": dict, "train_config": dict, "extra": dict,
     "saved_with": {"volseg": str, "torch": str},
     "training_state": dict | None, "state_dict": {name: tensor}}

``convention`` (:class:`volseg.storage.conventions.Convention`, scale 1 and offset 0: the network's
output is a probability) says what the output means, as data; ``foreground`` and ``label_convention``
(:meth:`~volseg.storage.conventions.Convention.describe`) are still written for readers of format 1.
Format 1 (as volseg 0.1 wrote it) is the same without ``convention``. :func:`read_model_file` reads
both, and gives a format-1 file the ``convention`` that its ``foreground`` and ``label_convention``
text say (:func:`volseg.storage.conventions.legacy_convention`), so every reader sees one.

:func:`read_model_file` and :func:`load_model` turn every damaged, foreign, newer or unsafe file into
one :class:`~volseg.errors.ModelError` line (damage checks: zip checksums, the parts and their types,
the weights against a skeleton of the config).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volseg.errors import ModelError, OptionError
from volseg.nn.intensity import check_normalization
from volseg.nn.runtime import resolve_device
from volseg.nn.unet import UNet, UNetConfig
from volseg.storage.conventions import Convention, legacy_convention
from volseg.storage.files import atomic_writer

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "load_model",
    "model_checksum",
    "read_model_file",
    "save_model",
]

FORMAT = "volseg-model"
FORMAT_VERSION = 2
#: Format versions this volseg reads: 1 (volseg 0.1, no ``convention`` field) and 2.
READABLE_VERSIONS = (1, 2)


# ======================================================================== model file
_LEAF_TYPES = (str, int, float, bool)


def _plain(obj: Any, where: str) -> Any:
    """Copy of ``obj`` made only of what ``weights_only`` loading accepts (numpy -> python / tensors)."""
    if obj is None or type(obj) in _LEAF_TYPES or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    for kind in (int, float, str):  # subclasses (IntEnum, torch's TorchVersion) are not plain data
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        return {_plain(k, where): _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise OptionError(
        f"model file: {where} is a {type(obj).__name__}; store only tensors, numpy arrays, dicts, lists, "
        f"str, int, float, bool or None"
    )


def save_model(
    path: str | os.PathLike,
    model: UNet,
    *,
    normalization: dict[str, Any],
    convention: Convention | None = None,
    provenance: dict[str, Any],
    metrics: dict[str, Any],
    train_config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
    foreground: Sequence[int] | None = None,
    label_convention: str | None = None,
) -> Path:
    """Write a model (or a training checkpoint) to one file (format :data:`FORMAT_VERSION`), atomically.

    The file goes through :func:`~volseg.storage.files.atomic_writer`: a reader sees either the
    old file or the complete new one.

    Parameters
    ----------
    path
        The file to write (conventionally ``*.pt``).
    model
        The :class:`~volseg.nn.unet.UNet`; its config and weights (moved to CPU, contiguous) are stored.
    normalization
        ``{"mode": "meanstd", "mean": float, "std": float}``, see :func:`volseg.nn.intensity.normalize`.
    convention
        What the output means: the label values of the positive class (``foreground``) and whether
        they are membrane (``"boundary"``) or cells (``"object"``). Its scale and offset must be 1
        and 0 (the output is a probability). Stored as ``convention``, and as ``foreground`` and
        ``label_convention`` (:meth:`~volseg.storage.conventions.Convention.describe`) for older readers.
    provenance, metrics, train_config, extra
        Plain data (dicts, lists, str, numbers, bool, None; numpy scalars and arrays are converted).
    training_state
        Optional state to resume training (optimizer and scheduler state dicts, step, RNG states
        as tensors / lists / dicts of ints); stored under ``"training_state"``, same rules.
    foreground, label_convention
        Transitional, in place of ``convention``: 0.1's list of positive label values and its free
        text; the stored ``convention`` is what :func:`~volseg.storage.conventions.legacy_convention`
        reads from them.

    Returns
    -------
    Path
        ``path``.
    """
    from volseg.version import __version__

    conv, foreground_list, text = _convention_fields(convention, foreground, label_convention)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "normalization": check_normalization(normalization),
        "convention": _plain(conv.to_dict(), "convention"),
        "foreground": foreground_list,
        "label_convention": text,
        "provenance": _plain(provenance, "provenance"),
        "metrics": _plain(metrics, "metrics"),
        "train_config": _plain(train_config, "train_config"),
        "extra": _plain(extra or {}, "extra"),
        "saved_with": {"volseg": __version__, "torch": str(torch.__version__)},
        "training_state": _plain(training_state, "training_state"),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    with atomic_writer(path, "wb") as f:
        torch.save(payload, f)
    return Path(path)


def _convention_fields(
    convention: Convention | None, foreground: Sequence[int] | None, label_convention: str | None
) -> tuple[Convention, list[int], str]:
    """The ``convention`` record, ``foreground`` list and ``label_convention`` text a file stores."""
    if convention is None:
        if foreground is None or label_convention is None:
            raise OptionError(
                "save_model: convention is missing; pass convention=Convention(foreground=..., "
                "foreground_kind=...)"
            )
        values = [int(v) for v in foreground]
        text = str(label_convention)
        return legacy_convention({"foreground": values, "label_convention": text}), values, text
    if foreground is not None or label_convention is not None:
        raise OptionError("save_model: pass convention alone, not with foreground or label_convention")
    if not isinstance(convention, Convention):
        raise OptionError(f"save_model: convention is a {type(convention).__name__}, not a Convention")
    if (convention.scale, convention.offset) != (1.0, 0.0):
        raise OptionError(
            f"save_model: convention scale {convention.scale:g} / offset {convention.offset:g}; a model's "
            "output is a probability, use scale 1 and offset 0"
        )
    return convention, list(convention.foreground or ()), convention.describe()


_TRAINED = "pass the .pt file written by 'volseg train'"
_REPAIR = "restore the file from a copy or train the model again with 'volseg train'"
# What a volseg model file holds besides format, format_version and the optional training_state.
_PARTS = {
    "config": dict,
    "normalization": dict,
    "foreground": list,
    "label_convention": str,
    "provenance": dict,
    "metrics": dict,
    "train_config": dict,
    "extra": dict,
    "saved_with": dict,
    "state_dict": dict,
}
# torch wraps the restricted unpickler's reason in advice on how to load the file unsafely
_TORCH_ADVICE = (
    "In PyTorch",
    "This file can still",
    "(1)",
    "(2)",
    "Please file an issue",
    "Check the documentation",
    "Re-running",
)
# torch's words for a file that needs pickled code or objects its restricted unpickler does not make
_CODE_HINTS = (
    "GLOBAL",
    "unrecognized function",
    "Can only create new object",
    "must be imported",
    "TorchScript",
)
_GLOBAL = re.compile(r"\bGLOBAL (.*?)(?: was not | whose module |$)", re.MULTILINE)
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", re.ASCII)


class _Damage(Exception):
    """A loaded model file whose parts do not fit together (turned into :class:`ModelError`)."""


def _printable(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters, with anything unprintable (control bytes, newlines) as ``?``."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _reason(exc: BaseException) -> str:
    """``Type: first line of the reason`` of ``exc``, short and printable, without torch's advice."""
    text = str(exc).rpartition("WeightsUnpickler error:")[2]
    lines = (line.strip().removeprefix("Weights only load failed.").strip() for line in text.splitlines())
    first = next((line for line in lines if line and not line.startswith(_TORCH_ADVICE)), "")
    return f"{type(exc).__name__}: {_printable(first)}" if first else type(exc).__name__


def _unsafe_reason(message: str) -> str | None:
    """The global a file refused by torch's restricted unpickler tried to load.

    ``None`` when ``message`` is not about pickled code or objects (a damaged or foreign file),
    ``""`` when it is but names no readable global. torch writes builtins without their module
    (``GLOBAL open``); they are named in full (``builtins.open``).
    """
    if not any(hint in message for hint in _CODE_HINTS):
        return None
    match = _GLOBAL.search(message)
    name = match.group(1).rstrip(".,;:") if match else ""
    if not _DOTTED.fullmatch(name):
        return ""
    return name if "." in name else f"builtins.{name}"


def _check_archive(path: Path) -> None:
    """Refuse a zip archive (torch's file format) that is damaged or whose parts fail their CRC-32.

    torch's reader does not check the checksums, so without this a changed byte inside a weight
    would load as a silently different model. Parts with no checksum recorded (CRC 0, written
    with ``torch.serialization.set_crc32_options(False)``) are not checked.
    """
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # torch's own test; other files are its legacy format
            return
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0:
                    continue
                with archive.open(info) as part:
                    while part.read(1 << 20):
                        pass
    # any bytes can follow the header: BadZipFile, EOFError, zlib.error, NotImplementedError, ...
    except Exception as exc:
        if isinstance(exc, zipfile.BadZipFile) and "CRC" in str(exc):
            raise ModelError(f"model {path}: damaged (a part fails its checksum); {_REPAIR}") from None
        raise ModelError(
            f"model {path}: not a volseg model file (damaged zip archive: {_reason(exc)}); {_TRAINED}"
        ) from None


def _torch_load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, every failure one :class:`ModelError` line.

    Pickled code is never run: torch's restricted unpickler refuses it, and the refusal names the
    global the file tried to load. torch's warnings (legacy format, pickle protocol, TorchScript
    archive) are silenced; the error or the checks that follow say what matters.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any bytes reach the unpickler: IndexError, KeyError, MemoryError, ...
        unsafe = _unsafe_reason(str(exc)) if isinstance(exc, (pickle.UnpicklingError, RuntimeError)) else None
        if unsafe:
            raise ModelError(
                f"model {path}: refused, the file holds pickled code (it tried to load {unsafe}); "
                "volseg model files never need it, use a model written by 'volseg train'"
            ) from None
        if unsafe == "":
            raise ModelError(
                f"model {path}: refused, the file holds pickled code or objects volseg does not run; "
                "volseg model files never need them, use a model written by 'volseg train'"
            ) from None
        raise ModelError(f"model {path}: not a volseg model file ({_reason(exc)}); {_TRAINED}") from None


def _payload_problem(data: dict[str, Any], version: int) -> str | None:
    """What is wrong with the parts of a loaded volseg model file of format ``version``, or None."""
    for key, kind in _PARTS.items():
        if key not in data:
            return f"{key} is missing"
        if not isinstance(data[key], kind):
            return f"{key} is a {type(data[key]).__name__}, not a {kind.__name__}"
    state = data.get("training_state")
    if state is not None and not isinstance(state, dict):
        return f"training_state is a {type(state).__name__}, not a dict"
    for name, tensor in data["state_dict"].items():
        if not (isinstance(name, str) and isinstance(tensor, torch.Tensor)):
            return f"state_dict entry {_printable(repr(name), 60)} is not a named tensor"
    if not all(type(v) is int for v in data["foreground"]):
        return "foreground is not a list of label values (int)"
    try:
        check_normalization(data["normalization"])
    except OptionError as exc:
        return _printable(str(exc), 200)
    return _convention_problem(data) if version >= 2 else None


def _convention_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with the ``convention`` record of a format-2 file, or None."""
    record = data.get("convention")
    if not isinstance(record, dict):
        return "convention is missing" if record is None else f"convention is a {type(record).__name__}"
    try:
        convention = Convention.from_dict(record)
    except (ValueError, TypeError) as exc:
        return _printable(str(exc), 200)
    if convention.foreground is not None and list(convention.foreground) != data["foreground"]:
        stored = list(convention.foreground)
        return f"convention foreground {stored} differs from foreground {data['foreground']}"
    return None


def _check_format(path: Path, data: object) -> int:
    """The format version of a loaded file; :class:`ModelError` unless it is a model this volseg reads."""
    fmt = data.get("format") if isinstance(data, dict) else None
    if not (isinstance(fmt, str) and fmt == FORMAT):
        what = (
            "a plain state_dict or other checkpoint" if isinstance(data, dict) else f"a {type(data).__name__}"
        )
        raise ModelError(
            f"model {path}: not a volseg model file (it holds {what}); use a model written by 'volseg train'"
        )
    version = data.get("format_version")
    if type(version) is not int:
        problem = "is missing" if version is None else f"is a {type(version).__name__}, not an int"
        raise ModelError(f"model {path}: damaged or inconsistent (format_version {problem}); {_REPAIR}")
    if version not in READABLE_VERSIONS:
        readable = " and ".join(str(v) for v in READABLE_VERSIONS)
        raise ModelError(
            f"model {path}: format version {version!r} is not supported; this volseg reads versions "
            f"{readable} (upgrade volseg for newer files)"
        )
    return version


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a model file without building the model (tensors on CPU).

    Returns the whole stored dict, ``state_dict`` and ``training_state`` included (what a
    resumed training run needs), after checking that every part save_model writes is there
    with its type. Format versions 1 and 2 are read; ``convention`` is always there, as
    :meth:`Convention.to_dict <volseg.storage.conventions.Convention.to_dict>` gives it (for a
    format-1 file derived by :func:`~volseg.storage.conventions.legacy_convention`).

    Raises :class:`ModelError` with one line for a missing path, a folder, an unreadable file, a
    file that is not a volseg model (any bytes: random, truncated, a plain state_dict, another
    archive), a damaged one (changed bytes, parts of the wrong type, a ``convention`` that
    contradicts ``foreground``), a newer format version, or a file holding pickled code, which is
    refused without being run.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model {path}: no such file; {_TRAINED}")
    if path.is_dir():
        raise ModelError(f"model {path}: is a folder, not a model file; {_TRAINED}")
    if path.stat().st_size == 0:
        raise ModelError(f"model {path}: the file is empty; {_TRAINED}")
    try:
        open(path, "rb").close()
    except OSError as exc:
        raise ModelError(
            f"model {path}: cannot be read ({_reason(exc)}); check the path and its permissions"
        ) from None
    _check_archive(path)
    data = _torch_load(path)
    version = _check_format(path, data)
    problem = _payload_problem(data, version)
    if problem:
        raise ModelError(f"model {path}: damaged or inconsistent ({problem}); {_REPAIR}")
    # one record for every reader: a format-1 file's is what its foreground and text say
    stored = Convention.from_dict(data["convention"]) if version >= 2 else legacy_convention(data)
    data["convention"] = stored.to_dict()
    return data


def _check_weights(config: UNetConfig, state_dict: dict[str, torch.Tensor]) -> None:
    """Raise :class:`_Damage` unless ``state_dict`` holds the finite tensors of a UNet of ``config``.

    Compared with a skeleton on the meta device, which allocates nothing: a damaged config
    (``base_channels=10**6``) cannot make volseg allocate more than the file's own tensors.
    """
    convs = (2 * config.depth + 1) * config.convs_per_level
    if convs > len(state_dict):  # one weight per convolution at least; also bounds the skeleton
        raise _Damage(f"the config has {convs} convolutions, the file {len(state_dict)} tensors")
    with torch.device("meta"):
        skeleton = UNet(config).state_dict()
    missing, unexpected = sorted(set(skeleton) - set(state_dict)), sorted(set(state_dict) - set(skeleton))
    if missing or unexpected:
        names = [_printable(n, 60) for n in (missing or unexpected)[:3]]
        raise _Damage(f"weights {'missing' if missing else 'unexpected'} for the config: {', '.join(names)}")
    for name, want in skeleton.items():
        got = state_dict[name]
        if got.shape != want.shape:
            raise _Damage(f"weight {name} has shape {tuple(got.shape)}, the config needs {tuple(want.shape)}")
        odd = got.layout != torch.strided or got.is_quantized or got.is_complex()
        if odd or got.dtype.is_floating_point != want.dtype.is_floating_point:
            raise _Damage(f"weight {name} is a {got.dtype} {got.layout} tensor, not {want.dtype}")
        if got.dtype.is_floating_point and not bool(torch.isfinite(got).all()):
            raise _Damage(f"weight {name} holds NaN or infinite values")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> UNet:
    """Load a model file written by :func:`save_model`, without running pickled code.

    Returns
    -------
    UNet
        In eval mode on ``device``, rebuilt from the stored config, with ``.volseg_meta``: the
        dict :func:`read_model_file` gives without ``state_dict`` and ``training_state``
        (normalization, convention, foreground, label_convention, provenance, metrics,
        train_config, extra, ...).

    Raises
    ------
    ModelError
        See :func:`read_model_file`; also ("damaged or inconsistent") when the config is invalid
        or the weights do not fit it (names, shapes, kinds).
    """
    data = read_model_file(path)
    try:
        config = UNetConfig.from_dict(data["config"])
        _check_weights(config, data["state_dict"])
        model = UNet(config)
        model.load_state_dict(data["state_dict"], strict=True)
    except (OptionError, _Damage, TypeError, ValueError, RuntimeError, MemoryError) as exc:
        # OptionError / _Damage: the config or the weights checked; the others: odd values in them
        reason = _printable(str(exc), 200) if isinstance(exc, (OptionError, _Damage)) else _reason(exc)
        raise ModelError(f"model {path}: damaged or inconsistent ({reason}); {_REPAIR}") from None
    model.volseg_meta = {k: v for k, v in data.items() if k not in ("state_dict", "training_state")}
    return model.to(resolve_device(device)).eval()


def model_checksum(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of the model file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
