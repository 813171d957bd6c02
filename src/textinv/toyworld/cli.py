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

from textinv.toyworld import TOYWORLD_WEIGHTS
from textinv.toyworld.world import BACKGROUNDS, COLORS, SHAPES, SIZES, STYLES

DEFAULT_OUT = TOYWORLD_WEIGHTS


def _choices(values):
    values = list(values)

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in values]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(values)} (comma-separated for several)")
        return items

    return parse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m textinv toyworld", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("draw", help="draw a few-shot concept set (fixed attributes, varied placement)")
    for name, values in (("shape", SHAPES), ("color", COLORS), ("background", BACKGROUNDS), ("style", STYLES),
                         ("size", SIZES)):
        d.add_argument(f"--{name}", type=_choices(values), help=f"one or several of: {', '.join(values)}")
    d.add_argument("--n", type=int, default=5, help="number of images (default 5)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--px", type=int, default=64, help="image side in pixels (default 64, the world's size)")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--masks", action="store_true",
                   help="also write each image's subject mask beside it (<name>-masklabel.png) for data.masked=true")
    t = sub.add_parser("pretrain", help="pretrain the world's models from scratch (resumable)")
    t.add_argument("--work", type=Path, default=Path("outputs/toyworld"), help="checkpoints and derived data")
    t.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the exported weights go")
    t.add_argument("--minutes", type=float, default=None, help="stop cleanly after this many minutes (resume later)")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="change the recipe (e.g. t2i_steps=100)")
    a = sub.add_parser("attributes", help="share of generated images showing the concept's look and the prompt")
    a.add_argument("runs", nargs="+", type=Path, help="run folders of a drawn concept (baseline or trained)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    if args.command == "draw":
        from textinv.toyworld.draw import draw_concept

        if args.n < 1 or args.px < 16:
            p.error("--n must be >= 1 and --px >= 16")
        paths = draw_concept(args.out, args.n, args.seed, args.px, masks=args.masks, shape=args.shape, color=args.color,
                             background=args.background, style=args.style, size=args.size)
        print(f"drew {len(paths)} images{' and their masks' if args.masks else ''} into {args.out}")
        return 0
    if args.command == "attributes":
        from textinv.toyworld import TOYWORLD_CLASSIFIER
        from textinv.toyworld.attributes import format_attributes, run_attributes
        from textinv.runs.layout import CONFIG_FILE, config_file
        from textinv.toyworld.models import load_classifier

        classifier = load_classifier(TOYWORLD_CLASSIFIER)
        for run in args.runs:
            if not config_file(run).is_file():
                p.error(f"{run} is not a run folder (no {CONFIG_FILE})")
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
        changes[key] = float(value) if types[key] in (float, "float") else int(value)
    pretrain(args.work, args.out, Recipe(**changes), args.minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
