"""A sweep's tables and plots: one row per swept value (lr, seed, init, ...) and metrics vs training step.

    python experiments/sweep.py SWEEP_DIR [...] --out OUT_DIR [--by KEY] [--include-unfinished] [--no-wandb]

SWEEP_DIR is a sweep folder (e.g. outputs/sweeps/lr) or run directories. --by defaults to the key whose
value differs between the runs (lr for sweep=lr, seed for sweep=seed, init for sweep=init). Writes
OUT_DIR/sweep.md, by_<KEY>.csv and by_<KEY>.png (mean ± sample std over the runs of each value, e.g.
over seeds and concepts), runs.csv, and, where runs were evaluated at several steps (sweep=steps),
steps.csv and steps.png (metrics vs training step); plus an offline W&B run with the tables and plots.
"""

from __future__ import annotations

import argparse
import logging

from textinv.cli import claim_outputs, exit_on_user_error, results_parser, script_logging
from textinv.runs.report import log_wandb
from textinv.runs.results import comparability_warnings, load_runs
from textinv.runs.sweep_report import SWEPT_KEYS, by_value, sweep_files, varying_keys

log = logging.getLogger("textinv.sweep")


def parse_args(argv=None) -> argparse.Namespace:
    p = results_parser(__doc__, "SWEEP_DIR")
    p.add_argument("--by", help=f"the swept key: {', '.join(SWEPT_KEYS)} or a dotted config key "
                                "(default: the key that differs between the runs)")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> dict:
    args = parse_args(argv)
    runs = load_runs(args.runs, include_unfinished=args.include_unfinished)
    swept = varying_keys(runs)
    by = args.by or (swept[0] if swept else "steps")
    if args.by is None and len(swept) > 1:
        log.info("the runs differ in %s; tabulating by %s (choose with --by)", ", ".join(swept), by)
    warnings = [w for w in comparability_warnings(runs) if not (by == "model" and w.startswith("runs use"))]
    for w in warnings:
        log.warning(w)
    by_value(runs, by)  # an --by no run records is refused before --out is touched
    claim_outputs(args.out, [r"sweep\.md", r"by_.+\.(csv|png)", r"runs\.csv", r"steps\.(csv|png)"], "sweep.py")
    files, tables = sweep_files(args.out, by, runs, warnings)
    if not args.no_wandb:
        images = {name.removesuffix(".png"): path for name, path in files.items() if name.endswith(".png")}
        files["wandb"] = log_wandb(args.out, tables, images, name=f"sweep-{by}")
    print((args.out / "sweep.md").read_text().rstrip())
    print(f"\nwrote {', '.join(str(f) for f in files.values() if f)}")
    return files


if __name__ == "__main__":
    script_logging()
    main()
