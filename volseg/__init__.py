"""volseg: U-Net segmentation of electron-microscopy volumes, block by block.

The public API mirrors the CLI, one plain function per command::

    import volseg

    image = volseg.convert("stack/", "image.zarr")
    volseg.train("image.zarr", "labels.zarr", "model.pt")
    volseg.predict("model.pt", "image.zarr", "prob.zarr")

Each name is looked up in the layer that defines it (see ``docs/architecture.md``) on first use, so
``import volseg`` stays fast and loads neither torch nor dask.distributed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from volseg.version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name loads on first use
    from volseg.app.demo import demo
    from volseg.errors import VolsegError
    from volseg.nn.modelfile import load_model
    from volseg.stages.convert import convert
    from volseg.stages.evaluate import evaluate
    from volseg.stages.predict import predict
    from volseg.stages.preview import preview
    from volseg.stages.segment import segment
    from volseg.stages.synth import synth
    from volseg.stages.train import train
    from volseg.storage.locations import configure_storage
    from volseg.storage.volumes import create_volume, open_volume, volume_info

# Public name -> the module that defines it, in the order of the data flow.
_NAMES = {
    "synth": "volseg.stages.synth",
    "convert": "volseg.stages.convert",
    "train": "volseg.stages.train",
    "predict": "volseg.stages.predict",
    "segment": "volseg.stages.segment",
    "evaluate": "volseg.stages.evaluate",
    "preview": "volseg.stages.preview",
    "demo": "volseg.app.demo",
    "open_volume": "volseg.storage.volumes",
    "create_volume": "volseg.storage.volumes",
    "volume_info": "volseg.storage.volumes",
    "configure_storage": "volseg.storage.locations",
    "load_model": "volseg.nn.modelfile",
    "VolsegError": "volseg.errors",
}

__all__ = [
    "__version__",
    "synth",
    "convert",
    "train",
    "predict",
    "segment",
    "evaluate",
    "preview",
    "demo",
    "open_volume",
    "create_volume",
    "volume_info",
    "configure_storage",
    "load_model",
    "VolsegError",
]


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'volseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
