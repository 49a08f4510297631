"""How volumes are stored: compressors (``--codec``), shards and dtypes as zarr v3 takes them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from volseg.errors import InputError, OptionError

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "ZSTD_LEVELS",
    "codec_name",
    "parse_codec",
    "resolve_shards",
    "zarr_dtype",
]

CODECS = ("blosc-zstd", "blosc-lz4", "zstd", "gzip", "none")
DEFAULT_CODEC = "blosc-zstd"
#: zstd's own range of compression levels (numcodecs / zarr refuse others).
ZSTD_LEVELS = (-131072, 22)


def parse_codec(spec: str | None) -> list[Any] | None:
    """Turn ``NAME[:LEVEL]`` into Zarr v3 compressors.

    Parameters
    ----------
    spec
        One of ``blosc-zstd`` (default), ``blosc-lz4``, ``zstd``, ``gzip``, ``none``,
        optionally followed by ``:LEVEL`` (for example ``zstd:3``).

    Returns
    -------
    list or None
        Compressors for :func:`zarr.create_array`; ``None`` means uncompressed.
    """
    spec = (spec or DEFAULT_CODEC).strip().lower()
    name, _, level_text = spec.partition(":")
    if name not in CODECS:
        raise OptionError(
            f"--codec {spec!r}: unknown codec; use one of {', '.join(CODECS)} (optionally :LEVEL)"
        )
    level: int | None = None
    if level_text:
        try:
            level = int(level_text)
        except ValueError:
            raise OptionError(
                f"--codec {spec!r}: level {level_text!r} is not an integer; write e.g. zstd:3"
            ) from None
    if name == "none":
        return None
    if name.startswith("blosc"):
        clevel = 5 if level is None else level
        if not 0 <= clevel <= 9:
            raise OptionError(f"--codec {spec!r}: blosc level must be 0..9 (5 default); write e.g. {name}:5")
        return [BloscCodec(cname=name.split("-")[1], clevel=clevel, shuffle="bitshuffle")]
    if name == "zstd":
        zlevel = 3 if level is None else level
        if not ZSTD_LEVELS[0] <= zlevel <= ZSTD_LEVELS[1]:
            raise OptionError(
                f"--codec {spec!r}: zstd level must be {ZSTD_LEVELS[0]}..{ZSTD_LEVELS[1]} "
                "(1..19 usual, 3 default, negative: faster); write e.g. zstd:3"
            )
        return [ZstdCodec(level=zlevel)]
    glevel = 5 if level is None else level
    if not 0 <= glevel <= 9:
        raise OptionError(f"--codec {spec!r}: gzip level must be 0..9 (5 default); write e.g. gzip:5")
    return [GzipCodec(level=glevel)]


def codec_name(array: zarr.Array) -> str:
    names = []
    for c in array.compressors:
        if isinstance(c, BloscCodec):
            names.append(f"blosc-{c.cname.value}:{c.clevel}")
        elif isinstance(c, ZstdCodec):
            names.append(f"zstd:{c.level}")
        elif isinstance(c, GzipCodec):
            names.append(f"gzip:{c.level}")
        else:
            names.append(type(c).__name__)
    return "+".join(names) or "none"


def resolve_shards(
    shards: Sequence[int], chunks: Sequence[int], shape: Sequence[int], name: str = "shards"
) -> tuple[int, ...]:
    """Shards clipped to the volume (rounded up to whole chunks); refused unless whole chunks.

    ``chunks`` are already clipped to ``shape``; ``name`` is the option the message names.
    """
    clipped = tuple(
        max(c, min(int(s), -(-n // c) * c)) for s, c, n in zip(shards, chunks, shape, strict=True)
    )
    if any(s % c for s, c in zip(clipped, chunks, strict=True)):
        example = ",".join(str(c * 4 if i else c) for i, c in enumerate(chunks))
        raise OptionError(
            f"{name} {','.join(map(str, shards))}: each side must be a multiple of the chunks "
            f"{','.join(map(str, chunks))}, e.g. {example}"
        )
    return clipped


def zarr_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as zarr v3 knows it: native byte order, canonical numpy type (``longlong`` -> ``int64``)."""
    try:
        dt = np.dtype(np.dtype(dtype).newbyteorder("=").str)
    except TypeError:
        raise OptionError(f"dtype {dtype!r} is not a numpy dtype") from None
    if dt.kind not in "biuf":
        raise InputError(
            f"dtype {dt}: volseg volumes hold integers, floats or booleans; convert the data to one of those"
        )
    return dt
