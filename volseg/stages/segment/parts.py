"""segment ``--part K/N``: the fixed shares of a job array, and the waits and locks its jobs share.

Unit ``i`` of pass 1 (a band of sections in 2-D, a block in 3-D, in C order) belongs to part
``i % N + 1``, and so do the output blocks it covers, in pass 2 as in pass 1: each part rewrites the
blocks it labelled. Pass 2 needs every unit of pass 1, so a part that has done its share of pass 1
polls the others' side files for at most ``wait`` seconds, then stops with :class:`PartsPending`
(exit 75, like a preempted run: the same command resumes with pass 2). The jobs may start at once:
one creates the output while the others wait on ``OUT.creating``; the merge's lookup is computed by
the first part to need it and read by the others; the part that finds every block done marks the
output complete. Each of these is one job holding a lock (:mod:`volseg.storage.locks`: made
exclusively, refreshed while held, taken over from a killed job).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from volseg.core import preempt
from volseg.errors import OptionError
from volseg.storage import shares

__all__ = [
    "PART_WAIT_S",
    "Part",
    "PartsPending",
    "parse_part",
    "wait_for_others",
]

#: How long (s) a part that has done its share of pass 1 waits for the other parts' shares, by default.
PART_WAIT_S = 600.0
_POLL_MAX_S = 5.0  # longest pause between two looks at the other parts' progress
_NOTE_EVERY_S = 60.0  # a progress note while waiting, at most this often


@dataclass(frozen=True)
class Part:
    """Job ``k`` of ``n`` (1 <= k <= n) and how long it waits for the others' first pass."""

    k: int
    n: int
    wait: float = PART_WAIT_S

    @property
    def name(self) -> str:
        return f"{self.k}/{self.n}"

    def owns(self, index: int) -> bool:
        """Whether unit ``index`` (its position in the run's list of units) is this part's."""
        return index % self.n == self.k - 1


def parse_part(part: str | None, wait: float, overwrite: bool) -> Part | None:
    """``"K/N"`` (``--part``) checked with its wait (``--part-wait``); ``None`` without a part."""
    if not 0 <= wait <= 7 * 86400:
        raise OptionError(f"--part-wait {wait}: use 0 (do not wait) to 604800 seconds, e.g. 600")
    if part is None:
        return None
    kn = shares.parse_part(part)
    if overwrite:
        raise OptionError(
            "--part and --overwrite exclude each other: every job of the array would start the output "
            "again; delete the output (or choose another) and submit the jobs without --overwrite"
        )
    return Part(kn[0], kn[1], float(wait))


class PartsPending(preempt.Preempted):
    """A part did its share of pass 1, and the other parts did not finish theirs in time (exit 75)."""


def wait_for_others(
    left: Callable[[], dict[int, int]], part: Part, what: str, note: Callable[[str], None], out: object
) -> None:
    """Return once ``left()`` (part -> units of pass 1 it has still to do) is empty.

    Polls with a growing pause (up to :data:`_POLL_MAX_S`) for at most ``part.wait`` seconds, with a
    note at the start and then at most every :data:`_NOTE_EVERY_S` seconds. Raises
    :class:`PartsPending` when the time is up and :class:`~volseg.core.preempt.Preempted` at a
    batch system's signal; the part's own share is recorded in both cases.
    """
    pending = left()
    if not pending:
        return
    first, start = sum(pending.values()), time.monotonic()
    note(f"part {part.name}: its pass 1 is done; {_describe(pending, what)} (waiting {part.wait:.0f} s)")
    last_note, pause = start, 0.02
    while pending:
        if preempt.requested():
            raise preempt.Preempted(
                f"{out}: stopped by {preempt.stop_signal()} while part {part.name} waited for the other "
                "parts' pass 1 (its own share is done and recorded); rerun the same command to resume"
            )
        waited = time.monotonic() - start
        if waited >= part.wait:
            stuck = waited >= _NOTE_EVERY_S and sum(pending.values()) == first
            raise PartsPending(
                f"{out}: part {part.name} has done its share of pass 1, but after {waited:.0f} s "
                f"{_describe(pending, what)}{'; none finished meanwhile: are they running?' * stuck}; rerun "
                "this same command once they are done (pass 2 resumes here), e.g. requeue on exit code 75"
            )
        time.sleep(min(pause, part.wait - waited))
        pause = min(2 * pause, _POLL_MAX_S)
        before, pending = pending, left()
        if pending and pending != before and time.monotonic() - last_note >= _NOTE_EVERY_S:
            note(f"part {part.name}: waiting; {_describe(pending, what)}")
            last_note = time.monotonic()


def _describe(pending: dict[int, int], what: str) -> str:
    names = ", ".join(str(k) for k in sorted(pending))
    return (
        f"{sum(pending.values())} {what} of pass 1 are still to do in part{'s' * (len(pending) > 1)} {names}"
    )
