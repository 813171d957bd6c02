"""A sweep's runs -> per-value tables and plots (experiments/sweep.py).

`by` is the swept key (lr, seed, init, steps, concept, ...; by default every header key whose value
differs between the runs). One row per value: mean ± sample std over the runs holding it (seeds,
concepts), and an "all" row over every run. Runs evaluated at several steps also give the
metric-vs-steps table and curve (the steps ablation: one run, snapshots evaluated during training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from textinv.errors import UserError
from textinv.evaluation.schedule import FULL
from textinv.runs.report import fmt_stat, markdown_table, pyplot, save_figure, stat_columns, table_csv_rows
from textinv.runs.results import METRIC_LABELS, TABLE_METRICS, RunResult, Stat, aggregate, curve_protocol

SWEPT_KEYS = ("lr", "seed", "init", "steps", "num_vectors", "concept", "baseline", "model")
CURVE_METRICS = ("reconstruction", "editability")
ALL = "all"


def varying_keys(runs: Sequence[RunResult]) -> list[str]:
    """Header keys whose values differ between the runs: what the sweep swept."""
    return [k for k in SWEPT_KEYS if len({repr(r.get(k)) for r in runs}) > 1]


def sort_values(values) -> list:
    """Numbers in numeric order, anything else by its text."""
    nums = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return sorted(values) if nums else sorted(values, key=str)


def by_value(runs: Sequence[RunResult], by: str) -> list[dict]:
    """Rows of `aggregate`, one per value of `by` in order, then the row over all runs."""
    values = [r.get(by) for r in runs]
    if all(v is None for v in values):
        swept = ", ".join(varying_keys(runs)) or "nothing"
        raise UserError(f"--by {by}: no run records it (in its metrics.json header or config.yaml); "
                        f"the runs differ in {swept}")
    rows = aggregate(runs, key=lambda r: r.get(by), order=sort_values(set(values)))
    return rows + aggregate(runs, key=lambda r: ALL, order=[ALL])


def step_rows(runs: Sequence[RunResult]) -> list[dict]:
    """One row per evaluated step: each metric's mean ± std over the runs evaluated at that step, all under
    one protocol (`curve_protocol`)."""
    protocol = curve_protocol(runs)
    steps = sorted({e["step"] for r in runs for e in r.curve(protocol)})
    out = []
    for step in steps:
        evals = [(r, r.evaluation_at(step, protocol)) for r in runs]
        evals = [(r, e) for r, e in evals if e is not None]
        out.append({"label": step, "num_runs": len(evals),
                    "stats": {name: Stat.of([r.value(k, e) for r, e in evals]) for name, k in TABLE_METRICS.items()}})
    return out


def protocol_label(runs: Sequence[RunResult], protocol: str) -> str:
    """"DPM 20 steps, 8 images per prompt" of a protocol, from the runs' records."""
    for r in runs:
        for e in r.curve(protocol):
            s = e.get("settings") or (r.settings if protocol == FULL else {})
            if s:
                return f"{str(s.get('scheduler', '?')).upper()} {s.get('sampler_steps', '?')} steps, " \
                       f"{s.get('num_images', '?')} images per prompt"
    return "settings not recorded"


def step_csv_rows(rows: Sequence[dict]) -> list[dict]:
    return [{"step": row["label"], "runs": row["num_runs"], **stat_columns(row["stats"])} for row in rows]


