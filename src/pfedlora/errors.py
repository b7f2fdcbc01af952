"""User-facing errors.

A :class:`UserError` is bad input from the user (config, paths, archives, payloads,
checkpoints). The CLI prints its message as one line and exits with code 2; no traceback.
"""


class UserError(Exception):
    """Bad user input; the message is one line naming what is wrong and what is accepted."""

    exit_code = 2
