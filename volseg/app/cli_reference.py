"""Generate docs/cli.md from the typer app, so the reference never drifts from the code.

Run ``python -m volseg.app.cli_reference > docs/cli.md``; tests/test_docs.py checks it is current.
"""

from __future__ import annotations

import enum
import inspect

import typer.main


def _param_row(p) -> str:
    if p.param_type_name == "argument":
        name = f"`{p.name.upper()}`"
    else:
        name = ", ".join(f"`{o}`" for o in (*p.opts, *p.secondary_opts))
    help_text = " ".join((getattr(p, "help", None) or "").split())
    default = ""
    if p.param_type_name == "option" and not p.is_flag and p.default not in (None, (), ""):
        default = f"`{p.default}`"
    choices = ""
    ann = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        choices = " (" + " \\| ".join(str(c.value) for c in ann) + ")"
    if isinstance(default, str) and isinstance(p.default, enum.Enum):
        default = f"`{p.default.value}`"
    return f"| {name} | {help_text}{choices} | {default} |"


def render() -> str:
    root = typer.main.get_command(__import__("volseg.app.cli", fromlist=["app"]).app)
    lines = [
        "# CLI reference",
        "",
        "Generated from the code by `python -m volseg.app.cli_reference > docs/cli.md`; "
        "a test keeps it current.",
        "",
        "Global options (before the command): `--version`, "
        "`--debug` (show tracebacks instead of one-line errors).",
        "",
    ]
    for name in sorted(root.commands):
        cmd = root.commands[name]
        doc = inspect.cleandoc(cmd.help or "")
        lines += [f"## volseg {name}", "", doc, ""]
        params = [p for p in cmd.params if p.name != "help"]
        if params:
            lines += ["| argument / option | meaning | default |", "| --- | --- | --- |"]
            lines += [_param_row(p) for p in params]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
