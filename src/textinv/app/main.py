"""python -m textinv app [--runs DIR] [--study STUDY] [--host 127.0.0.1] [--port N]: the local web page over a runs folder."""

from __future__ import annotations

import sys

from textinv.app.safety import is_loopback
from textinv.cli import Parser, bounded_int, exit_on_user_error
from textinv.errors import UserError


def parse_args(argv):
    parser = Parser(prog="python -m textinv app", description=__doc__.split(": ", 1)[1])
    parser.add_argument("--runs", default=None,
                        help="the folder whose runs it shows (default: outputs/; with --study: none, the study alone)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--study", default=None,
                        help="also serve this rating study's pages (python -m textinv rate new makes one)")
    parser.add_argument("--port", type=bounded_int(1, 65535), default=8000, help="port (default 8000)")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} must be from 1 to 65535")
    runs = Path(args.runs or "outputs").expanduser()
    if runs.exists() and not runs.is_dir():
        raise UserError(f"--runs {args.runs} is a file, not a folder of runs")
    if not is_loopback(args.host):
        print(f"warning: --host {args.host} makes the page (its runs, files and generation) reachable from other "
              "machines; it has no login. Use 127.0.0.1 unless you trust the network.", file=sys.stderr)
    import uvicorn

    from textinv.app.server import create_app

    app = create_app(runs, study=args.study, runs_pages_on=not (args.study and args.runs is None))
    if args.study and args.runs is not None:
        print("warning: --runs with --study: raters can open the runs pages, whose images would tell them what they "
              "rate; for people, serve the study alone (no --runs)", file=sys.stderr)
    if app.state.study is None or args.runs is not None:
        print(f"textinv app: http://{args.host}:{args.port}/ over {runs.resolve()} (Ctrl-C stops it)", flush=True)
    if args.study:
        print(f"rating study {app.state.study.folder}: invite links are http://{args.host}:{args.port}/rate/<token> "
              f"(tokens in {app.state.study.folder / 'invites.csv'}); progress at /study", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
