"""The app factory: one FastAPI app over one runs folder. Pages come from the routers of runs_pages,
run_page and generate_page (a later feature adds its router to ROUTERS); errors become a page with one line
and a 4xx/5xx status, never a stack trace; every response forbids loading anything from another host."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from textinv.app.jobs import JobQueue
from textinv.app.rendering import HERE, render
from textinv.app.safety import CSRF_COOKIE, Refused
from textinv.errors import UserError

log = logging.getLogger(__name__)
# Everything from this server only: no CDN, font or analytics request can leave the machine.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def error_page(request: Request, message: str, status: int):
    if "application/json" in request.headers.get("accept", "") or request.url.path.endswith((".json", "/status")):
        return JSONResponse({"error": message}, status_code=status)
    return render(request, "error.html", {"message": message, "status": status}, status)


def create_app(runs_dir: str | Path = "outputs", runner=None, study: str | Path | None = None,
               runs_pages_on: bool = True) -> FastAPI:
    """The page over `runs_dir` (it may not exist yet: the index then says so). `runner` replaces the image
    generation function (tests). `study`: a rating study folder (textinv.ratings) whose pages it serves too;
    `runs_pages_on=False` serves the study alone (raters cannot open the runs, whose images would unblind them)."""
    from textinv.app import rating_page

    app = FastAPI(title="textinv", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.root = Path(runs_dir).expanduser()
    app.state.jobs = JobQueue(app.state.root, **({"runner": runner} if runner else {}))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    pages = [rating_page]
    if runs_pages_on:  # imported only here: generate_page brings torch and diffusers (seconds; a study needs neither)
        from textinv.app import generate_page, run_page, runs_pages

        pages = [runs_pages, run_page, generate_page, rating_page]
    for module in pages:
        app.include_router(module.router)
    app.state.study = app.state.store = None
    app.state.session_tasks = {}
    if study is not None:
        from textinv.ratings.store import Store
        from textinv.ratings.study import Study

        app.state.study = Study.load(study)
        app.state.store = Store(app.state.study.db_path)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        token = getattr(request.state, "new_csrf", None)
        if token:  # the token handed out with this page: the browser sends it back with its forms
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused):
        return error_page(request, str(err), err.status)

    @app.exception_handler(UserError)
    async def user_error(request: Request, err: UserError):
        return error_page(request, str(err), 400)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return error_page(request, f"{where}: {first.get('msg', 'invalid value')}", 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        return error_page(request, str(err.detail), err.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        log.exception("error serving %s", request.url.path)
        return error_page(request, f"internal error ({type(err).__name__}); the server log has the details", 500)

    return app
