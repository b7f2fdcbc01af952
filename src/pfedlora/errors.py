"""User-facing errors.

A :class:`UserError` is bad input from the user (config, paths, archives, payloads,
checkpoints). The CLI prints its message as one line and exits with code 2; no traceback.
"""


class UserError(Exception):
    """Bad user input; the message is one line naming what is wrong and what is accepted."""

    exit_code = 2


class RunInterrupted(Exception):
    """A run stopped by SIGINT/SIGTERM at a round boundary, after writing a checkpoint.

    The CLI prints the message (how to resume) and exits with 128 + the signal number (130, 143).
    """

    def __init__(self, round_index: int, signum: int, run_dir: str) -> None:
        super().__init__(f"interrupted after round {round_index}; resume with: pfedlora run --resume {run_dir}")
        self.round_index = round_index
        self.signum = signum
        self.run_dir = run_dir
        self.exit_code = 128 + signum
