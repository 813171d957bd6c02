"""Rendering a page of templates/: what every page module and the server share (kept apart from the server,
which imports the page modules)."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from textinv.app.safety import CSRF_FIELD, csrf_token

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals.update(csrf_field=CSRF_FIELD)


def render(request: Request, name: str, context: dict, status: int = 200) -> HTMLResponse:
    """A page of templates/, with the session's CSRF token for its forms."""
    return templates.TemplateResponse(request, name, {"csrf": csrf_token(request), **context},
                                      status_code=status)
