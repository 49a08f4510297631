"""The path checks every stage makes at its entry (kinds: :mod:`volseg.storage.conventions`).

Each check raises a :class:`~volseg.errors.VolsegError` whose message is one line that
names the input, says what is wrong and what to do (the CLI prints it and exits 2), and
runs before any output exists, so a refused run leaves nothing that looks complete.

- :func:`local_path`: local paths only, for now; a URL (``s3://...``) is refused instead of
  being taken as a folder named ``s3:``.
- :func:`output_not_input`: an output is never an input, inside one, or above one (same path,
  symlinks, ``..`` routes and hard links included), so ``--overwrite`` can never delete an input.
- :func:`check_device`: the torch device exists in this torch build and on this machine.
- :func:`image_for_model`: an image's dtype and value range against what the model was
  trained on (refused when far off, a warning for a moderate brightness shift).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from volseg.errors import InputError, OptionError, OutputError

if TYPE_CHECKING:
    from volseg.storage.volumes import Volume

__all__ = [
    "ImageCheck",
    "check_device",
    "image_for_model",
    "local_path",
    "looks_like_url",
    "output_not_input",
    "same_file",
]

_NAME_MAX, _PATH_MAX = 255, 4096  # the limits of Linux (and most) file systems
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# What pathlib leaves of a URL: Path("s3://b/x") is "s3:/b/x" (a first part "s3:").
_MANGLED_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:$")


# ----------------------------------------------------------------------------- paths
def looks_like_url(value: str | os.PathLike) -> bool:
    """True for ``scheme://...`` text, and for a path that pathlib made of one (``s3:/bucket``)."""
    text = os.fspath(value)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if _URL.match(text):
        return True
    first = Path(text).parts[0] if Path(text).parts else ""
    return bool(_MANGLED_URL.match(first))


def local_path(value: str | os.PathLike, what: str = "path") -> Path:
    """``value`` as a local :class:`~pathlib.Path`; a URL is refused with one line.

    Parameters
    ----------
    value
        A path given by the user.
    what
        What the path is for (``"IMAGE"``, ``"--json"``), named in the message.
    """
    text = os.fsdecode(os.fspath(value))
    if looks_like_url(text):
        raise InputError(
            f"{text}: {what} is a URL; object storage (s3://, gs://, http://) is not supported yet, "
            "copy the data to a local or mounted disk and pass its path"
        )
    if not text.strip():
        raise InputError(f"{what}: the path is empty; pass a file or folder path")
    if "\x00" in text:
        raise InputError(f"{text!r}: {what} holds a NUL character; pass a plain file path")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{ascii(text)}: {what} holds bytes that are not UTF-8; rename it with UTF-8 characters"
        ) from None
    too_long = next((p for p in Path(text).parts if len(os.fsencode(p)) > _NAME_MAX), None)
    if too_long is not None or len(os.fsencode(text)) > _PATH_MAX:
        part = "a name in it is longer than 255 bytes" if too_long else "it is longer than 4096 bytes"
        raise InputError(f"{text[:60]}...: {what} is too long ({part}); choose a shorter path")
    return Path(text)


