"""python -m textinv convert IN OUT: a learned file into another tool's layout, whichever method wrote it.

A hypernetwork (AUTOMATIC1111 `.pt` or this project's `.safetensors`) converts between those two; anything else
is an embedding (textinv.methods.textual_inversion.convert, whose help lists its layouts)."""

from __future__ import annotations

import sys
from pathlib import Path

from textinv.cli import exit_on_user_error
from textinv.errors import UserError
from textinv.methods.hypernetwork.files import convert_hypernetwork, is_hypernetwork_file
from textinv.methods.textual_inversion import convert as embedding_convert


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    positional = [a for a in argv if not a.startswith("-")]
    if len(positional) == 2 and Path(positional[0]).is_dir():  # a run folder: its root file, whichever method
        from textinv.runs.layout import run_root_file

        root = str(run_root_file(Path(positional[0]), "IN"))
        argv = [root if a == positional[0] else a for a in argv]
        positional[0] = root
    if len(positional) == 2 and is_hypernetwork_file(Path(positional[0])):
        if len(argv) != 2:
            raise UserError("a hypernetwork file converts by its OUT suffix alone (.pt or .safetensors); "
                            "--token and --to are for embeddings")
        embedding_convert.check_output(Path(positional[1]))
        out = convert_hypernetwork(Path(positional[0]), Path(positional[1]))
        print(f"wrote {out} (hypernetwork)")
        return
    embedding_convert.main(argv)
