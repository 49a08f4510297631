"""Write the module tree of docs/architecture.md: each module of the package with its docstring's first line.

Run ``python docs/make_architecture_tree.py``; ``tests/test_docs.py`` fails when the page is out of date.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- tree:begin", "<!-- tree:end -->"
ORDER = ("errors.py", "version.py", "core", "cluster.py", "storage", "nn", "stages", "app")


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = doc.strip().split("\n\n")[0]
    return " ".join(first.split())


def _key(path: Path) -> tuple[int, str]:
    name = path.name
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def _lines(folder: Path, depth: int) -> list[str]:
    out = []
    for path in sorted(folder.iterdir(), key=_key):
        if path.name.startswith(("_", ".")) and path.name != "__init__.py" or path.name == "__pycache__":
            continue
        if path.is_dir():
            init = path / "__init__.py"
            out.append(f"{'  ' * depth}{path.name}/  {_summary(init) if init.exists() else ''}".rstrip())
            out += _lines(path, depth + 1)
        elif path.suffix == ".py" and path.name != "__init__.py":
            out.append(f"{'  ' * depth}{path.name}  {_summary(path)}".rstrip())
    return out


def tree() -> str:
    """The tree block, as it stands in the page between the markers."""
    return "```\nvolseg/\n" + "\n".join(_lines(ROOT / "volseg", 1)) + "\n```\n"


def render(page: str) -> str:
    start = page.index(BEGIN)
    start = page.index("\n", start) + 1
    stop = page.index(END)
    return page[:start] + tree() + page[stop:]


if __name__ == "__main__":
    text = render(PAGE.read_text())
    if "--check" in sys.argv:
        sys.exit(0 if text == PAGE.read_text() else 1)
    PAGE.write_text(text)
