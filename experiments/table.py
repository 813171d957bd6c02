"""The study's Table 1 from finished runs: rows SD (baseline=true runs) and SD + TI (the rest).

    python experiments/table.py RUN_DIR_OR_SWEEP [...] --out OUT_DIR [--no-wandb] [--include-unfinished] [--study STUDY]

Each argument is a run directory (holding eval/metrics.json) or a folder with runs anywhere below it
(a Hydra multirun/sweep directory). Writes OUT_DIR/table.md, table.csv (one row per model row),
runs.csv (one row per run), tradeoff.png (reconstruction vs editability, the study's numbers as stars)
and, where wandb is installed, an offline W&B run in OUT_DIR/wandb with the same tables and plot.
Mean and spread are over runs: mean and sample standard deviation of each run's final evaluation.
--study (repeatable): a rating study (python -m textinv rate new) whose condition holds exactly a row's runs adds
a MOS column (overall quality, with its interval and number of raters).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from textinv.utils.atomic import atomic_write_text, confined
from textinv.cli import claim_outputs, exit_on_user_error, results_parser, script_logging
from textinv.runs.report import log_wandb, run_csv_rows, table1_markdown, table_csv_rows, tradeoff_plot, write_csv
from textinv.runs.results import aggregate, comparability_warnings, load_runs, model_row_key

log = logging.getLogger("textinv.table")


def parse_args(argv=None) -> argparse.Namespace:
    parser = results_parser(__doc__, "RUN_DIR")
    parser.add_argument("--study", action="append", default=[], help="a rating study covering the runs: MOS column")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> dict:
    args = parse_args(argv)
    runs = load_runs(args.runs, include_unfinished=args.include_unfinished)
    warnings = comparability_warnings(runs)
    for w in warnings:
        log.warning(w)
    rows = aggregate(runs, key=model_row_key(runs))
    if args.study:
        from textinv.ratings.report import table_mos

        mos = table_mos(args.study, rows)
        for row in rows:
            row["mos"] = mos.get(row["label"])
    out: Path = args.out
    table_rows, run_rows = table_csv_rows(rows), run_csv_rows(runs)
    with confined(out):  # every file lands in --out
        claim_outputs(out, [r"table\.md", r"table\.csv", r"runs\.csv", r"tradeoff\.png"], "table.py")
        files = {
            "table.md": atomic_write_text(out / "table.md", table1_markdown(rows, runs, warnings)),
            "table.csv": write_csv(out / "table.csv", table_rows),
            "runs.csv": write_csv(out / "runs.csv", run_rows),
            "tradeoff.png": tradeoff_plot(out / "tradeoff.png", runs, rows),
        }
        if not args.no_wandb:
            files["wandb"] = log_wandb(out, {"table1": table_rows, "runs": run_rows}, {"tradeoff": files["tradeoff.png"]},
                                       name="table1")
    print((out / "table.md").read_text().split("\n## Runs")[0].rstrip())
    print(f"\nwrote {', '.join(str(f) for f in files.values() if f)}")
    return files


if __name__ == "__main__":
    script_logging()
    main()
