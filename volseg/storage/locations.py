"""Where volumes live: a local folder, or a URL on object storage read and written through fsspec.

A volume path may be local (``image.zarr``) or a URL: ``s3://bucket/img.zarr`` (AWS S3, MinIO, Ceph and
every other S3-compatible store; ``s3fs``), ``gs://bucket/img.zarr`` (``gcsfs``), ``memory://img.zarr``
(one process's memory: tests and notebooks), or ``http(s)://host/img.zarr`` (read only). Local paths stay
:class:`pathlib.Path`; a URL becomes a :class:`Location`, which offers the few path operations the stages
use (``/``, ``name``, ``stem``, ``parent``) plus the object operations the completion record needs.

The arrays go through zarr's own store layer (:class:`zarr.storage.FsspecStore`); the completion
record of a remote volume is one empty object per block (``.volseg/done/<iz>.<iy>.<ix>``), written with
one PUT after the block's chunks: an object store has no rename, but every PUT is atomic and durable
when it returns, so the record needs neither. Side files are written whole with one PUT for the same
reason (:func:`write_bytes`).

Storage options (endpoint, profile, anonymous access, any fsspec option) come from
:func:`configure` (the CLI's ``volseg --storage FILE.toml --endpoint-url URL --profile NAME --anon``),
the file named by ``$VOLSEG_STORAGE``, or the storage's own environment (``AWS_PROFILE``,
``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...). A :class:`Location` carries its options, so it
pickles to dask workers whole. :func:`check` turns the failures a user causes (a bucket that does not
exist, refused credentials, an endpoint that does not answer) into one line within seconds.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from volseg.errors import InputError, OptionError, OutputError, VolsegError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "PROTOCOLS",
    "Location",
    "age_seconds",
    "at",
    "check",
    "configure",
    "configure_storage",
    "exists",
    "is_url",
    "load_options",
    "read_bytes",
    "remove",
    "remove_tree",
    "snapshot",
    "storage_errors",
    "write_bytes",
]

#: URL schemes volseg reads and writes (http and https: read only), and the package each needs.
PROTOCOLS = {
    "s3": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "memory": "fsspec",
    "http": "aiohttp",
    "https": "aiohttp",
}
READ_ONLY = ("http", "https")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$")
#: The options every s3 location starts from: a dead endpoint fails in seconds, not minutes.
_S3_DEFAULTS: dict[str, Any] = {"config_kwargs": {"connect_timeout": 5, "retries": {"max_attempts": 3}}}
#: Options set by :func:`configure`, per protocol.
_CONFIGURED: dict[str, dict[str, Any]] = {}
_FILE_ENV = "VOLSEG_STORAGE"


def is_url(value: object) -> bool:
    """True for ``scheme://...`` text (a Windows drive ``C:\\`` is not a URL)."""
    return isinstance(value, (str, Location)) and bool(_URL.match(str(value)))


