"""Progress on the terminal: the CLI's side of :mod:`volseg.core.progress`.

One rich bar per task on stderr (count, rate, ETA, the stage's own numbers), and messages printed above
the bars. Stages never print; they send :class:`~volseg.core.progress.Update` values here.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from volseg.core.progress import Update

__all__ = ["LineProgress", "NoteLines", "TerminalProgress"]


def _text(value: float | str) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class TerminalProgress:
    """A :class:`~volseg.core.progress.Progress` that draws rich bars on stderr.

    Use it as a context manager (the bars stop on exit) and pass it as ``progress=`` to any stage.
    """

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TextColumn("{task.fields[info]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._started = False

    def __call__(self, update: Update) -> None:
        if not self._started:
            self._bar.start()
            self._started = True
        if update.message is not None:
            self._bar.console.print(f"{update.task}: {update.message}", highlight=False)
        info = "  ".join(f"{k} {_text(v)}" if k else _text(v) for k, v in update.info.items())
        task = self._tasks.get(update.task)
        if task is None:
            task = self._tasks[update.task] = self._bar.add_task(
                update.task, total=update.total, completed=update.done, unit=update.unit, info=info
            )
        else:
            self._bar.update(task, total=update.total, completed=update.done, info=info)
        if update.finished:
            self._bar.stop_task(task)

    def close(self) -> None:
        if self._started:
            self._bar.stop()
            self._started = False

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class NoteLines:
    """A :class:`~volseg.core.progress.Progress` that prints only the news, one line per message on stderr.

    For stages whose counts are not worth a bar (segment's phases, the demo's stages). ``with_task``
    writes ``"task: message"``; without it the message alone.
    """

    def __init__(self, *, with_task: bool = True) -> None:
        self.with_task = with_task

    def __call__(self, update: Update) -> None:
        if update.message is not None:
            import typer

            typer.echo(update.describe() if self.with_task else update.message, err=True)


class LineProgress:
    """A :class:`~volseg.core.progress.Progress` that writes plain lines on stderr, terminal or not.

    Messages are printed as they come. A counted task gets an estimate of its duration once it has
    run ``warm`` seconds (``"train: about 0:02:10 for 800 steps, from the first 40"``), then a line at
    most every ``every`` seconds with the count, the stage's numbers and the time left, and one when it
    finishes: what a log file or a batch job's output needs.
    """

    def __init__(self, *, every: float = 5.0, warm: float = 3.0, with_task: bool = False) -> None:
        self.every, self.warm, self.with_task = every, warm, with_task
        self._start: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._estimated: set[str] = set()

    def _echo(self, text: str) -> None:
        import typer

        typer.echo(text, err=True)

    def __call__(self, update: Update) -> None:
        import time

        from volseg.core.units import clock

        now = time.perf_counter()
        if update.message is not None:
            self._echo(update.describe() if self.with_task else update.message)
            return
        start = self._start.setdefault(update.task, now)
        elapsed, total, done = now - start, update.total, update.done
        if update.finished:
            if done:
                self._echo(f"{update.task}: {done:g} {update.unit} in {clock(elapsed)}")
            return
        if not total or done <= 0:
            return
        left = (total - done) * elapsed / done
        if update.task not in self._estimated and elapsed >= self.warm:
            self._estimated.add(update.task)
            self._last[update.task] = now
            self._echo(
                f"{update.task}: about {clock(elapsed + left)} for {total:g} {update.unit}, "
                f"from the first {done:g}"
            )
        elif update.task in self._estimated and now - self._last[update.task] >= self.every:
            self._last[update.task] = now
            info = "".join(f", {k} {_text(v)}" for k, v in update.info.items())
            self._echo(f"{update.task}: {done:g}/{total:g} {update.unit}{info}, {clock(left)} left")
