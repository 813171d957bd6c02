"""The runs list (filter, sort, select), Table 1 and its trade-off plot of a selection, and a sweep's curves.
Numbers come from textinv.runs.results/report/sweep_report, the functions experiments/table.py and
experiments/sweep.py call: the page shows what those scripts print."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from textinv.app.plots import png_of
from textinv.app.runs_index import FAILED, FINISHED, INTERRUPTED, RUNNING, scan
from textinv.app.safety import Refused, confined_path
from textinv.errors import UserError
from textinv.runs.report import fmt, fmt_stat, run_csv_rows, table1_markdown, tradeoff_plot
from textinv.runs.layout import METRICS_PATH, metrics_file
from textinv.runs.results import (METRIC_LABELS, TABLE_METRICS, aggregate, comparability_warnings,
                                  load_runs, model_row_key)
from textinv.runs.sweep_report import (SWEPT_KEYS, by_value, step_rows, steps_plot, sweep_markdown, value_plot,
                                       varying_keys)

router = APIRouter()
SORT_KEYS = ("run", "concept", "method", "model", "seed", "lr", "steps", "status", "cost", *TABLE_METRICS)
STATUSES = (FINISHED, RUNNING, INTERRUPTED, FAILED)


def root_of(request: Request) -> Path:
    return request.app.state.root


@router.get("/")
def index(request: Request, q: str = "", status: str = "", sort: str = "run", desc: bool = False):
    from textinv.app.rendering import render

    if sort not in SORT_KEYS:
        raise Refused(f"sort={sort!r} is not a column; use one of {', '.join(SORT_KEYS)}")
    if status and status not in STATUSES:
        raise Refused(f"status={status!r} is unknown; use one of {', '.join(STATUSES)}")
    entries = scan(root_of(request))
    total = len(entries)
    if q:
        words = q.lower().split()
        entries = [e for e in entries if all(w in " ".join(map(str, (e.id, e.field("concept"), e.method,
                                                                       e.field("model"), e.field("placeholder"))))
                                               .lower() for w in words)]
    if status:
        entries = [e for e in entries if e.status == status]
    entries.sort(key=lambda e: e.sort_key(sort), reverse=desc)
    return render(request, "index.html", {
        "entries": entries, "total": total, "q": q, "status": status, "sort": sort, "desc": desc,
        "sort_keys": SORT_KEYS, "statuses": STATUSES, "metrics": list(TABLE_METRICS), "labels": METRIC_LABELS,
        "fmt": fmt, "root": root_of(request), "swept_keys": SWEPT_KEYS})


def selected_runs(request: Request, ids: list[str], include_unfinished: bool):
    """The runs behind the ids (all runs under the folder when none), loaded as experiments/table.py loads
    them; a run still being written, or malformed, is a one-line message."""
    root = root_of(request)
    if ids:
        dirs = [confined_path(root, i) for i in ids]
        missing = [i for i, d in zip(ids, dirs) if not metrics_file(d).is_file()]
        if missing:
            raise Refused(f"no run {missing[0]!r} in the runs folder", 404)
    else:
        dirs = [e.path for e in scan(root) if e.result is not None]
        if not dirs:
            raise Refused(f"no runs with {METRICS_PATH} under {root} yet", 404)
    return load_runs(dirs, include_unfinished=include_unfinished)


def selection_query(ids: list[str], include_unfinished: bool, **extra) -> str:
    from urllib.parse import urlencode

    pairs = [("run", i) for i in ids] + ([("include_unfinished", "true")] if include_unfinished else [])
    return urlencode(pairs + [(k, v) for k, v in extra.items() if v])


@router.get("/table")
def table(request: Request, run: list[str] = Query(default=[]), include_unfinished: bool = False):
    from textinv.app.rendering import render

    runs = selected_runs(request, run, include_unfinished)
    warnings = comparability_warnings(runs)
    rows = aggregate(runs, key=model_row_key(runs))
    study = getattr(request.app.state, "study", None)
    if study is not None:  # the served rating study's MOS for the rows it covers
        from textinv.ratings.report import table_mos

        mos = table_mos([study.folder], rows)
        for row in rows:
            row["mos"] = mos.get(row["label"])
    return render(request, "table.html", {
        "rows": rows, "per_run": run_csv_rows(runs), "metrics": list(TABLE_METRICS), "labels": METRIC_LABELS,
        "fmt_stat": fmt_stat, "fmt": fmt, "warnings": warnings, "markdown": table1_markdown(rows, runs, warnings),
        "query": selection_query(run, include_unfinished), "root": root_of(request),
        "ids": {str(r.run_dir): _id(request, r.run_dir) for r in runs}})


def _id(request: Request, path) -> str:
    try:
        return Path(path).resolve().relative_to(root_of(request).resolve()).as_posix()
    except ValueError:
        return ""


@router.get("/plot/tradeoff.png")
def tradeoff_png(request: Request, run: list[str] = Query(default=[]), include_unfinished: bool = False):
    runs = selected_runs(request, run, include_unfinished)
    rows = aggregate(runs, key=model_row_key(runs))
    return Response(png_of(lambda path: tradeoff_plot(path, runs, rows)), media_type="image/png")


def sweep_key(runs, by: str) -> str:
    if by:
        if by not in SWEPT_KEYS:
            raise Refused(f"by={by!r} is not a swept key; use one of {', '.join(SWEPT_KEYS)}")
        return by
    varying = varying_keys(runs)
    return varying[0] if varying else "seed"


@router.get("/sweep")
def sweep(request: Request, run: list[str] = Query(default=[]), by: str = "", include_unfinished: bool = False):
    from textinv.app.rendering import render

    runs = selected_runs(request, run, include_unfinished)
    by = sweep_key(runs, by)
    try:
        rows = by_value(runs, by)
    except UserError as err:
        raise Refused(str(err)) from None
    steps = step_rows(runs)
    return render(request, "sweep.html", {
        "by": by, "rows": rows, "steps": steps, "metrics": list(TABLE_METRICS), "labels": METRIC_LABELS,
        "fmt_stat": fmt_stat, "markdown": sweep_markdown(by, rows, steps, runs, comparability_warnings(runs)),
        "varying": varying_keys(runs), "swept_keys": SWEPT_KEYS, "ids": run, "include_unfinished": include_unfinished,
        "query": selection_query(run, include_unfinished, by=by)})


@router.get("/plot/sweep.png")
def sweep_png(request: Request, run: list[str] = Query(default=[]), by: str = "", kind: str = "by",
              include_unfinished: bool = False):
    runs = selected_runs(request, run, include_unfinished)
    by = sweep_key(runs, by)
    if kind == "steps":
        steps = step_rows(runs)
        if len(steps) < 2:
            raise Refused("these runs were evaluated at one step only: no curve over steps", 404)
        return Response(png_of(lambda path: steps_plot(path, runs, steps)), media_type="image/png")
    if kind != "by":
        raise Refused(f"kind={kind!r}; use by or steps")
    rows = by_value(runs, by)
    return Response(png_of(lambda path: value_plot(path, by, rows)), media_type="image/png")
