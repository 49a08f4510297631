"""Locks between the jobs of a job array: a file (or object) made exclusively, refreshed while it is held.

The jobs of an array (``predict --part K/N``, ``segment --part K/N``) may start at the same moment; one
creates the output while the others wait on ``OUT.creating``, and segment's merge lookup is computed by
one part while the others wait for it. A lock is made exclusively: ``O_EXCL`` on a local disk, a
conditional PUT (``If-None-Match: *``) on S3 (:func:`volseg.storage.locations.write_bytes`). Its holder
rewrites it every :data:`HEARTBEAT_S` seconds; a lock not refreshed for :data:`STALE_LOCK_S` was left by a
job that died while holding it, and is taken over.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from volseg.core import preempt
from volseg.errors import OutputError
from volseg.storage import locations
from volseg.storage.locations import Location
from volseg.storage.paths import make_folder

__all__ = ["HEARTBEAT_S", "LOCK_WAIT_S", "STALE_LOCK_S", "creating", "exclusive"]

#: The longest a job waits for another job's lock (s) before it gives up with one line.
LOCK_WAIT_S = 3600.0
#: A lock not refreshed for this long (s) is a dead job's: taken over.
STALE_LOCK_S = 60.0
#: How often (s) the holder refreshes its lock.
HEARTBEAT_S = 5.0


def _touch(lock: Path | Location) -> None:
    if isinstance(lock, Location):
        with contextlib.suppress(FileNotFoundError):
            locations.write_bytes(lock, b"")  # a PUT gives the object a new time
        return
    with contextlib.suppress(FileNotFoundError):
        os.utime(lock)  # never recreates a lock another job took over


def _heartbeat(lock: Path | Location, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        _touch(lock)


@contextlib.contextmanager
def exclusive(
    lock: Path | Location, what: str, timeout: float = LOCK_WAIT_S, stoppable: bool = True
) -> Iterator[None]:
    """Hold ``lock`` while this job does ``what``; other jobs wait for it.

    A lock older than :data:`STALE_LOCK_S` is taken over (its holder died); the holder refreshes it
    every :data:`HEARTBEAT_S` seconds. A wait longer than ``timeout`` is an
    :class:`~volseg.errors.OutputError`; with ``stoppable``, a batch system's signal ends the wait
    (:class:`~volseg.core.preempt.Preempted`).
    """
    if isinstance(lock, Path):
        lock.parent.mkdir(parents=True, exist_ok=True)
    deadline, pause = time.monotonic() + timeout, 0.01
    while not locations.write_bytes(lock, b"", exclusive=True):
        age = locations.age_seconds(lock)
        if age is not None and age > STALE_LOCK_S:
            locations.remove(lock)  # left by a job that died while holding it
            continue
        if stoppable and preempt.requested():
            raise preempt.Preempted(
                f"{lock}: stopped by {preempt.stop_signal()} while waiting for another job ({what}); "
                "rerun the same command to resume"
            )
        if time.monotonic() > deadline:
            raise OutputError(
                f"{lock}: another job has been busy with {what} for {timeout:.0f} s; if no other job is "
                "running, remove that file and rerun"
            )
        time.sleep(pause)
        pause = min(2 * pause, 0.5)
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(lock, stop), daemon=True, name=f"volseg lock {lock.name}"
    )
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        locations.remove(lock)


def creating(out: Path | Location, timeout: float = 120.0) -> contextlib.AbstractContextManager[None]:
    """Hold ``<out>.creating`` while the output is checked or created (the jobs of an array start at once)."""
    if isinstance(out, Location):
        locations.check(out, writing=True)  # no bucket, refused credentials: one line now, not a wait
    else:
        make_folder(out.parent, out)  # one OutputError line where it cannot be made
    return exclusive(out.with_name(out.name + ".creating"), "creating the output", timeout, stoppable=False)
