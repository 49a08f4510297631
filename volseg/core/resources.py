"""What this process may use of the machine: cores, memory, and the CPU features that decide speed.

The machine summary (:func:`machine_summary`) goes into every volume's and model file's provenance, into
every benchmark's JSON, and into ``volseg doctor``: a figure means little without the CPU class it was
measured on (AVX2 only, or AVX-512 with native bf16, see docs/tuning.md).
"""

from __future__ import annotations

import functools
import os
import platform

__all__ = ["CPU_FLAGS", "available_cores", "cpu_class", "machine_summary"]

#: The CPU flags that change how fast the network runs (Linux /proc/cpuinfo names).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "neon", "asimd")


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


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:  # pragma: no cover - not Linux
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def cpu_class(flags: frozenset[str] | set[str]) -> str:
    """The CPU class of docs/tuning.md: ``AVX-512 BF16``, ``AVX-512``, ``AVX2``, ``ARM`` or ``other``."""
    if {"avx512_bf16"} & flags or {"amx_bf16"} & flags:
        return "AVX-512 BF16"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    if {"neon", "asimd"} & flags:
        return "ARM"
    return "other"


def machine_summary() -> dict[str, object]:
    """The machine as plain data: CPU model, class and flags that matter, cores, memory, OS."""
    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "cpu_class": cpu_class(flags),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "cores": available_cores(),
        "logical_cpus": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
