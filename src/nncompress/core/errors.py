"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UserError(ValueError):
    """Bad input from the user: the message says what, where, and how to fix it, on one line."""
