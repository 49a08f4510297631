"""Preemption: SIGTERM and SIGUSR1 ask a running stage to stop taking work, keep what it finished, and exit.

Batch systems send one of these before they kill a job: SLURM sends SIGTERM at the end of the time limit or
on preemption (``--signal=USR1@120`` sends SIGUSR1 that many seconds earlier), LSF sends SIGUSR2 or SIGTERM,
PBS and SGE SIGTERM. Within :func:`stop_on_signals` the first of them only sets a flag: block-wise stages
(convert, predict, segment) start no new block, the blocks in flight finish and are recorded as done, and the
stage raises :class:`Preempted`; training finishes its step, saves an exact checkpoint and raises it too. The
CLI exits with :data:`PREEMPTED_EXIT` (75, ``EX_TEMPFAIL``: "try again"), and the same command resumes. A
second signal while stopping is not caught: the default action (termination) applies.

The flag is one per process, so the threads of the threads scheduler see it; separate worker processes (dask
``processes`` / a cluster) get the signal from the batch system themselves.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from volseg.errors import VolsegError

__all__ = ["PREEMPTED_EXIT", "SIGNALS", "Preempted", "requested", "reset", "stop_on_signals", "stop_signal"]

#: The exit code of a stage stopped by SIGTERM / SIGUSR1 (sysexits.h ``EX_TEMPFAIL``): rerun to resume.
PREEMPTED_EXIT = 75
#: The signals that request a stop (where the platform has them).
SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, name))

_EVENT = threading.Event()
_SIGNAL: list[int] = []


class Preempted(VolsegError):
    """A stage stopped at a signal after recording what it finished; the same command resumes it."""

    exit_code = PREEMPTED_EXIT


def requested() -> bool:
    """Whether a stop was requested (a signal arrived within :func:`stop_on_signals`)."""
    return _EVENT.is_set()


def stop_signal() -> str:
    """The name of the signal that requested the stop (``SIGTERM``, ...), or ``a stop request``."""
    return signal.Signals(_SIGNAL[-1]).name if _SIGNAL else "a stop request"


def reset() -> None:
    """Forget a request (a new stage in the same process starts afresh)."""
    _EVENT.clear()
    _SIGNAL.clear()


def request(signum: int = signal.SIGTERM) -> None:
    """Request a stop as the signal ``signum`` would (for callers that learn of it otherwise, and tests)."""
    _SIGNAL.append(int(signum))
    _EVENT.set()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: the first SIGTERM / SIGUSR1 / SIGUSR2 sets the stop flag; the old handlers return after.

    Only the main thread can install signal handlers; elsewhere this does nothing (the caller's process
    decides). Nested uses keep the outer handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reset()
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def handler(signum: int, frame: FrameType | None) -> None:
        request(signum)
        signal.signal(signum, signal.SIG_DFL)  # a second one terminates as usual

    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
