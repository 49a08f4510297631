"""The layers of the package are a fact of its tree: every import points down, checked with ``ast``.

app -> stages -> nn -> storage -> core -> errors/version (a module may import its own layer and any
lower one). Stages do not import each other, no ``_private`` name crosses a package, and there is no
import circle. Each rule is shown to fail on a small fake tree.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import volseg

ROOT = Path(volseg.__file__).parent
#: Bottom (0) to top; ``volseg/__init__.py`` (the public API) and ``__main__`` may import anything.
#: ``cluster`` (dask clusters from a TOML file) sits beside ``core``: both stages use it, it needs neither
#: storage nor torch.
LAYERS = {
    "errors": 0, "version": 0, "core": 1, "cluster": 1, "storage": 2, "nn": 3, "stages": 4, "app": 5, "": 6
}  # fmt: skip


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([root.name, *parts])


def unit(module: str) -> str:
    """The package a module belongs to: ``core``, ``storage``, ..., or ``stages.<stage>``."""
    parts = module.split(".")[1:]
    if parts[:1] == ["stages"] and len(parts) > 1:
        return "stages." + parts[1]
    return parts[0] if parts else ""


def layer(module: str) -> int:
    top = unit(module).split(".")[0]
    if top == "__main__":
        return LAYERS[""]
    return LAYERS[top]


def imports(path: Path, module: str) -> Iterator[tuple[int, str, list[str]]]:
    """``(line, imported module, names)`` for every import in the file, deferred ones included."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            yield node.lineno, base, [alias.name for alias in node.names]


def resolve(target: str, names: list[str], modules: set[str]) -> list[tuple[str, str | None]]:
    """``(module, name)`` pairs: ``from pkg import submodule`` imports the submodule itself."""
    out: list[tuple[str, str | None]] = []
    for name in names or [None]:
        sub = f"{target}.{name}" if name else None
        out.append((sub, None) if sub in modules else (target, name))
    return out


def check_tree(root: Path) -> list[str]:
    """Every broken rule in the package at ``root``, one line each (empty: the layers hold)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        where = f"{path.relative_to(root.parent)}"
        for line, target, names in imports(path, module):
            if target != root.name and not target.startswith(root.name + "."):
                continue
            for dep, name in resolve(target, names, modules):
                if dep not in modules:
                    continue
                if dep != module:
                    graph[module].add(dep)
                if dep == root.name and module.count(".") >= 1 and unit(module) != "__main__":
                    problems.append(f"{where}:{line}: imports the package API {root.name} from below it")
                    continue
                if layer(dep) > layer(module):
                    problems.append(f"{where}:{line}: {unit(module)} imports {dep}, a higher layer")
                su, du = unit(module), unit(dep)
                if su.startswith("stages.") and du.startswith("stages.") and su != du:
                    problems.append(f"{where}:{line}: stage {su} imports stage {du}")
                if name and name.startswith("_") and not name.startswith("__") and su != du:
                    problems.append(f"{where}:{line}: imports private {name} of {dep} across packages")
    problems += [f"import circle: {' -> '.join(c)}" for c in circles(graph)]
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected set of modules (Tarjan), smallest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group) + [sorted(group)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found, key=len)


def test_the_package_keeps_its_layers() -> None:
    assert check_tree(ROOT) == []


def _fake(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "volseg"
    for rel, text in {"__init__.py": "", "errors.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            (root / parent / "__init__.py").touch()
        path.write_text(text)
    return root


def test_a_fake_tree_that_keeps_the_layers_passes(tmp_path: Path) -> None:
    root = _fake(
        tmp_path,
        {
            "core/tiling.py": "from volseg.errors import x\n",
            "storage/volumes.py": "from volseg.core import tiling\n",
            "nn/model.py": "from volseg.storage.volumes import open_volume\n",
            "stages/predict/__init__.py": "from volseg.stages.predict.plan import plan\nfrom . import plan\n",
            "stages/predict/plan.py": "from volseg.nn.model import load\nfrom ...core.tiling import blocks\n",
            "app/cli.py": "def main():\n    from volseg.stages.predict import predict\n",
            "__init__.py": "from volseg.app.cli import main\n",
        },
    )
    assert check_tree(root) == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"core/tiling.py": "from volseg.storage.volumes import Volume\n"},
            "core imports volseg.storage.volumes",
        ),
        # a deferred import counts: it runs the moment the function does
        ({"storage/volumes.py": "def f():\n    import volseg.nn.model\n"}, "storage imports volseg.nn.model"),
        ({"core/tiling.py": "from volseg import stages\n"}, "core imports volseg.stages, a higher layer"),
        ({"storage/volumes.py": "from volseg import predict\n"}, "imports the package API volseg"),
        ({"stages/segment.py": "from volseg.stages.predict import value\n"}, "stage stages.segment imports"),
        ({"stages/segment.py": "from .predict import value\n"}, "stage stages.segment imports"),
        ({"nn/model.py": "from volseg.core.tiling import _grid\n"}, "imports private _grid"),
        (
            {"core/a.py": "from volseg.core import b\n", "core/b.py": "from volseg.core.a import f\n"},
            "import circle: volseg.core.a -> volseg.core.b -> volseg.core.a",
        ),
    ],
)
def test_a_fake_tree_that_breaks_a_rule_fails(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    base = {
        "stages/predict/__init__.py": "",
        "nn/model.py": "",
        "storage/volumes.py": "",
        "core/tiling.py": "",
        "stages/__init__.py": "",
    }
    problems = check_tree(_fake(tmp_path, {**base, **files}))
    assert any(expected in p for p in problems), problems


def test_the_public_stage_names_are_functions() -> None:
    for name in ("synth", "convert", "train", "predict", "segment", "evaluate", "preview", "demo"):
        value = getattr(volseg, name)
        assert inspect.isfunction(value), f"volseg.{name} is {type(value).__name__}"
        assert value.__name__ == name
    from volseg import open_volume, predict

    assert inspect.isfunction(predict) and inspect.isfunction(open_volume)
    assert sorted(volseg.__all__) == sorted(dir(volseg))


def test_import_volseg_stays_light() -> None:
    heavy = "('torch', 'dask.distributed', 'zarr')"
    code = f"import sys, volseg; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
