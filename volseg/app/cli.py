"""The ``volseg`` command line: each command parses its options and calls the API.

The group, its one-line errors and the shared option parsing are in :mod:`volseg.app.base`, the
options' choices in :mod:`volseg.app.choices`, and each command in a module of
:mod:`volseg.app.commands`; ``volseg --help`` lists them in the order of the data flow.
"""

from __future__ import annotations

import sys

from volseg.app.base import app
from volseg.app.commands import (  # noqa: F401 (importing a command module registers its command)
    convert,
    demo,
    doctor,
    evaluate,
    info,
    predict,
    preview,
    segment,
    synth,
    train,
)

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="volseg")
