"""Downsampled pyramid levels (2-D, per section), written chunk by chunk."""

from __future__ import annotations

import dask.array as da
import numpy as np
import zarr


def downsample2(block: np.ndarray, method: str) -> np.ndarray:
    """Halve ``(Z, Y, X)`` in y and x: ``mean`` for intensities, ``nearest`` for labels."""
    if method == "nearest":
        return block[:, ::2, ::2]
    z, y, x = block.shape
    pad = ((0, 0), (0, y % 2), (0, x % 2))
    b = np.pad(block.astype(np.float32), pad, mode="edge")
    out = b.reshape(z, b.shape[1] // 2, 2, b.shape[2] // 2, 2).mean(axis=(2, 4))
    if np.issubdtype(block.dtype, np.integer):
        out = np.rint(out)
    return out.astype(block.dtype)


def write_levels(group: zarr.Group, levels: int, *, method: str = "mean") -> None:
    """Add levels ``1..levels`` (from array ``0``) to a volume's ``group``; list them in its OME metadata."""
    attrs = dict(group.attrs)
    ms = attrs["ome"]["multiscales"][0]
    base_scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    datasets = [ms["datasets"][0]]
    prev = group["0"]
    for n in range(1, levels + 1):
        src = da.from_zarr(prev)
        # 2x2 in (y, x) per output chunk: input chunks of twice the output chunk
        src = src.rechunk((prev.chunks[0], prev.chunks[1] * 2, prev.chunks[2] * 2))
        small = src.map_blocks(
            downsample2,
            method,
            dtype=prev.dtype,
            chunks=tuple(tuple(-(-c // 2) if i else c for c in dim) for i, dim in enumerate(src.chunks)),
        )
        arr = group.create_array(
            str(n),
            shape=small.shape,
            dtype=prev.dtype,
            chunks=prev.chunks,
            compressors=prev.compressors,
            fill_value=prev.fill_value,
            dimension_names=("z", "y", "x"),
            overwrite=True,
        )
        da.store(small.rechunk(arr.chunks), arr, lock=False)
        scale = [base_scale[0], base_scale[1] * 2**n, base_scale[2] * 2**n]
        datasets.append({"path": str(n), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
        prev = arr
    ms["datasets"] = datasets
    group.attrs.update({"ome": attrs["ome"]})
