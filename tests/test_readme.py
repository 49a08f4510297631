"""The README's test command is exactly what CI runs, and its Python example calls the API as it is."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import volseg

ROOT = Path(__file__).resolve().parents[1]


def _code_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("python3 -m venv")]


def test_ci_runs_the_readme_test_command():
    readme = _code_lines((ROOT / "README.md").read_text())
    ci = _code_lines((ROOT / ".ci" / "run").read_text())
    assert len(readme) == 2, "README must hold exactly two set-up commands (demo, tests)"
    assert ci == [readme[1]]
    assert "volseg demo" in readme[0]


def test_the_readme_python_example_calls_the_api_as_it_is():
    """Every ``volseg.NAME(...)`` in the README's Python block exists and takes the keywords it is given."""
    from volseg.stages.train import TrainConfig
    from volseg.stages.train.config import option_names

    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    calls = [
        node
        for node in ast.walk(ast.parse(block))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "volseg"
    ]
    assert {c.func.attr for c in calls} >= {"convert", "train", "predict", "segment", "evaluate"}
    for call in calls:
        function = getattr(volseg, call.func.attr)
        params = inspect.signature(function).parameters
        names = set(params)
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):  # train's **overrides
            names |= {f.name for f in dataclasses.fields(TrainConfig)} | set(option_names())
        for keyword in call.keywords:
            assert keyword.arg in names, f"volseg.{call.func.attr}(..., {keyword.arg}=...) in README.md"
        positional = [p for p in params.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert len(call.args) <= len(positional), f"volseg.{call.func.attr}: too many positional arguments"