def sweep_markdown(by: str, rows: Sequence[dict], steps: Sequence[dict], runs: Sequence[RunResult],
                   warnings: Sequence[str]) -> str:
    names = list(TABLE_METRICS)
    text = [f"# Sweep over {by}", "",
            markdown_table([by, *(METRIC_LABELS[n] for n in names), "Runs", "Concepts", "Seeds"],
                           [[row["label"], *(fmt_stat(row["stats"][n]) for n in names), row["num_runs"],
                             row["concepts"], row["seeds"]] for row in rows]),
            "", "Mean ± sample standard deviation (n - 1) over the runs holding each value (each run's final "
            f"full-protocol evaluation); `{ALL}` is every run. Reconstruction: CLIP-I; editability: CLIP-T; "
            "higher is better."]
    if len(steps) > 1:
        protocol = curve_protocol(runs)
        text += ["", "## Metrics vs training step", "",
                 f"Every step under the **{protocol} protocol** ({protocol_label(runs, protocol)}).", "",
                 markdown_table(["Step", *(METRIC_LABELS[n] for n in names), "Runs"],
                                [[row["label"], *(fmt_stat(row["stats"][n]) for n in names), row["num_runs"]]
                                 for row in steps])]
    if any((r.settings.get("clip") or {}).get("weights") == "random" for r in runs):
        text += ["", "**CLIP with random weights (demo/tests): these numbers mean nothing.**"]
    text += [f"\nWarning: {w}." for w in warnings]
    return "\n".join(text) + "\n"


def value_plot(path: Path, by: str, rows: Sequence[dict]) -> Path:
    """Reconstruction and editability against the swept value: each run a dot, each value its mean ± std."""
    plt = pyplot()
    rows = [r for r in rows if r["label"] != ALL]
    labels = [r["label"] for r in rows]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels)
    xs = labels if numeric else list(range(len(labels)))
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(5.2 * len(CURVE_METRICS), 4.0), dpi=110)
    for ax, metric in zip(axes, CURVE_METRICS):
        for x, row in zip(xs, rows):
            ax.scatter([x] * row["num_runs"], [r.value(metric) for r in row["runs"]], color="tab:gray", s=14,
                       alpha=0.6)
        means = [row["stats"][metric] for row in rows]
        ax.errorbar(xs, [s.mean for s in means], yerr=[s.std or 0 for s in means], fmt="o-", color="tab:orange",
                    capsize=4, label="mean ± std over runs")
        if numeric and min(xs) > 0 and max(xs) / min(xs) >= 20:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(xs, [str(v) for v in labels])
        ax.set_xlabel(by)
        ax.set_ylabel(f"{METRIC_LABELS[metric]} ({'CLIP-I' if metric == 'reconstruction' else 'CLIP-T'})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def steps_plot(path: Path, runs: Sequence[RunResult], steps: Sequence[dict]) -> Path:
    """Each run's metrics at its evaluated steps (a line per run), and their mean where several runs."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(5.2 * len(CURVE_METRICS), 4.0), dpi=110)
    protocol = curve_protocol(runs)
    fig.suptitle(f"{protocol} protocol: {protocol_label(runs, protocol)}", fontsize=9)
    for ax, metric in zip(axes, CURVE_METRICS):
        for r in runs:
            pts = [(e["step"], r.value(metric, e)) for e in r.curve(protocol)]
            pts = [p for p in pts if p[1] is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", alpha=0.5,
                    label=f"{r.concept}/s{r.seed}" if len(runs) <= 10 else None)
        if len(runs) > 1:
            ax.plot([row["label"] for row in steps], [row["stats"][metric].mean for row in steps], "k-", lw=2,
                    label="mean over runs")
        ax.set_xlabel("training step")
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def sweep_files(out: Path, by: str, runs: Sequence[RunResult],
                warnings: Sequence[str]) -> tuple[dict[str, Path], dict[str, list[dict]]]:
    """Writes the tables and plots; returns the files by name and the tables' rows (for W&B)."""
    from textinv.utils.atomic import atomic_write_text
    from textinv.runs.report import run_csv_rows, write_csv

    rows, steps = by_value(runs, by), step_rows(runs)
    tables = {f"by_{by}": table_csv_rows(rows, label=by), "runs": run_csv_rows(runs)}
    if len(steps) > 1:
        tables["steps"] = step_csv_rows(steps)
    files = {"sweep.md": atomic_write_text(out / "sweep.md", sweep_markdown(by, rows, steps, runs, warnings))}
    files.update({f"{name}.csv": write_csv(out / f"{name}.csv", table) for name, table in tables.items()})
    files[f"by_{by}.png"] = value_plot(out / f"by_{by}.png", by, rows)
    if len(steps) > 1:
        files["steps.png"] = steps_plot(out / "steps.png", runs, steps)
    return files, tables
