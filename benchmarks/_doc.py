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
