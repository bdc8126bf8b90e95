"""The one exception type for bad input: its message names the problem and the fix."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix; the CLI prints it as one line."""