# ----------------------------------------------------------------------------- options
def load_options(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read a storage TOML: one table per protocol, its keys passed to that protocol's fsspec filesystem.

    Example::

        [s3]
        endpoint_url = "http://127.0.0.1:9000"   # MinIO, Ceph, a local S3
        profile = "lab"                          # a profile of ~/.aws/credentials
        # anon = true                            # public buckets

    Raises
    ------
    OptionError
        The file is missing, not TOML, or holds a table for a protocol volseg does not read.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OptionError(f"{path}: no such storage options file; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"{path}: cannot read the storage options ({exc}); check the file") from None
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"{path}: not valid TOML ({exc}); fix the file") from None
    for key, value in data.items():
        if key not in PROTOCOLS:
            raise OptionError(
                f"{path}: [{key}] is not a storage protocol volseg reads; use tables "
                f"{', '.join(f'[{p}]' for p in ('s3', 'gs', 'http', 'memory'))}"
            )
        if not isinstance(value, dict):
            raise OptionError(f"{path}: {key} must be a table ([{key}]) of options, not {value!r}")
    return data


def configure(
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    file: str | os.PathLike | None = None,
    endpoint_url: str | None = None,
    profile: str | None = None,
    anon: bool | None = None,
) -> None:
    """Set the storage options of this process's new locations (replacing what was configured).

    Parameters
    ----------
    options
        Per protocol, the keyword arguments of its fsspec filesystem (``{"s3": {"endpoint_url": ...}}``).
    file
        A TOML file of the same (:func:`load_options`); ``options`` and the keywords apply over it.
    endpoint_url, profile, anon
        S3 shorthands: a non-AWS endpoint, a credentials profile, anonymous access (public buckets).
    """
    merged: dict[str, dict[str, Any]] = {}
    for source in (load_options(file) if file else {}, options or {}):
        for protocol, values in source.items():
            merged.setdefault(protocol, {}).update(values)
    s3 = {"endpoint_url": endpoint_url, "profile": profile, "anon": anon}
    s3 = {k: v for k, v in s3.items() if v is not None}
    if s3:
        merged.setdefault("s3", {}).update(s3)
    if endpoint_url is not None and not _URL.match(endpoint_url):
        raise OptionError(f"--endpoint-url {endpoint_url!r}: give a URL such as http://127.0.0.1:9000")
    _CONFIGURED.clear()
    _CONFIGURED.update(merged)


#: The public name (``volseg.configure_storage``).
configure_storage = configure


def options_for(protocol: str) -> dict[str, Any]:
    """A new location's options: the defaults, then the file ``$VOLSEG_STORAGE`` names, then configured."""
    out: dict[str, Any] = {}
    if protocol == "s3":
        out.update({k: dict(v) if isinstance(v, dict) else v for k, v in _S3_DEFAULTS.items()})
    env = os.environ.get(_FILE_ENV)
    if env and protocol not in _CONFIGURED:
        out.update(load_options(env).get(protocol, {}))
    out.update(_CONFIGURED.get(protocol, {}))
    return out


def snapshot() -> dict[str, dict[str, Any]]:
    """Every protocol's options as this process would use them: what a task takes to another process."""
    return {protocol: options_for(protocol) for protocol in PROTOCOLS}


def at(value: str | os.PathLike | Location, storage: Mapping[str, Mapping[str, Any]] | None) -> Any:
    """``value`` as a :class:`Location` with the options of ``storage`` (a :func:`snapshot`) if it is a
    URL; otherwise unchanged (in a worker process, the options the main process was configured with)."""
    if storage is None or isinstance(value, Location) or not is_url(value):
        return value
    protocol = _URL.match(str(value)).group(1).lower()  # type: ignore[union-attr]
    return Location(str(value), storage.get(protocol, {}))


# ---------------------------------------------------------------------------- location
class Location:
    """A URL on object storage with its storage options: the remote counterpart of a :class:`~pathlib.Path`.

    Parameters
    ----------
    url
        ``protocol://bucket/key...``; a trailing ``/`` is dropped.
    options
        The fsspec filesystem's options; default: :func:`options_for` the protocol.
    """

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        match = _URL.match(str(url))
        if not match:
            raise OptionError(f"{url}: not a URL (protocol://bucket/path)")
        protocol, rest = match.group(1).lower(), match.group(2).rstrip("/")
        if protocol not in PROTOCOLS:
            raise InputError(
                f"{url}: volseg does not read {protocol}:// URLs; use a local path or s3://, gs://, "
                "memory://, http(s)://"
            )
        if not rest:
            raise InputError(f"{url}: the URL names no bucket or path; give protocol://bucket/name.zarr")
        self.protocol, self.key = protocol, rest
        self.options = dict(options_for(protocol) if options is None else options)

    # ---- path-like
    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.key}"

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __truediv__(self, key: str) -> Location:
        return Location(f"{self.url}/{str(key).strip('/')}", self.options)

    def joinpath(self, *keys: str) -> Location:
        out = self
        for key in keys:
            out = out / key
        return out

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    def with_name(self, name: str) -> Location:
        return self.parent / name

    @property
    def parent(self) -> Location:
        head = posixpath.dirname(self.key)
        return Location(f"{self.protocol}://{head or self.key}", self.options)

    def resolve(self) -> Location:
        return self

    @property
    def bucket(self) -> str:
        """The bucket (s3, gs) or host (http) the location lies in."""
        return self.key.split("/", 1)[0]

    @property
    def read_only(self) -> bool:
        return self.protocol in READ_ONLY

    def relative_to(self, other: Location) -> str:
        return self.key[len(other.key) :].lstrip("/")

    # ---- the store and the filesystem
    @property
    def fs(self) -> Any:
        """The (synchronous) fsspec filesystem; fsspec caches one instance per protocol and options."""
        import fsspec

        with storage_errors(self):
            if self.protocol == "memory":
                return fsspec.filesystem("memory")
            return fsspec.filesystem(self.protocol, **self.options)

    @property
    def fs_path(self) -> str:
        """The path the filesystem knows this location by (memory: a leading ``/``)."""
        if self.protocol == "memory":
            return "/" + self.key
        if self.protocol in READ_ONLY:
            return self.url
        return self.key

    def zarr_store(self, read_only: bool) -> Any:
        """zarr's own store over this location."""
        from zarr.storage import FsspecStore

        with storage_errors(self):
            return FsspecStore.from_url(self.url, storage_options=self.options or None, read_only=read_only)

    def __getstate__(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "key": self.key, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # ---- objects
    def _fresh_fs(self, path: str | None = None) -> Any:
        """The filesystem with its listing cache for ``path`` (default: this location) dropped: other jobs
        write the same prefixes, so what this process listed before may be out of date."""
        fs = self.fs
        with contextlib.suppress(AttributeError, NotImplementedError):
            fs.invalidate_cache(self.fs_path if path is None else path)
        return fs

    def exists(self) -> bool:
        """An object at this key, or any object under it as a prefix (fsspec's ``exists`` would hide
        refused credentials and dead endpoints as "absent": ``info`` lets them through)."""
        with storage_errors(self):
            fs = self._fresh_fs()
            try:
                fs.info(self.fs_path)
            except FileNotFoundError:
                return False
            return True

    def is_file(self) -> bool:
        with storage_errors(self):
            return bool(self._fresh_fs().isfile(self.fs_path))

    def is_symlink(self) -> bool:  # object stores have no links
        return False

    def is_dir(self) -> bool:
        return self.exists() and not self.is_file()

    def listdir(self) -> list[str]:
        """The names directly under this prefix (fresh: not from a listing cache)."""
        with storage_errors(self):
            fs = self.fs
            try:
                entries = fs.ls(self.fs_path, detail=False, refresh=True)
            except TypeError:  # filesystems without a listing cache
                entries = fs.ls(self.fs_path, detail=False)
            except FileNotFoundError:
                return []
        return [posixpath.basename(str(e).rstrip("/")) for e in entries]

    def find(self) -> list[str]:
        """The keys of every object under this prefix, relative to it."""
        with storage_errors(self):
            fs = self._fresh_fs()
            try:
                found = fs.find(self.fs_path)
            except FileNotFoundError:
                return []
        root = self.fs_path.rstrip("/") + "/"
        return [str(f)[len(root) :] for f in found if str(f).startswith(root)]

    def du(self) -> int:
        with storage_errors(self):
            try:
                return int(self.fs.du(self.fs_path, total=True))
            except FileNotFoundError:
                return 0


# ----------------------------------------------------------------------- files and objects
def exists(target: Path | Location) -> bool:
    return target.exists()


def read_bytes(target: Path | Location) -> bytes:
    """The whole file or object."""
    if isinstance(target, Location):
        with storage_errors(target):
            return bytes(target.fs.cat_file(target.fs_path))
    return Path(target).read_bytes()


def write_bytes(target: Path | Location, data: bytes, *, exclusive: bool = False) -> bool:
    """Write a whole file or object so a reader sees the old one or the new one, never a torn one.

    Local: a temporary sibling, fsynced, renamed (:func:`volseg.storage.files.atomic_write_bytes`).
    Remote: one PUT, which object stores make atomic. ``exclusive``: only if nothing is there yet
    (local ``O_EXCL``; S3 ``If-None-Match``); returns False when something was.
    """
    if isinstance(target, Location):
        if target.read_only:
            raise OutputError(f"{target}: {target.protocol}:// is read only; write to a local path or s3://")
        with storage_errors(target):
            fs = target.fs
            if not exclusive:
                fs.pipe_file(target.fs_path, data)
                return True
            try:
                fs.pipe_file(target.fs_path, data, mode="create")
            except FileExistsError:
                return False
            except TypeError:  # a filesystem without exclusive writes: check, then write
                if fs.exists(target.fs_path):
                    return False
                fs.pipe_file(target.fs_path, data)
            return True
    if exclusive:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return True
    from volseg.storage.files import atomic_write_bytes

    atomic_write_bytes(Path(target), data)
    return True


def age_seconds(target: Path | Location) -> float | None:
    """Seconds since ``target`` was last written, or None if it is not there."""
    import time

    if isinstance(target, Location):
        with storage_errors(target):
            try:
                info = target.fs.info(target.fs_path)
            except FileNotFoundError:
                return None
        stamp = info.get("LastModified") or info.get("mtime") or info.get("created") or info.get("updated")
        if stamp is None:
            return 0.0
        if hasattr(stamp, "timestamp"):
            stamp = stamp.timestamp()
        elif isinstance(stamp, str):
            from datetime import datetime

            stamp = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        return time.time() - float(stamp)
    try:
        return time.time() - Path(target).stat().st_mtime
    except FileNotFoundError:
        return None


def remove(target: Path | Location) -> None:
    """Delete one file or object if it is there."""
    if isinstance(target, Location):
        with storage_errors(target), contextlib.suppress(FileNotFoundError):
            target.fs.rm_file(target.fs_path)
        return
    Path(target).unlink(missing_ok=True)


def remove_tree(target: Path | Location) -> None:
    """Delete a folder (or every object under a prefix) if it is there."""
    if isinstance(target, Location):
        with storage_errors(target), contextlib.suppress(FileNotFoundError):
            if target.exists():
                target.fs.rm(target.fs_path, recursive=True)
        return
    import shutil

    shutil.rmtree(target, ignore_errors=True)


# ------------------------------------------------------------------------------- errors
def _endpoint(loc: Location) -> str | None:
    if loc.protocol in READ_ONLY:
        return loc.url
    if loc.protocol == "s3":
        return (
            loc.options.get("endpoint_url")
            or (loc.options.get("client_kwargs") or {}).get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
    return None


def _reachable(url: str, timeout: float = 3.0) -> str | None:
    """None when a TCP connection to ``url``'s host opens within ``timeout``; else why not."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:.0f} s"
    except OSError as exc:
        return f"{exc.strerror or exc} ({host}:{port})"


def _message(loc: Location, exc: BaseException) -> VolsegError | None:
    """The one line for a storage failure a user can fix, or None (a real bug: let it through)."""
    name = type(exc).__name__
    text = " ".join(str(exc).split())[:160]
    if isinstance(exc, ImportError):
        package = PROTOCOLS.get(loc.protocol, loc.protocol)
        extra = {"s3fs": "s3", "gcsfs": "gcs", "aiohttp": "http"}.get(package, "cloud")
        return InputError(
            f'{loc}: {loc.protocol}:// URLs need the package {package}; pip install "volseg[{extra}]"'
        )
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return InputError(
            f"{loc}: no credentials for {loc.protocol}://; set AWS_PROFILE or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, pass --profile, or --anon for a public bucket"
        )
    if isinstance(exc, PermissionError) or name in ("ClientAuthenticationError", "Forbidden"):
        return InputError(
            f"{loc}: the storage refused these credentials ({text}); check the profile or keys "
            "(--profile, AWS_PROFILE, AWS_ACCESS_KEY_ID), or pass --anon for a public bucket"
        )
    if name in (
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ClientConnectorError",
        "ConnectionError",
    ) or (isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror))):
        where = _endpoint(loc) or f"the {loc.protocol}:// service"
        return InputError(
            f"{loc}: cannot reach the storage endpoint {where} ({text}); check --endpoint-url and the network"
        )
    return None


@contextlib.contextmanager
def storage_errors(loc: Location) -> Iterator[None]:
    """Turn a storage failure a user can fix (credentials, endpoint, missing package) into one line."""
    try:
        yield
    except VolsegError:
        raise
    except FileNotFoundError:
        raise
    except Exception as exc:
        message = _message(loc, exc)
        if message is None:
            raise
        raise message from None


def check(loc: Location, *, writing: bool) -> None:
    """Fail in seconds, with one line, when ``loc`` cannot be used: no endpoint, no bucket, no access.

    Reading needs nothing more here (a missing volume is reported by whoever opens it); writing
    needs a bucket that exists and a protocol that writes.
    """
    if writing and loc.read_only:
        raise OutputError(f"{loc}: {loc.protocol}:// is read only; write the output to a local path or s3://")
    endpoint = _endpoint(loc)
    if endpoint:  # an S3 endpoint, or the http(s) server itself
        why = _reachable(endpoint)
        if why and loc.protocol in READ_ONLY:
            raise InputError(f"{loc}: cannot reach the server ({why}); check the URL and the network")
        if why:
            raise InputError(
                f"{loc}: cannot reach the storage endpoint {endpoint} ({why}); check --endpoint-url "
                "and the network"
            )
    if loc.protocol in ("s3", "gs", "gcs") and (writing or not loc.options.get("anon")):
        # (a public bucket may refuse anonymous HEAD or LIST of the bucket but serve its objects)
        with storage_errors(loc):
            fs = loc._fresh_fs(loc.bucket)
            try:
                fs.info(loc.bucket)
                found = True
            except FileNotFoundError:
                found = False
        if not found:
            raise (OutputError if writing else InputError)(
                f"{loc}: the bucket {loc.bucket!r} does not exist (or these credentials cannot see it); "
                "create it or check the URL"
            )
