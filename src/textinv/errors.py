"""User-facing errors: one line saying what was wrong, where, and how to fix it."""


class UserError(Exception):
    """A mistake in the user's input or environment. Entry points print it as one line and exit 2."""
