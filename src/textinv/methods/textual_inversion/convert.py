"""python -m textinv.methods.textual_inversion.convert IN OUT [--token NAME] [--to a1111|kohya|diffusers]

Converts an embedding between the layouts in formats.py; files are read without unpickling code. OUT's
form picks the layout unless --to names it:
  NAME.pt                        A1111 layout, `name` = the token (the file every tool loads, run_files.py)
  learned_embeds*.safetensors    diffusers {token: [n, dim]}
  any other NAME.safetensors     {"emb_params": [n, dim]} (A1111, ComfyUI, kohya, InvokeAI: named NAME)
  a folder (no suffix)           diffusers' folder: learned_embeds.safetensors (SDXL: + learned_embeds_2)
SDXL embeddings (clip_l + clip_g) go to the same forms: .pt/.safetensors hold {"clip_l", "clip_g"}, a
folder holds diffusers' pair (text_encoder, text_encoder_2). IN may be such a folder too.
What cannot be converted (a width no text encoder has, several tokens, an unknown layout, SDXL into a
one-encoder file) is refused with one line and exit status 2.
"""

from __future__ import annotations

from pathlib import Path

from textinv.cli import Parser, exit_on_user_error
from textinv.errors import UserError
from textinv.methods.textual_inversion.formats import (PAIR, SD_WIDTHS, SDXL_WIDTHS, LoadedEmbedding, read_embedding, read_pair, save_a1111,
                      save_diffusers, save_kohya, save_sdxl)


def read_input(path: Path) -> LoadedEmbedding:
    """A file in any layout, or a diffusers folder (one file, or the SDXL pair)."""
    if not path.is_dir():
        return read_embedding(path)
    first, second = path / PAIR[0], path / PAIR[1]
    if not first.is_file():
        raise UserError(f"{path} is a folder without {PAIR[0]}; give the embedding file itself")
    if not second.is_file():
        return read_embedding(first)
    return read_pair(first, second, path)


def check_widths(emb: LoadedEmbedding) -> None:
    if emb.layout == "sdxl":
        for key, vectors in (("clip_l", emb.vectors), ("clip_g", emb.vectors_g)):
            if vectors.shape[1] != SDXL_WIDTHS[key]:
                raise UserError(f"{emb.path}: SDXL {key} is {vectors.shape[1]} wide; expected {SDXL_WIDTHS[key]}")
    elif emb.vectors.shape[1] not in SD_WIDTHS:
        widths = ", ".join(f"{w} = {m}" for w, m in SD_WIDTHS.items())
        raise UserError(f"{emb.path}: embedding dimension {emb.vectors.shape[1]} is no SD text encoder's ({widths})")


def target_layout(out: Path, to: str | None) -> str:
    if to:
        return to
    if out.suffix == ".pt":
        return "a1111"
    if out.suffix == ".safetensors":
        return "diffusers" if out.name.startswith("learned_embeds") else "kohya"
    if out.suffix == "" or out.is_dir():
        return "diffusers"
    raise UserError(f"{out}: cannot tell the layout from '{out.suffix}'; write a .pt, a .safetensors or a folder")


def write(emb: LoadedEmbedding, out: Path, layout: str, token: str) -> list[Path]:
    folder = out.suffix == "" or out.is_dir()
    if emb.layout == "sdxl":
        if folder:
            return [save_diffusers(out / PAIR[0], token, emb.vectors),
                    save_diffusers(out / PAIR[1], token, emb.vectors_g)]
        if layout == "diffusers":
            raise UserError(f"{out}: diffusers keeps an SDXL embedding in two files; give a folder as OUT")
        return [save_sdxl(out, emb.vectors, emb.vectors_g)]
    if folder:
        out = out / PAIR[0]
    if layout == "a1111":
        if out.suffix != ".pt":
            raise UserError(f"{out}: the A1111 layout holds a name and a step, which only a .pt can; name OUT *.pt")
        return [save_a1111(out, token, emb.vectors)]
    if layout == "kohya":
        return [save_kohya(out, emb.vectors)]
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: write the diffusers layout to a .safetensors file or a folder")
    return [save_diffusers(out, token, emb.vectors)]


def check_output(out: Path) -> None:
    """OUT is new: convert never overwrites a file it did not write (a file, or a diffusers folder's files)."""
    from textinv.cli import new_output_file

    if out.is_dir():
        taken = [name for name in PAIR if (out / name).exists()]
        if taken:
            raise UserError(f"OUT {out} already holds {', '.join(taken)}; convert never overwrites: choose a new "
                            "folder or move them away")
        return
    new_output_file(str(out / PAIR[0]) if out.suffix == "" else str(out), "OUT")


def convert(src: Path, out: Path, token: str | None = None, to: str | None = None) -> list[Path]:
    if not src.exists():
        raise UserError(f"IN {src} does not exist; give an embedding file or a diffusers folder")
    from textinv.runs.layout import run_root_file

    src = run_root_file(src, "IN")  # a run folder: its root file
    check_output(out)
    emb = read_input(src)
    check_widths(emb)
    layout = target_layout(out, to)
    # The token: asked for, else the file's own (diffusers key, A1111 name), else the input's stem as A1111 would.
    return write(emb, out, layout, token or emb.token or src.stem)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m textinv convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, metavar="IN", help="embedding file (or a diffusers folder)")
    parser.add_argument("output", type=Path, metavar="OUT", help="NAME.pt, NAME.safetensors, or a folder")
    parser.add_argument("--token", help="the word diffusers registers (default: the input's own)")
    parser.add_argument("--to", choices=["a1111", "kohya", "diffusers"], help="layout (default: from OUT)")
    args = parser.parse_args(argv)
    for path in convert(args.input, args.output, args.token, args.to):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
