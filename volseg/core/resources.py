"""What this process may use of the machine."""

from __future__ import annotations

import os

__all__ = ["available_cores"]


def available_cores(limit: int | None = None) -> int:
    """The CPU cores this process may run on (containers and ``taskset`` included), at least 1.

    ``limit`` caps the answer (e.g. 16 threads of compression are plenty).
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    n = max(1, n)
    return min(n, limit) if limit is not None else n
