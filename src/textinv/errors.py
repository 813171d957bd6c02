"""User-facing errors: one line saying what was wrong, where, and how to fix it."""


class UserError(Exception):
    """A mistake in the user's input or environment. Entry points print it as one line and exit 2."""

    exit_code = 2


class NumericalFault(UserError):
    """The loss or the learned vectors stopped being finite."""

    exit_code = 3


class Interrupted(UserError):
    """SIGINT/SIGTERM: a resumable checkpoint was saved and the run stopped early."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
