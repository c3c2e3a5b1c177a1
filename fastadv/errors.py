"""Errors a user can cause; the CLI prints their message and exits with code 2."""


class FastadvError(Exception):
    """A problem with the user's input (path, value, file) whose message names the fix."""


class NonFiniteLossError(FastadvError):
    """The training loss became NaN or inf; the last good checkpoint is left untouched."""
