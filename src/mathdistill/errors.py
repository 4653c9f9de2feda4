"""Errors a user can fix: one line, what / where / how to fix; the CLI prints them without a traceback."""


class UserError(Exception):
    """A problem with the user's input or setup. The message is shown as is, on one line."""

    exit_code = 2


class PartialRun(Exception):
    """The stage finished but some items failed for good (see its failures file). Exit code 3."""

    exit_code = 3
