"""Shared by the benchmark scripts: replace one ``## heading`` section of docs/benchmarks.md."""

from __future__ import annotations

import re
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
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    torch = sys.modules.get("torch")  # only where the benchmark uses torch: no import cost elsewhere
    if torch is not None:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return info
