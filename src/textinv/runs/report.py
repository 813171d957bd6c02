"""Aggregated runs -> files: the Table 1 markdown, CSV rows, the reconstruction-vs-editability plot and a
W&B run with the tables (used by experiments/table.py; the runs come from textinv.runs.results)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Iterable, Sequence

from textinv.evaluation.schedule import protocol_of
from textinv.utils.atomic import atomic_write_text
from textinv.runs.results import (BASELINE_ROW, METRIC_LABELS, ROW_ORDER, STUDY_TABLE, TABLE_METRICS, TI_ROW, HN_ROW, RunResult,
                      Stat)

log = logging.getLogger(__name__)


def fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def fmt_stat(s: Stat, digits: int = 4) -> str:
    if s.mean is None:
        return "n/a"
    return fmt(s.mean, digits) if s.std is None else f"{fmt(s.mean, digits)} ± {fmt(s.std, digits)}"


def stat_columns(stats: dict[str, Stat]) -> dict:
    """`<metric>_mean`, `_std`, `_n` per metric: full precision, None where undefined."""
    out = {}
    for name, s in stats.items():
        out.update({f"{name}_mean": s.mean, f"{name}_std": s.std, f"{name}_n": s.n})
    return out


def table_csv_rows(rows: Sequence[dict], label: str = "model") -> list[dict]:
    """Flat rows of aggregated groups (column `label`: the group): full precision; empty where undefined."""
    return [{label: row["label"], "runs": row["num_runs"], "concepts": row["concepts"], "seeds": row["seeds"],
             "images": row["images"], **stat_columns(row["stats"]),
             **({"mos": row.get("mos") or ""} if any("mos" in r for r in rows) else {})} for row in rows]


def run_csv_rows(runs: Sequence[RunResult]) -> list[dict]:
    """One flat row per run (its final evaluation): what a sweep table groups further."""
    out = []
    for r in sorted(runs, key=lambda r: (ROW_ORDER.index(r.row), r.concept, str(r.seed), str(r.run_dir))):
        out.append({"model": r.row, "concept": r.concept, "initializer": r.header.get("initializer"),
                    "seed": r.seed, "lr": r.header.get("lr"), "steps": r.header.get("steps"),
                    "num_vectors": r.header.get("num_vectors"), "base_model": r.model_id, "family": r.family,
                    "step": r.final.get("step"), "num_images": r.final.get("num_images"),
                    **{name: r.value(k) for name, k in TABLE_METRICS.items()},
                    "finished": r.finished, "run_dir": str(r.run_dir)})
    return out


def to_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def write_csv(path: str | Path, rows: Sequence[dict]) -> Path:
    return atomic_write_text(path, to_csv(rows))


def markdown_table(header: Sequence[str], body: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def describe_settings(runs: Sequence[RunResult]) -> str:
    s = runs[0].settings
    clip = s.get("clip") or {}
    fid = s.get("fid") or {}
    parts = [f"{protocol_of(s)} protocol", f"model {', '.join(sorted({r.model_id for r in runs}))}",
             f"{str(s.get('scheduler', '?')).upper()} {s.get('sampler_steps', '?')} steps",
             f"guidance {s.get('guidance_scale', '?')}", f"{s.get('num_images', '?')} images per prompt",
             f"eval seeds {s.get('seed', '?')}+k", f"CLIP {clip.get('arch', '?')} ({clip.get('weights', '?')})",
             f"CLIP-T text {s.get('clip_t_text', 'drop_article (before the option existed)')}"]
    if fid.get("enabled"):
        parts.append(f"Inception feature {fid.get('feature', '?')} ({fid.get('weights') or 'torch hub cache'})")
    return ", ".join(parts)


def table1_markdown(rows: Sequence[dict], runs: Sequence[RunResult], warnings: Sequence[str] = ()) -> str:
    names = list(TABLE_METRICS)
    mos = any("mos" in row for row in rows)  # a rating study covers some rows (textinv.ratings.report.table_mos)
    body = [[row["label"], *(fmt_stat(row["stats"][n]) for n in names), *([row.get("mos") or "n/a"] if mos else []),
             row["num_runs"], row["concepts"], row["seeds"], row["images"]] for row in rows]
    text = ["# Table 1: reconstruction vs editability", "",
            markdown_table(["Model", *(METRIC_LABELS[n] for n in names), *(["MOS"] if mos else []), "Runs", "Concepts",
                            "Seeds", "Images"], body),
            "",
            "Mean ± sample standard deviation (n - 1) **over runs** (one run = one concept x seed; each run's final "
            "evaluation); no ± where a row has one run, n/a where no run has the metric. "
            "Reconstruction: CLIP-I, mean cosine over all (training image, generated image) pairs for the "
            "reconstruction prompt. Editability: CLIP-T, text without the placeholder vs its images, averaged "
            "over the editability prompts. Higher is better for both. FID/KID: reconstruction images vs the "
            "training images; IS: all images. SD = vanilla model with the initializer word; SD + TI = the "
            "learned token"
            + ("; SD + HN = a hypernetwork, active on every prompt, so its prompts keep the initializer word"
               if any(row["label"] == "SD + HN" for row in rows) else "")
            + ". Images = generated images scored, summed over runs. The SD row trains nothing: its runs of one "
            "concept score the same images whatever their seed.", "",
            *(["MOS: human overall-quality rating (1 Bad .. 5 Excellent) from a blind rating study of the row's runs: "
               "mean of per-rater means [95% t interval over raters] (n = raters kept after screening); "
               "`python -m textinv rate report STUDY` has the rest.", ""] if mos else []),
            f"Settings: {describe_settings(runs)}.", "",
            "Only full-protocol final evaluations are tabulated (each run's last evaluation under the original "
            "protocol above); the light-protocol evaluations made during training are never mixed in."]
    if any(r.final.get("fid_biased") for r in runs):
        text += ["", "FID/KID are biased here: fewer samples than Inception feature dimensions (few-shot sets)."]
    if any((r.settings.get("clip") or {}).get("weights") == "random" for r in runs):
        text += ["", "**CLIP with random weights (demo/tests): these numbers mean nothing.**"]
    if any((r.settings.get("clip") or {}).get("arch") == "toyworld" for r in runs):
        text += ["", "**Toy-world numbers**: the miniature world's own CLIP (textinv.toyworld) scores them; compare "
                 "them with each other, not with real Stable Diffusion's or the study's."]
    for w in warnings:
        text += ["", f"Warning: {w}."]
    text += ["", "Reported in the study: " + "; ".join(
        f"{label} {v['reconstruction']:.4f} / {v['editability']:.4f}" for label, v in STUDY_TABLE.items())
        + " (reconstruction / editability).", "", "## Runs", ""]
    per_run = run_csv_rows(runs)
    text.append(markdown_table(
        ["Model", "Concept", "Seed", "Step", *(METRIC_LABELS[n] for n in names), "Run"],
        [[r["model"], r["concept"], r["seed"], r["step"], *(fmt(r[n]) for n in names),
          f"`{r['run_dir']}`" + ("" if r["finished"] else " (unfinished)")] for r in per_run]))
    return "\n".join(text) + "\n"


def tradeoff_plot(path: str | Path, runs: Sequence[RunResult], rows: Sequence[dict],
                  reference: dict = STUDY_TABLE) -> Path:
    """Reconstruction (y) vs editability (x): one point per run, coloured by row; row means with
    their spread as error bars; the study's reported numbers as star markers."""
    plt = pyplot()
    colours = {BASELINE_ROW: "tab:blue", TI_ROW: "tab:orange", HN_ROW: "tab:green"}
    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=120)
    try:
        for row in rows:
            colour = colours.get(row["label"], None)
            pts = [(r.value("editability"), r.value("reconstruction")) for r in row["runs"]]
            pts = [p for p in pts if None not in p]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=colour, alpha=0.6, s=28,
                           label=f"{row['label']} runs (n={len(pts)})")
            e, c = row["stats"]["editability"], row["stats"]["reconstruction"]
            if e.mean is not None and c.mean is not None:
                ax.errorbar([e.mean], [c.mean], xerr=[e.std or 0], yerr=[c.std or 0], fmt="o", ms=9, color=colour,
                            markeredgecolor="black", capsize=4, label=f"{row['label']} mean ± std over runs")
        if len(runs) <= 20:
            for r in runs:
                x, y = r.value("editability"), r.value("reconstruction")
                if x is not None and y is not None:
                    ax.annotate(f"{r.concept}/s{r.seed}", (x, y), fontsize=6, alpha=0.7, xytext=(3, 3),
                                textcoords="offset points")
        for label, v in reference.items():
            ax.scatter([v["editability"]], [v["reconstruction"]], marker="*", s=220, color=colours.get(label),
                       edgecolor="black", linewidth=0.8, zorder=5, label=f"{label} (study)")
        ax.set_xlabel("Editability (CLIP-T, higher is better)")
        ax.set_ylabel("Reconstruction (CLIP-I, higher is better)")
        ax.set_title("Reconstruction vs editability")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    except BaseException:
        plt.close(fig)
        raise
    return save_figure(fig, path)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on clusters)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """A figure written atomically as PNG, then closed."""
    from textinv.utils.atomic import atomic_write

    try:
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        pyplot().close(fig)


