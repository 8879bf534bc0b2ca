"""The one exception type that reaches users as a message instead of a stack trace."""


class CirlError(Exception):
    """A problem the user can fix: the message says what was wrong, where, and how to fix it.

    The CLI prints it as ``error: <message>`` and exits with status 2.
    """
