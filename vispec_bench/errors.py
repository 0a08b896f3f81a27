"""Errors the user can fix: the CLI prints their message on one line and exits with status 2.

Anything else that escapes a command is a bug (or an environment failure such as CUDA running
out of memory) and keeps its traceback (exit status 1). Errors about bad input derive from
`UserError`, usually together with the built-in class a library caller would expect
(`InputError` is also a `ValueError`, `RegistryError` also a `KeyError`), so code catching the
built-in class keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """An expected failure caused by the user's input, files or set-up, with a message that says
    what was expected and what was found."""


class InputError(UserError, ValueError):
    """A flag, option, config-file value or argument that is not acceptable."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or directory the user named (or that a command needs) does not exist."""


class ExistingOutputError(UserError, FileExistsError):
    """An output location already holds results that must not be overwritten."""
