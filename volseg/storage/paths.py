"""The path checks every stage makes at its entry (kinds: :mod:`volseg.storage.conventions`).

Each check raises a :class:`~volseg.errors.VolsegError` whose message is one line that
names the input, says what is wrong and what to do (the CLI prints it and exits 2), and
runs before any output exists, so a refused run leaves nothing that looks complete.

- :func:`local_path`: for what must be a local file (a report, a picture, a model written by
  train); a URL (``s3://...``) is refused instead of being taken as a folder named ``s3:``.
  Volumes may be URLs: :func:`volseg.storage.locations.location`.
- :func:`location`: a volume's place, a local path or a URL (``s3://...``, :mod:`volseg.storage.locations`).
- :func:`output_not_input`: an output is never an input, inside one, or above one (same path,
  symlinks, ``..`` routes and hard links included), so ``--overwrite`` can never delete an input.

The checks that need the network's view live with it: the torch device in
:func:`volseg.nn.runtime.check_device`, an image against the model's training intensities in
:func:`volseg.nn.intensity.image_for_model`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from volseg.errors import InputError, OutputError, VolsegError
from volseg.storage.locations import Location, check, is_url, remove_tree

__all__ = [
    "make_folder",
    "prepare_output",
    "local_path",
    "location",
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
        text = re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]+):/(?!/)", r"\1://", text)  # what pathlib left of a URL
        raise InputError(
            f"{text}: {what} is a URL, but it must be a local path (only volumes are read and written "
            "on object storage); pass a local file path"
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


def location(value: str | os.PathLike | Location, what: str = "path") -> Path | Location:
    """A volume's place: a local :class:`~pathlib.Path` (checked as :func:`local_path` does), or a
    :class:`~volseg.storage.locations.Location` for a URL (``s3://...``); ``what`` names it in errors."""
    if isinstance(value, Location):
        return value
    text = value if isinstance(value, str) else os.fsdecode(os.fspath(value))
    if is_url(text):
        try:
            return Location(text)
        except VolsegError as exc:
            raise type(exc)(f"{what}: {exc}") from None
    return local_path(text, what)


def same_file(a: Path | Location, b: Path | Location) -> bool:
    """Both paths exist and are one file or folder (through symlinks and hard links); URLs: the same URL."""
    if isinstance(a, Location) or isinstance(b, Location):
        return a == b
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _relation(out: Path | Location, inp: Path | Location) -> str | None:
    """How output ``out`` and input ``inp`` overlap: ``"is"``, ``"inside"``, ``"contains"`` or None."""
    if isinstance(out, Location) or isinstance(inp, Location):
        if not (isinstance(out, Location) and isinstance(inp, Location)) or out.protocol != inp.protocol:
            return None
        o_key, i_key = out.key.rstrip("/"), inp.key.rstrip("/")
        if o_key == i_key:
            return "is"
        if o_key.startswith(i_key + "/"):
            return "inside"
        if i_key.startswith(o_key + "/"):
            return "contains"
        return None
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
            relation = _relation(_as_target(out), _as_target(inp))
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


def _as_target(value: str | os.PathLike | Location) -> Path | Location:
    if isinstance(value, Location) or is_url(value):
        return value if isinstance(value, Location) else Location(str(value))
    return Path(os.fspath(value))


def _prepare_remote(path: Location, overwrite: bool) -> None:
    check(path, writing=True)
    if path.exists():
        if not overwrite:
            raise OutputError(
                f"{path}: output already exists; pass --overwrite to replace it (or --resume to continue it)"
            )
        # --overwrite replaces volumes only: never delete objects that are not a Zarr volume.
        if not (path / "zarr.json").is_file():
            raise OutputError(
                f"{path}: holds objects that are not a Zarr volume; refusing to delete them, "
                "choose another output"
            )
        remove_tree(path)


def prepare_output(path: Path | Location, overwrite: bool) -> None:
    """Make way for an output volume at ``path``: refuse what it must not replace, create its folder."""
    if isinstance(path, Location):
        _prepare_remote(path, overwrite)
        return
    if path.exists():
        if not overwrite:
            raise OutputError(
                f"{path}: output already exists; pass --overwrite to replace it (or --resume to continue it)"
            )
        # --overwrite replaces volumes only: never delete a user's file or a folder of other things.
        if not path.is_dir() or (not (path / "zarr.json").exists() and any(path.iterdir())):
            raise OutputError(
                f"{path}: exists and is not a Zarr volume; refusing to delete it, choose another output"
            )
        shutil.rmtree(path)
    parent = path.parent if str(path.parent) else Path(".")
    blocker = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"{path}: {blocker} is a file, not a folder; choose an output path in a folder")
    make_folder(parent, path)
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: folder {parent} is not writable; choose a writable location")


def make_folder(folder: Path, what: Path | None = None) -> Path:
    """Create ``folder`` (and its parents); a failure is one OutputError line naming ``what`` (the output)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{what or folder}: cannot create the output folder ({exc.strerror or exc}); "
            "choose a writable location"
        ) from exc
    return folder
