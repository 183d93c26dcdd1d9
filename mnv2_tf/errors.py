"""Errors caused by the user's input, reported by the entry points as one line."""


class UserError(Exception):
    """Bad input (missing file, wrong config key, truncated model, ...).

    The message names the problem and the fix, on one line. Entry points print it as
    `error: <message>` and exit with status 2 instead of a traceback.
    """
