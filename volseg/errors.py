"""Errors that volseg reports to its users.

Every error a user can cause (bad path, malformed option, wrong data) is a
:class:`VolsegError`. Its message is one line that names the input, says what is
wrong and what to do. The CLI prints the message alone and exits with
``exit_code`` (2 for bad input); ``--debug`` shows the traceback.
"""

from __future__ import annotations


class VolsegError(ValueError):
    """Base class of every error caused by the user's input or options."""

    exit_code = 2


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
