"""Shared by the benchmark scripts: docs/benchmarks.md sections, the machine, measured child processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nMeasured tables, with the machine they ran on.\n"


def write_doc_section(text: str, heading: str) -> None:
    """Replace only the ``## {heading}`` section (each script owns its own), or append it."""
    old = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: text.rstrip() + "\n\n", old)
    else:
        new = old.rstrip() + "\n\n" + text
    DOC.write_text(new.rstrip() + "\n")


def machine() -> dict:
    """The machine a benchmark ran on: CPU model, cores, load at the start, versions."""
    import contextlib
    import os
    import platform
    import sys

    model = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    from volseg.core.resources import machine_summary

    summary = machine_summary()
    info = {
        "cpu": model,
        "cpu_class": summary["cpu_class"],  # every figure is tied to the CPU class it was measured on
        "cpu_flags": summary["cpu_flags"],
        "cores": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    torch = sys.modules.get("torch")  # only where the benchmark uses torch: no import cost elsewhere
    if torch is not None:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return info


# A small process starts each measured one: a child's ru_maxrss starts from its parent's resident size
# (the kernel copies the old address space's high-water mark at exec), so a big parent would inflate it.
LAUNCHER = """
import json, os, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
out = proc.stdout.read()
_, status, usage = os.wait4(proc.pid, 0)
sys.stdout.write(out)
print(json.dumps({"seconds": time.perf_counter() - t, "status": os.waitstatus_to_exitcode(status),
                  "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_seconds": usage.ru_utime + usage.ru_stime}))
"""


def run_measured(argv: list[str]) -> tuple[dict, str]:
    """Run one process through :data:`LAUNCHER`: its wall time, CPU time and own peak RSS
    (Linux: ru_maxrss is in KiB), and what it printed."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *argv], capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if done.returncode == 0 and lines else {"status": -1}
    if result.pop("status") != 0:
        raise SystemExit(f"{argv[:4]} failed:\n{done.stderr[-3000:]}")
    return result, "\n".join(lines[:-1])
