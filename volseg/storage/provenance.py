"""Where a volume (or a model) came from: sources with size and time, the command, versions, config."""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from volseg.core.resources import machine_summary

__all__ = ["now", "provenance"]


def _machine() -> dict[str, Any]:
    """The machine summary (:func:`volseg.core.resources.machine_summary`), with torch's view where loaded.

    torch is not imported for it: a stage that uses the network has loaded it already, and one that
    does not (convert, synth) has no torch facts to record.
    """
    summary: dict[str, Any] = dict(machine_summary())
    torch = sys.modules.get("torch")
    if torch is not None:
        summary["torch"] = str(torch.__version__)
        summary["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            summary["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return summary


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import tifffile

    from volseg.version import __version__

    return {
        "volseg": __version__,
        "zarr": zarr.__version__,
        "dask": version("dask"),
        "tifffile": tifffile.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance(
    sources: Iterable[str | os.PathLike] = (),
    config: dict[str, Any] | None = None,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Describe where a volume came from.

    Each source file is recorded with its absolute path, size and modification
    time, so a later reader can tell whether the source changed since.
    """
    from volseg.storage.locations import Location, is_url

    records = []
    for src in sources:
        if isinstance(src, Location) or is_url(src):
            records.append({"path": str(src)})  # a URL: its objects have no one size or time
            continue
        p = Path(src)
        entry: dict[str, Any] = {"path": str(p.resolve())}
        if p.exists():
            st = p.stat()
            entry["size"] = st.st_size
            entry["mtime"] = _dt.datetime.fromtimestamp(st.st_mtime, _dt.timezone.utc).isoformat(
                timespec="seconds"
            )
        records.append(entry)
    return {
        "sources": records,
        "command": list(sys.argv if command is None else command),
        "versions": _versions(),
        "machine": _machine(),
        "created": now(),
        "config": config or {},
    }