def same_file(a: Path, b: Path) -> bool:
    """Both paths exist and are one file or folder (through symlinks and hard links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _relation(out: Path, inp: Path) -> str | None:
    """How output ``out`` and input ``inp`` overlap: ``"is"``, ``"inside"``, ``"contains"`` or None."""
    o, i = out.resolve(), inp.resolve()
    if o == i or same_file(out, inp):
        return "is"
    if i in o.parents:
        return "inside"
    if o in i.parents:
        return "contains"
    return None


_Named = Mapping[str, "str | os.PathLike | None"] | Iterable[tuple[str, "str | os.PathLike | None"]]


def output_not_input(outputs: _Named, inputs: _Named) -> None:
    """Refuse an output that is an input, lies inside one, or holds one.

    Paths are compared resolved (symlinks, ``..``, relative routes) and, where both exist,
    as files (hard links). Writing (or ``--overwrite`` deleting) such an output would
    destroy an input.

    Parameters
    ----------
    outputs, inputs
        What each path is (``"OUT"``, ``"--json"``; ``"input IMAGE"``, ``"model"``) -> the path,
        as a mapping or ``(name, path)`` pairs; ``None`` paths are skipped. Input names read
        after "the", e.g. "would replace the input IMAGE ...".
    """
    pairs = [list(x.items()) if isinstance(x, Mapping) else list(x) for x in (outputs, inputs)]
    for out_name, out in pairs[0]:
        if out is None:
            continue
        for in_name, inp in pairs[1]:
            if inp is None:
                continue
            relation = _relation(Path(os.fspath(out)), Path(os.fspath(inp)))
            if relation is None:
                continue
            where = {
                "is": f"would replace the {in_name} {inp}",
                "inside": f"would be written inside the {in_name} {inp}",
                "contains": f"holds the {in_name} {inp}, which replacing it would delete",
            }[relation]
            raise OutputError(
                f"{out}: the output ({out_name}) {where}; volseg never writes over its inputs, "
                "choose another output path"
            )


# --------------------------------------------------------------------------- volumes
# ---------------------------------------------------------------------------- device
def check_device(device: Any) -> str:
    """Check that ``device`` exists here; return it as text (``auto`` stays ``auto``).

    Refuses, with one line naming what this torch was built with: ``cuda`` or ``cuda:N``
    without CUDA or beyond the GPUs present, ``mps`` without Metal, anything that is not a
    torch device.
    """
    import torch

    text = str(device).strip()
    if text == "auto":
        return text
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise OptionError(
            f"--device {text!r}: not a torch device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    build = f"torch {torch.__version__}"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "was built without CUDA" if torch.version.cuda is None else "finds no usable GPU"
            raise OptionError(
                f"--device {text}: this {build} {why}; use --device cpu (or auto), or install a CUDA "
                "build of torch on a GPU machine"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise OptionError(
                f"--device {text}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}; "
                "choose one of those, or cuda / auto"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            built = mps is not None and mps.is_built()
            why = "finds no Metal GPU" if built else "was built without Metal (MPS)"
            raise OptionError(f"--device {text}: this {build} {why}; use --device cpu or auto")
    elif dev.type != "cpu":
        raise OptionError(f"--device {text}: volseg runs on cpu, cuda or mps; use one of those, or auto")
    return text


# ----------------------------------------------------------------- image vs the model
#: Refuse when the image's mean lies this many training standard deviations off, or its
#: spread differs by this factor: the network would see values it never saw.
FAR_SHIFT = 4.0
FAR_SPREAD = 4.0
#: Warn (brightness and contrast do vary between stacks) beyond these.
WARN_SHIFT = 1.0
WARN_SPREAD = 1.5


@dataclass(frozen=True)
class ImageCheck:
    """What :func:`image_for_model` found: the normalisation to use and what to tell the user."""

    normalization: dict[str, Any] | None
    warnings: tuple[str, ...] = ()
    image_stats: dict[str, float] = field(default_factory=dict)


def sample_stats(array: Any, roi: Sequence[tuple[int, int]] | None = None, max_chunks: int = 8) -> dict:
    """Mean and standard deviation of up to ``max_chunks`` whole chunks spread over ``roi``.

    Reads at most ``max_chunks`` chunks (evenly spaced in C order over the ROI's chunk grid),
    so the cost is bounded on any volume.
    """
    shape = tuple(int(s) for s in array.shape)
    chunks = tuple(int(c) for c in array.chunks)
    roi = tuple(roi) if roi is not None else tuple((0, s) for s in shape)
    first = [a // c for (a, _), c in zip(roi, chunks, strict=True)]
    last = [-(-b // c) for (_, b), c in zip(roi, chunks, strict=True)]
    counts = [max(1, hi - lo) for lo, hi in zip(first, last, strict=True)]
    total = math.prod(counts)
    picks = sorted({int(round(k)) for k in np.linspace(0, total - 1, min(max_chunks, total))})
    values = []
    for flat in picks:
        index = np.unravel_index(flat, counts)
        region = []
        for ax, i in enumerate(index):
            lo = max(roi[ax][0], (first[ax] + int(i)) * chunks[ax])
            hi = min(roi[ax][1], (first[ax] + int(i) + 1) * chunks[ax])
            region.append(slice(lo, max(lo + 1, hi)))
        values.append(np.asarray(array[tuple(region)], dtype=np.float64).ravel())
    sample = np.concatenate(values)
    return {"mean": float(sample.mean()), "std": float(sample.std())}


def image_for_model(
    vol: Volume,
    model_extra: Mapping[str, Any],
    normalization: Mapping[str, Any] | None,
    *,
    roi: Sequence[tuple[int, int]] | None = None,
    rescale: bool = False,
    model_name: str = "the model",
) -> ImageCheck:
    """Check an image against what the model was trained on; the normalisation to apply.

    Refused (one line): a dtype other than the training images' (when the model records it),
    or a value range far outside the training one (when the model records the training
    intensities, as ``volseg train`` does) (mean more than :data:`FAR_SHIFT` training
    standard deviations off, or a spread :data:`FAR_SPREAD` times larger or smaller). A
    moderate shift gives a warning. With ``rescale`` the image's own sampled mean and standard
    deviation are used for normalisation instead (its values are mapped onto the training
    range), and neither dtype nor range is refused.
    """
    if vol.dtype.kind not in "uif" or vol.dtype.kind == "b":
        raise InputError(
            f"{vol.path}: dtype {vol.dtype} is not an image; predict needs integer or float grey values"
        )
    stats = sample_stats(vol.array, roi)
    if rescale:
        if not stats["std"] > 0:
            raise InputError(
                f"{vol.path}: the sampled chunks are constant ({stats['mean']:g}); --rescale needs contrast"
            )
        norm = {"mode": "meanstd", "mean": stats["mean"], "std": stats["std"]}
        return ImageCheck(norm, (), stats)
    trained_dtype = model_extra.get("image_dtype")
    # What 'volseg train' measured on its training sections; a model saved otherwise records no range.
    intensity = model_extra.get("intensity") or {}
    mean, std = intensity.get("mean"), intensity.get("std")
    fix = "convert it like the training images, or pass --rescale to map its values onto the training range"
    if trained_dtype and np.dtype(trained_dtype) != vol.dtype:
        raise InputError(
            f"{vol.path}: is {vol.dtype}, but {model_name} was trained on {trained_dtype} images"
            f"{_trained(mean, std)}; {fix}"
        )
    warnings: list[str] = []
    if isinstance(mean, (int, float)) and isinstance(std, (int, float)) and std > 0:
        shift = abs(stats["mean"] - mean) / std
        spread = (stats["std"] / std) if stats["std"] > 0 else 0.0
        seen = f"mean {stats['mean']:.4g}, std {stats['std']:.4g}"
        if shift > FAR_SHIFT or spread > FAR_SPREAD or spread < 1 / FAR_SPREAD:
            raise InputError(
                f"{vol.path}: its values ({seen}) lie far outside the range {model_name} was trained on"
                f"{_trained(mean, std)}; {fix}"
            )
        if shift > WARN_SHIFT or spread > WARN_SPREAD or spread < 1 / WARN_SPREAD:
            warnings.append(
                f"{vol.path}: brightness or contrast differs from the training images ({seen} against "
                f"mean {mean:.4g}, std {std:.4g}); results may suffer, --rescale maps it onto the "
                "training range"
            )
    return ImageCheck(dict(normalization) if normalization else None, tuple(warnings), stats)


def _trained(mean: Any, std: Any) -> str:
    if isinstance(mean, (int, float)) and isinstance(std, (int, float)):
        return f" (mean {mean:.4g}, std {std:.4g})"
    return ""
