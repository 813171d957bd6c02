"""python -m textinv rate <new|report|simulate|export|import>: blind rating studies of runs' images.

    rate new RUNS... --raters N --out STUDY [--images-per-prompt K] [--prompts 0,1] [--minutes 30] [--seed S]
             [--references CONCEPT=DIR] [--subject CONCEPT=TEXT]
    rate report STUDY [--bootstrap 2000]
    rate simulate STUDY --url http://127.0.0.1:8000 [--seed S] [--concurrency 8] [--careless K] [--truth Q:COND=X,...]
    rate export STUDY --out answers.csv
    rate import STUDY answers.csv [...]

Serve a study with `python -m textinv app --study STUDY` and hand each rater one link of STUDY/invites.csv."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from textinv.cli import exit_on_user_error
from textinv.errors import UserError


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for v in values or []:
        if "=" not in v:
            raise UserError(f"{what} {v!r}: write CONCEPT=VALUE")
        k, val = v.split("=", 1)
        out[k.strip()] = val.strip()
    return out


def parse_truth(text: str) -> dict:
    """'quality:SD=2.5,subject:SD + TI=4' -> {question: {condition: score}} over the defaults."""
    from textinv.ratings.simulate import TRUTH

    truth = {q: dict(v) for q, v in TRUTH.items()}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        try:
            key, value = part.split("=", 1)
            question, cond = key.split(":", 1)
            truth.setdefault(question.strip(), {})[cond.strip()] = float(value)
        except ValueError:
            raise UserError(f"--truth {part!r}: write QUESTION:CONDITION=SCORE, e.g. quality:SD=2.5") from None
    return truth


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m textinv rate", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="draw a study from runs")
    new.add_argument("runs", nargs="+", help="run folders or sweep folders holding them")
    new.add_argument("--raters", type=int, required=True, help="invite links to make (BT.500: 15 or more)")
    new.add_argument("--out", required=True, help="the new study folder")
    new.add_argument("--images-per-prompt", type=int, default=2, help="seeds per prompt and run (default 2)")
    new.add_argument("--prompts", default="", help="prompt indices to use, e.g. 0,1 (default all)")
    new.add_argument("--minutes", type=float, default=30.0, help="longest session (default 30, BT.500)")
    new.add_argument("--seed", type=int, default=0)
    new.add_argument("--references", action="append", default=[], metavar="CONCEPT=DIR",
                     help="the concept's real photos (default: its concept.data_dir)")
    new.add_argument("--subject", action="append", default=[], metavar="CONCEPT=TEXT",
                     help="the words for the concept in the texts raters see (default: its initializer word)")
    new.add_argument("--golds", type=int, default=1)
    new.add_argument("--traps", type=int, default=1)
    new.add_argument("--include-unfinished", action="store_true")
    rep = sub.add_parser("report", help="MOS, intervals, screening, alpha, A/B win rates, plot")
    rep.add_argument("study")
    rep.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    rep.add_argument("--seed", type=int, default=0)
    sim = sub.add_parser("simulate", help="answer every invite through a running server, with known truth")
    sim.add_argument("study")
    sim.add_argument("--url", required=True, help="the running app, e.g. http://127.0.0.1:8000")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--concurrency", type=int, default=8)
    sim.add_argument("--careless", type=int, default=0, help="the first K raters answer at random")
    sim.add_argument("--truth", default="", help="QUESTION:CONDITION=SCORE,... over the defaults")
    sim.add_argument("--bias-sd", type=float, default=0.4)
    sim.add_argument("--noise-sd", type=float, default=0.6)
    exp = sub.add_parser("export", help="the answers as CSV")
    exp.add_argument("study")
    exp.add_argument("--out", required=True)
    imp = sub.add_parser("import", help="merge answers exported from another copy of the study")
    imp.add_argument("study")
    imp.add_argument("csv", nargs="+")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "new":
        from textinv.ratings.study import new_study

        try:
            prompts = [int(p) for p in args.prompts.split(",") if p.strip()] or None
        except ValueError:
            raise UserError(f"--prompts {args.prompts!r}: a comma list of prompt indices, e.g. 0,1") from None
        study = new_study(args.runs, args.out, args.raters, seed=args.seed, images_per_prompt=args.images_per_prompt,
                          prompts=prompts, minutes=args.minutes, references=_pairs(args.references, "--references"),
                          subjects=_pairs(args.subject, "--subject"), golds=args.golds, traps=args.traps,
                          include_unfinished=args.include_unfinished)
        from textinv.ratings.store import Store

        tasks = Store(study.db_path).progress()
        print(f"study {study.folder}: {len(study.items)} items, {len(study.data['conditions'])} conditions, "
              f"{len(tasks)} raters with {min(t['tasks'] for t in tasks)}-{max(t['tasks'] for t in tasks)} tasks each")
        print(f"serve it: python -m textinv app --study {study.folder}; invite links in {study.folder / 'invites.csv'}"
              " (keep it private: the only copy of the tokens)")
        return 0
    from textinv.ratings.study import Study

    study = Study.load(args.study)
    if args.command == "report":
        from textinv.ratings.report import write_report

        out = write_report(study, n_boot=args.bootstrap, seed=args.seed)
        print(out["markdown"])
        print(f"wrote {', '.join(str(f) for f in out['files'].values())}")
    elif args.command == "simulate":
        from textinv.ratings.simulate import Simulation, simulate

        sim = Simulation(truth=parse_truth(args.truth), bias_sd=args.bias_sd, noise_sd=args.noise_sd,
                         careless=args.careless, seed=args.seed)
        acks = simulate(study.folder, args.url, sim, concurrency=args.concurrency)
        print(f"{len(acks)} answers acknowledged by {args.url} from {len({a.rater for a in acks})} simulated rater(s)")
    elif args.command == "export":
        from textinv.ratings.store import Store

        Path(args.out).expanduser().write_text(Store(study.db_path).export_csv(), encoding="utf-8")
        print(f"wrote {args.out}")
    elif args.command == "import":
        from textinv.ratings.store import Store

        store = Store(study.db_path)
        for path in args.csv:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except FileNotFoundError:
                raise UserError(f"{path}: no such file") from None
            got = store.import_csv(text, path)
            print(f"{path}: {got['added']} added, {got['identical']} already there, {len(got['conflicts'])} conflicting "
                  "(the answer already there kept)")
            for c in got["conflicts"][:20]:
                print(f"  conflict: {c}")
    return 0
