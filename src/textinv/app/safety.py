"""What keeps the page safe: files only from inside the runs folder, a CSRF token on every state-changing
request, and form values parsed into one-line messages (never a stack trace)."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from fastapi import Request

CSRF_COOKIE = "textinv_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Refused(Exception):
    """A request the page answers with a message and a 4xx status (bad form value, path outside, no CSRF)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def confined_path(root: Path, relative: str) -> Path:
    """`relative` inside `root`, symlinks resolved on both sides; anything leading outside is refused (404, so
    the answer says nothing about what exists elsewhere)."""
    root = root.resolve()
    if not relative or "\x00" in relative or Path(relative).is_absolute():
        raise Refused("no such file in the runs folder", 404)
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise Refused("no such file in the runs folder", 404)
    return target


def relative_id(root: Path, path: Path) -> str:
    """A run's or file's id in URLs: its path below the runs folder, with forward slashes."""
    return path.resolve().relative_to(root.resolve()).as_posix()


def csrf_token(request: Request) -> str:
    """The session's token (from its cookie), or a new one that the response will set (see server.py)."""
    token = request.cookies.get(CSRF_COOKIE)
    if not token or len(token) < 32:
        token = getattr(request.state, "new_csrf", None) or secrets.token_urlsafe(32)
        request.state.new_csrf = token
    return token


async def check_csrf(request: Request) -> None:
    """Double submit: the cookie's token must come back in the form field or the header (compared in constant
    time), and a browser's Origin, where sent, must be this server."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        sent = str((await request.form()).get(CSRF_FIELD, ""))
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise Refused("this request has no valid CSRF token; reload the page and try again", 403)
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if origin.split("://", 1)[-1] != host:
            raise Refused(f"request from another site ({origin}) refused", 403)


def form_int(form, name: str, default: int, low: int, high: int) -> int:
    raw = str(form.get(name, "") or "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Refused(f"{name}={raw!r} must be a whole number from {low} to {high}") from None
    if not low <= value <= high:
        raise Refused(f"{name}={value} must be from {low} to {high}")
    return value


def form_float(form, name: str, default: float, low: float, high: float) -> float:
    raw = str(form.get(name, "") or "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise Refused(f"{name}={raw!r} must be a number from {low:g} to {high:g}") from None
    if not low <= value <= high:  # also refuses nan
        raise Refused(f"{name}={raw} must be from {low:g} to {high:g}")
    return value


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")
