"""The README's test command is exactly what CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _code_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("python3 -m venv")]


def test_ci_runs_the_readme_test_command():
    readme = _code_lines((ROOT / "README.md").read_text())
    ci = _code_lines((ROOT / ".ci" / "run").read_text())
    assert len(readme) == 2, "README must hold exactly two set-up commands (demo, tests)"
    assert ci == [readme[1]]
    assert "volseg demo" in readme[0]
