"""python -m textinv toyworld draw|pretrain: draw a concept set, or pretrain the world's models.

  python -m textinv toyworld draw --shape star --color red --background white --n 5 --out DIR
  python -m textinv toyworld pretrain [--minutes 30]   (make toyworld; resumes where it stopped)
  python -m textinv toyworld attributes RUN [RUN ...]  (what a drawn concept's run generated)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from textinv.cli import Parser, bounded_int, check_writable_folder, exit_on_user_error, out_folder
from textinv.errors import UserError
from textinv.toyworld import TOYWORLD_WEIGHTS
from textinv.toyworld.world import BACKGROUNDS, COLORS, SHAPES, SIZES, STYLES

DEFAULT_OUT = TOYWORLD_WEIGHTS


def positive_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of minutes")
    return value


def _choices(values):
    values = list(values)

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in values]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(values)} (comma-separated for several)")
        return items

    return parse


def check_draw_out(out: Path) -> None:
    """draw writes 00.png, 01.png, ... and a record of them: only into a new or empty folder, or one it drew
    before (its record names its files); never among the user's own pictures, never over a file."""
    import json

    from textinv.data.images import DRAWN_RECORD

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file, not a folder; give a new or empty folder")
    check_writable_folder(out, f"--out {out}", "is a file, not a folder; give a new or empty folder")
    if not out.is_dir():
        return
    drawn: set[str] = set()
    record = out / DRAWN_RECORD
    if record.is_file():
        try:
            drawn = set(json.loads(record.read_text(encoding="utf-8"))["files"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise UserError(f"--out {out}: its {DRAWN_RECORD} is unreadable, so which files draw wrote is unknown; "
                            "give a new or empty folder") from None
    others = sorted(p.name for p in out.iterdir() if p.name != DRAWN_RECORD and p.name not in drawn)
    if others:
        raise UserError(f"--out {out} already holds files draw did not write ({', '.join(others[:3])}"
                        f"{', ...' if len(others) > 3 else ''}); draw never writes among or over them: give a new or "
                        "empty folder")


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m textinv toyworld", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("draw", help="draw a few-shot concept set (fixed attributes, varied placement)")
    for name, values in (("shape", SHAPES), ("color", COLORS), ("background", BACKGROUNDS), ("style", STYLES),
                         ("size", SIZES)):
        d.add_argument(f"--{name}", type=_choices(values), help=f"one or several of: {', '.join(values)}")
    d.add_argument("--n", type=bounded_int(1, 10_000), default=5, help="number of images (default 5)")
    d.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0)
    d.add_argument("--px", type=bounded_int(16, 1024), default=64,
                   help="image side in pixels (default 64, the world's size)")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--masks", action="store_true",
                   help="also write each image's subject mask beside it (<name>-masklabel.png) for data.masked=true")
    t = sub.add_parser("pretrain", help="pretrain the world's models from scratch (resumable)")
    t.add_argument("--work", type=out_folder, default=Path("outputs/toyworld"), help="checkpoints and derived data")
    t.add_argument("--out", type=out_folder, default=DEFAULT_OUT, help="where the exported weights go")
    t.add_argument("--minutes", type=positive_float, default=None, help="stop cleanly after this many minutes (resume later)")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="change the recipe (e.g. t2i_steps=100)")
    a = sub.add_parser("attributes", help="share of generated images showing the concept's look and the prompt")
    a.add_argument("runs", nargs="+", type=Path, help="run folders of a drawn concept (baseline or trained)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    if args.command == "draw":
        from textinv.toyworld.draw import draw_concept

        check_draw_out(args.out)
        paths = draw_concept(args.out, args.n, args.seed, args.px, masks=args.masks, shape=args.shape, color=args.color,
                             background=args.background, style=args.style, size=args.size)
        print(f"drew {len(paths)} images{' and their masks' if args.masks else ''} into {args.out}")
        return 0
    if args.command == "attributes":
        from textinv.toyworld import TOYWORLD_CLASSIFIER
        from textinv.toyworld.attributes import format_attributes, run_attributes
        from textinv.runs.layout import CONFIG_FILE, config_file
        from textinv.toyworld.models import load_classifier

        for run in args.runs:
            if not config_file(run).is_file():
                p.error(f"{run} is not a run folder (no {CONFIG_FILE})")
        classifier = load_classifier(TOYWORLD_CLASSIFIER)
        for run in args.runs:
            print(format_attributes(run, run_attributes(run, classifier)))
        return 0
    from dataclasses import fields

    from textinv.toyworld.pretrain import Recipe, pretrain

    types = {f.name: f.type for f in fields(Recipe)}
    changes = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in types or not value:
            p.error(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
        try:
            changes[key] = float(value) if types[key] in (float, "float") else int(value)
        except ValueError:
            p.error(f"--set {item!r}: {value!r} is not a {'number' if types[key] in (float, 'float') else 'whole number'}")
    pretrain(args.work, args.out, Recipe(**changes), args.minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