def log_wandb(out_dir: Path, tables: dict[str, Sequence[dict]], images: dict[str, Path | None],
              name: str, project: str = "textinv") -> Path | None:
    """An offline (unless WANDB_MODE says otherwise) W&B run in `out_dir`: each table as a W&B Table (its
    numbers also in the summary, keyed by the first column), each image as a W&B Image. Called after the
    files are written: a missing wandb or a W&B failure is a warning, never a lost table."""
    try:
        return _log_wandb(out_dir, tables, images, name, project)
    except ImportError:
        log.info("wandb is not installed: no W&B run")
    except Exception as err:
        log.warning("W&B logging failed (%s); the files are written", err)
    return None


def _log_wandb(out_dir, tables, images, name, project) -> Path | None:
    import os

    import wandb

    mode = os.environ.get("WANDB_MODE", "offline")
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", project), dir=str(out_dir), mode=mode,
                     job_type="table", name=name, settings=wandb.Settings(silent=True))
    try:
        payload = {}
        for key, rows in tables.items():
            cols = list(rows[0]) if rows else []
            payload[key] = wandb.Table(columns=cols, data=[[row[c] for c in cols] for row in rows],
                                       allow_mixed_types=True)  # a group column: values, then "all"
            for row in rows:
                for k, v in list(row.items())[1:]:
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        run.summary[f"{key}/{row[cols[0]]}/{k}"] = v
        payload.update({key: wandb.Image(str(path)) for key, path in images.items() if path is not None})
        run.log(payload)
        return Path(run.dir).parent if run.dir else None
    finally:
        run.finish()
