"""Entry-point glue: user mistakes become one line on stderr and exit code 2, not a traceback."""

from __future__ import annotations

import functools
import os
import sys

from .errors import UserError


def exit_on_user_error(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            if os.environ.get("TEXTINV_TRACEBACK"):
                raise
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)
    return wrapper
