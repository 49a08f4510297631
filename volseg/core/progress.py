"""The one progress protocol every stage takes.

A stage reports what it has done as :class:`Update` values passed to a ``progress`` callable; it never
prints. The CLI passes a terminal bar (:class:`volseg.app.progress.TerminalProgress`), the Python API
passes nothing (no reporting) or any callable, e.g. ``progress=lambda u: log.info(u.describe())``.

A stage reports through a :class:`Tracker`: ``start`` (what, how many, of which unit), ``advance``
(and news about the work as ``info`` numbers, e.g. the loss), ``note`` (a line of news) and ``close``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

__all__ = ["Progress", "Tracker", "Update"]


@dataclass(frozen=True)
class Update:
    """One report of a stage's progress.

    Attributes
    ----------
    task
        What is being done, e.g. ``"predict prob.zarr"``; the same text for every update of one task.
    done, total
        Units done so far and in all (``total`` is ``None`` when unknown).
    unit
        What is counted: ``"blocks"``, ``"sections"``, ``"steps"``, ...
    info
        Numbers or short texts about the work so far (``{"loss": 0.31}``), shown beside the bar.
    message
        A line of news (``"pass 1: 12 units"``); ``None`` for a plain count.
    finished
        True on the last update of the task.
    """

    task: str
    done: float
    total: float | None = None
    unit: str = ""
    info: Mapping[str, float | str] = field(default_factory=dict)
    message: str | None = None
    finished: bool = False

    def describe(self) -> str:
        """One line for a log: ``"predict: 3/8 blocks"`` or the message."""
        if self.message is not None:
            return f"{self.task}: {self.message}"
        of = f"/{self.total:g}" if self.total is not None else ""
        extra = "".join(f", {k} {v}" for k, v in self.info.items())
        return f"{self.task}: {self.done:g}{of} {self.unit}{extra}".rstrip()


class Progress(Protocol):
    """Anything that takes :class:`Update` values."""

    def __call__(self, update: Update) -> None: ...


class Tracker:
    """The stage side of the protocol: counts one task and sends updates (or nothing, without a callable).

    Use it as a context manager so that the task is closed (``finished=True``) however the work ends.
    """

    def __init__(
        self, progress: Progress | None, task: str, total: float | None = None, unit: str = ""
    ) -> None:
        self.progress, self.task, self.total, self.unit = progress, task, total, unit
        self.done: float = 0
        self.info: dict[str, float | str] = {}
        self._closed = False
        self._send()

    def _send(self, message: str | None = None, finished: bool = False) -> None:
        if self.progress is not None:
            self.progress(
                Update(self.task, self.done, self.total, self.unit, dict(self.info), message, finished)
            )

    def advance(self, n: float = 1, **info: float | str) -> None:
        """``n`` more units done; ``info`` replaces the numbers shown beside the count."""
        self.done += n
        self.info.update(info)
        self._send()

    def update(self, done: float, **info: float | str) -> None:
        """Set the count to ``done`` (e.g. the training step reached)."""
        self.done = done
        self.info.update(info)
        self._send()

    def note(self, message: str) -> None:
        """A line of news about the task."""
        self._send(message)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._send(finished=True)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
