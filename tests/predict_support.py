"""Tiny models and volumes shared by the predict tests (not a test module)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import support
import torch

from volseg.nn.modelfile import save_model
from volseg.nn.unet import UNet, UNetConfig
from volseg.storage.conventions import Convention

NORM = {"mode": "meanstd", "mean": 0.0, "std": 1.0}


class AddOne(torch.nn.Module):
    """``x + 1`` (summed over the z context): what the tiler must return exactly.

    It checks its input like the U-Net does (sizes multiples of ``divisor``); ``halo`` is
    what predict reads around each block.
    """

    def __init__(self, divisor: int = 8, halo: int = 5, context: int = 0) -> None:
        super().__init__()
        self.config = SimpleNamespace(context=context, out_channels=1)
        self.divisor, self.halo = divisor, halo
        self.volseg_meta = {"normalization": NORM}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2] % self.divisor == 0 and x.shape[-1] % self.divisor == 0, x.shape
        return x.sum(dim=1, keepdim=True) + 1


class Phase(AddOne):
    """``x + 1`` plus a code of each pixel's place on its window's pooling grid.

    A window that does not start on the global pooling grid changes the output, so
    comparing with the whole-section reference checks the alignment exactly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        iy = (torch.arange(h) % self.divisor).float()
        ix = (torch.arange(w) % self.divisor).float()
        return super().forward(x) + 1000 * iy[:, None] + ix[None, :]


class FailOn(AddOne):
    """Raises on any window holding ``value``; counts how often it did."""

    def __init__(self, value: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.value, self.failures = value, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x == self.value).any():
            self.failures += 1
            raise ValueError("sentinel block")
        return super().forward(x)


def write_volume(path: Path, array: np.ndarray, chunks) -> Path:
    """A complete image volume holding ``array``, with ssTEM-like voxels (50 x 4 x 4)."""
    return support.write_volume(path, array, chunks, voxel_size=(50, 4, 4))


def em_like(shape, seed: int = 0) -> np.ndarray:
    """uint8 sections with cell-like blobs and dark membranes (smooth, so a U-Net output varies)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = rng.normal(size=shape)
    smooth = ndimage.gaussian_filter(noise, sigma=(0, 4, 4))
    edges = np.abs(ndimage.sobel(smooth, axis=2)) + np.abs(ndimage.sobel(smooth, axis=1))
    img = 180 - 600 * edges + 10 * rng.normal(size=shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def unet_file(
    path: Path, base: int = 4, depth: int = 3, seed: int = 0, context: int = 0, norm: str = "batch"
) -> Path:
    """A tiny untrained U-Net model file (batch norm with non-trivial running statistics)."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig(base_channels=base, depth=depth, context=context, norm=norm))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    save_model(
        path,
        model,
        normalization={"mode": "meanstd", "mean": 128.0, "std": 50.0},
        convention=Convention(foreground=(0,), foreground_kind="boundary"),
        provenance={},
        metrics={},
        train_config={},
    )
    return path
