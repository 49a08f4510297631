"""volseg: U-Net segmentation of electron-microscopy volumes, block by block.

The public API mirrors the CLI; heavy modules (torch, dask.distributed) load on first use.

Each stage lives in a module of the same name (``volseg/synth.py`` defines ``synth``).
Python binds an imported submodule on its package, which would shadow the function; so
stage modules are made callable: ``volseg.synth(...)`` calls the function, and
``volseg.synth.synth_block`` still reaches the module's other names.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# Stage functions defined in a module of the same name.
_STAGES = ("convert", "synth", "train", "predict", "segment", "evaluate", "preview", "demo")
# Other public names -> the module that defines them.
_NAMES = {
    "open_volume": "volseg.volume",
    "create_volume": "volseg.volume",
    "volume_info": "volseg.volume",
    "load_model": "volseg.model",
    "VolsegError": "volseg.errors",
}

__all__ = ["__version__", *_STAGES, *_NAMES]


class _CallableModule(types.ModuleType):
    """A stage module that calls its same-named function when called."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # The import system binds each loaded submodule here: make stage modules callable.
        if name in _STAGES and isinstance(value, types.ModuleType) and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _STAGES:
        return importlib.import_module(f"volseg.{name}")
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'volseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
