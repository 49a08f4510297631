"""How far each job of a job array got: ``volseg info`` on an output written with ``--part K/N``.

predict: block ``i`` (tasks in the order of :func:`volseg.core.tiling.blocks`) belongs to part
``i % N + 1``. segment: unit ``i`` of pass 1 (a band of whole sections, one block deep, in 2-D; a block
in C order in 3-D) and the output blocks it covers belong to part ``i % N + 1``; a unit of pass 1 is done
when its side file is stored (2-D sparse ids: when its blocks are), or once the output is complete.
These are the shares the stages hand out (tests check them against the stages).
"""

from __future__ import annotations

import itertools
from typing import Any

from volseg.storage.locations import Location

Volume = Any  # a volseg.storage.volumes.Volume (which imports this module to describe itself)

__all__ = ["SEGMENT_UNITS", "parse_part", "part_rows", "segment_part_rows", "segment_units", "unit_file_name"]

#: Where segment keeps the side files of pass 1, inside the output volume.
SEGMENT_UNITS = ".volseg/segment/units"


def parse_part(text: object) -> tuple[int, int]:
    """``"K/N"`` (``--part``) as ``(K, N)`` with ``1 <= K <= N``; anything else is one OptionError line."""
    from volseg.errors import OptionError

    k, sep, n = str(text).partition("/")
    try:
        kn = int(k), int(n)
    except ValueError:
        kn = (0, 0)
    if not sep or not 1 <= kn[0] <= kn[1]:
        raise OptionError(f"--part {text!r}: write K/N with 1 <= K <= N, e.g. --part 3/8")
    return kn


def part_rows(vol: Volume) -> dict[str, Any]:
    """``{"parts": [{"part": "K/N", ...}, ...]}`` for an output written in parts, else ``{}``."""
    predict, segment = vol.meta.get("predict") or {}, vol.meta.get("segment") or {}
    if predict.get("parts"):
        return _predict_rows(
            vol, int(predict["parts"]), (predict.get("settings") or {}).get("chunks_per_block")
        )
    if segment.get("parts"):
        opts = segment.get("options") or {}
        mode = opts.get("mode", "2d")
        sparse = mode == "2d" and not opts.get("relabel")
        return {"parts": segment_part_rows(vol, int(segment["parts"]), mode, sparse)}
    return {}


def _predict_rows(vol: Volume, n: int, chunks_per_block: Any) -> dict[str, Any]:
    from volseg.core import tiling

    if not chunks_per_block:
        return {}
    done = vol.done_blocks()
    counts = [[0, 0] for _ in range(n)]
    for i, block in enumerate(tiling.blocks(vol.shape, vol.block_shape, tuple(chunks_per_block))):
        counts[i % n][0] += all(c in done for c in block.chunk_ids)
        counts[i % n][1] += 1
    return {
        "parts": [{"part": f"{k + 1}/{n}", "blocks_done": d, "blocks": t} for k, (d, t) in enumerate(counts)]
    }


def segment_units(vol: Volume, mode: str) -> list[tuple[tuple[int, ...], list[tuple[int, ...]]]]:
    """segment's units of pass 1 in order: each unit's index and the output blocks it covers."""
    if mode == "3d":
        return [(b, [b]) for b in vol.block_ids()]
    rest = list(itertools.product(*(range(n) for n in vol.block_grid[1:])))
    return [((z,), [(z, *r) for r in rest]) for z in range(vol.block_grid[0])]


def unit_file_name(index: tuple[int, ...]) -> str:
    """The name of a unit's side file (``<iz>.<iy>.<ix>.npz``, 2-D ``<iz>.npz``)."""
    return ".".join(map(str, index)) + ".npz"


def segment_part_rows(vol: Volume, parts: int, mode: str, sparse: bool) -> list[dict[str, Any]]:
    """Per part of a segmentation written in ``parts`` jobs: its units of pass 1 and its blocks."""
    done = vol.done_blocks()
    folder = vol.path / SEGMENT_UNITS
    if isinstance(folder, Location):
        stored = set(folder.listdir())
    else:
        stored = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    rows = [
        {"part": f"{k + 1}/{parts}", "units_done": 0, "units": 0, "blocks_done": 0, "blocks": 0}
        for k in range(parts)
    ]
    for i, (index, blocks) in enumerate(segment_units(vol, mode)):
        row = rows[i % parts]
        finished = sum(b in done for b in blocks)
        row["units"] += 1
        row["blocks"] += len(blocks)
        row["blocks_done"] += finished
        row["units_done"] += vol.complete or (
            finished == len(blocks) if sparse else unit_file_name(index) in stored
        )
    return rows
