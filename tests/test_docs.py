"""Docs stay true: the CLI reference and the architecture tree match the code, and every link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


def test_cli_reference_is_current():
    from volseg.app.cli_reference import render

    assert (ROOT / "docs" / "cli.md").read_text() == render(), (
        "docs/cli.md is stale: run `python -m volseg.app.cli_reference > docs/cli.md`"
    )


def test_architecture_tree_is_current():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tree", ROOT / "docs" / "make_architecture_tree.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (ROOT / "docs" / "architecture.md").read_text()
    assert module.render(page) == page, (
        "docs/architecture.md's tree is stale: run `python docs/make_architecture_tree.py`"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = page.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert broken == [], f"{page.name}: broken links {broken}"


#: Keys of a volume's ``volseg`` attribute block, which the pages write as ``volseg.KEY`` too.
METADATA_KEYS = {
    "kind",
    "provenance",
    "status",
    "convention",
    "label_convention",
    "membrane_fraction",
    "predict",
    "segment",
}


def _resolves(ref: str) -> bool:
    import importlib

    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_module_references_resolve(page):
    """Every ``volseg.module.name`` and ``volseg/path.py`` a page names exists (modules move; pages too)."""
    text = page.read_text()
    refs = set(re.findall(r"\bvolseg(?:\.[A-Za-z_][A-Za-z_0-9]*)+", text))
    broken = [r for r in sorted(refs) if not _resolves(r) and r.split(".")[1] not in METADATA_KEYS]
    broken += [
        p for p in sorted(set(re.findall(r"\bvolseg/[A-Za-z_/]+\.py\b", text))) if not (ROOT / p).exists()
    ]
    assert broken == [], f"{page.name}: names what does not exist: {broken}"
