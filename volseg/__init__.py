"""volseg: U-Net segmentation of electron-microscopy volumes, block by block.

The public API mirrors the CLI; heavy modules (torch, dask.distributed) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; imported lazily so `volseg --help` stays fast.
_API = {
    "convert": "volseg.convert",
    "open_volume": "volseg.volume",
    "create_volume": "volseg.volume",
    "volume_info": "volseg.volume",
    "synth": "volseg.synth",
    "train": "volseg.train",
    "load_model": "volseg.model",
    "predict": "volseg.predict",
    "segment": "volseg.segment",
    "evaluate": "volseg.evaluate",
    "preview": "volseg.preview",
    "VolsegError": "volseg.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'volseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
