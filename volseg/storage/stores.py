"""The zarr store volseg reads its volumes through: a missing chunk is damage, not zeros."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zarr.storage import LocalStore, WrapperStore

from volseg.errors import InputError

__all__ = ["EVERY_CHUNK", "CheckedStore", "MissingChunkError"]

#: Recorded in every volume volseg creates: each chunk of each array is stored (write_empty_chunks),
#: so a chunk missing from the store is damage, not the fill value (see :class:`CheckedStore`).
EVERY_CHUNK = "every_chunk_stored"


class MissingChunkError(InputError):
    """A chunk of a volume that stores every chunk is absent: the volume is damaged."""


class CheckedStore(WrapperStore):
    """A read-only store (local or remote) on which, once ``strict``, a missing level-0 chunk is an error.

    volseg writes every chunk of level ``0`` (:data:`EVERY_CHUNK`), so in its volumes a chunk
    that is not there was lost (deleted, a failed copy, a damaged disk). The Zarr spec reads a
    missing chunk as the fill value, which would turn damage into silent zeros; here the read
    fails with one line naming the chunk. The check costs nothing: zarr asks the store for the
    chunk anyway, and the store answers "absent" instead of bytes. ``strict`` is set once the
    volume's metadata is read (volumes from other writers stay lenient).
    """

    def __init__(self, path: Path | Any, root: str | None = None) -> None:
        # A local folder, or any zarr store (object storage: an FsspecStore) with its URL as ``root``.
        store = LocalStore(str(path), read_only=True) if isinstance(path, (str, Path)) else path
        super().__init__(store)
        self._root, self.strict = str(path) if root is None else root, False

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self._store, "root": self._root, "strict": self.strict}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._store, self._root, self.strict = state["store"], state["root"], state["strict"]

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        value = await self._store.get(key, prototype, byte_range)
        if value is None and self.strict and key.startswith("0/c/"):
            raise MissingChunkError(
                f"{self._root}: chunk {key} is missing; volseg stores every chunk, so the volume is "
                "damaged: restore it from a copy, or write it again with the command that made it"
            )
        return value
