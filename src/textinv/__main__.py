"""python -m textinv <command> [args]: one table of the package's commands (train.py and generate.py stay
Hydra mains). Each command is a module with `main(argv)`; it is imported only when asked for."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {  # name -> (module with main(argv), one line for the help)
    "convert": ("textinv.methods.convert", "convert learned files (embeddings, hypernetworks) between tools' layouts"),
    "toyworld": ("textinv.toyworld.cli", "draw, pretrain or inspect the miniature world"),
    "bench": ("textinv.bench.main", "time training and evaluation against their floors (make bench)"),
    "app": ("textinv.app.main", "the local web page: browse and compare runs, generate with learned words"),
    "rate": ("textinv.ratings.cli", "blind human rating studies (MOS, A/B) of runs' images: new, report, simulate"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:{width}s}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: python -m textinv <command> [args]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
