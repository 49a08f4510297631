"""Errors that volseg reports to its users.

Every error a user can cause (bad path, malformed option, wrong data) is a
:class:`VolsegError`. Its message is one line that names the input, says what is
wrong and what to do. The CLI prints the message alone and exits with
``exit_code`` (2 for bad input); ``--debug`` shows the traceback.
"""

from __future__ import annotations


class VolsegError(ValueError):
    """Base class of every error caused by the user's input or options.

    ``argument``: the API argument whose value is wrong, when the message starts with its name
    (pure modules name arguments, not CLI flags; the CLI puts the flag in its place, see
    :func:`renamed`).
    """

    exit_code = 2

    def __init__(self, message: str = "", *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


def renamed(exc: VolsegError, name: str) -> VolsegError:
    """The same error with the name of its argument at the start of the message replaced by ``name``."""
    message = str(exc)
    if not exc.argument or not message.startswith(exc.argument):
        return exc
    new = type(exc)(name + message[len(exc.argument) :], argument=name)
    new.__cause__ = exc.__cause__
    return new


def flag(argument: str) -> str:
    """The CLI flag of an API argument: ``val_slices`` -> ``--val-slices``."""
    return "--" + argument.replace("_", "-")


class InputError(VolsegError):
    """An input path is missing, unreadable or holds the wrong kind of data."""


class OptionError(VolsegError):
    """An option value is malformed or out of range."""


class OutputError(VolsegError):
    """An output cannot be written, or exists and would be overwritten."""


class ModelError(VolsegError):
    """A model file is missing, not a volseg model, or unsafe to load."""


class IncompleteRunError(VolsegError):
    """Some blocks of a run failed; they were not recorded as done.

    Exits 1, not 2: the input was fine, the run did not finish.
    """

    exit_code = 1


class VolsegWarning(UserWarning):
    """Something a stage's user should know that does not stop the run (stages do not print).

    Raised with :func:`warnings.warn`; the CLI prints each as one ``volseg: warning: ...`` line.
    """
