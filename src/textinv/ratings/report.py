"""A study's report (python -m textinv rate report STUDY): per ACR question and condition the MOS with two 95%
intervals (t over per-rater means; bootstrap over raters and items), the per-rater z-normalised MOS, the raters
screened out and why, Krippendorff's alpha (ordinal) with a bootstrap interval; per A/B question and pair of
conditions the answers, ties apart, and the win rate with its Wilson interval. Files: STUDY/report/report.md,
report.json, mos.png. Also the MOS column of Table 1 (`table_mos`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from textinv.ratings import stats
from textinv.ratings.store import AB_NAMES, Store
from textinv.ratings.study import QUESTIONS, Study

LEVEL = 0.95


def answer_rows(study: Study, answers: list[dict]) -> list[dict]:
    """The store's answers joined with what the study knows of each item (role, condition(s), expected value)."""
    out = []
    for a in answers:
        item = study.items[a["item"]]
        row = {**a, "role": item["role"], "kind": QUESTIONS[a["question"]]["kind"], "expect": item.get("expect")}
        if item["kind"] == "pair":
            row["conditions"] = item["conditions"]
            row["choice"] = AB_NAMES[a["value"]]
        else:
            row["condition"] = item["condition"]
        out.append(row)
    return out


def condition_order(study: Study) -> list[str]:
    return [c for c in study.data["conditions"]]


def analyse(study: Study, answers: list[dict] | None = None, n_boot: int = 2000, seed: int = 0,
            screen: bool = True) -> dict:
    rows = answer_rows(study, Store(study.db_path).answers() if answers is None else answers)
    acr_rows = [r for r in rows if r["kind"] == "acr"]
    screening = stats.screen_raters(acr_rows) if screen else {}
    excluded = sorted(r for r, s in screening.items() if s["excluded"])
    kept = [r for r in rows if r["rater"] not in excluded]
    report = {"study": str(study.folder), "study_id": study.id, "level": LEVEL, "n_boot": n_boot, "seed": seed,
              "answers": len(rows), "raters": sorted({r["rater"] for r in rows}), "screening": screening,
              "excluded": excluded, "acr": {}, "ab": {}}
    for question, q in QUESTIONS.items():
        if q["kind"] == "acr":
            qrows = [r for r in kept if r["question"] == question and r["role"] in ("test", "reference")]
            if not qrows:
                continue
            raters = np.array([r["rater"] for r in qrows])
            values = np.array([r["value"] for r in qrows], dtype=float)
            z = stats.znorm(raters, values)
            conds = {}
            for cond in condition_order(study):
                sel = np.array([r["condition"] == cond for r in qrows])
                if not sel.any():
                    continue
                items = np.array([r["item"] for r in qrows])[sel]
                t = stats.mos_t(raters[sel], values[sel], LEVEL)
                boot = stats.mos_bootstrap(raters[sel], items, values[sel], LEVEL, n_boot, seed)
                zt = stats.mos_t(raters[sel], z[sel], LEVEL)
                conds[cond] = {"raters": int(len(set(raters[sel]))), "ratings": int(sel.sum()),
                               "items": int(len(set(items))), "mos": t.estimate, "t_low": t.low, "t_high": t.high,
                               "mean": boot.estimate, "boot_low": boot.low, "boot_high": boot.high,
                               "z": zt.estimate, "z_low": zt.low, "z_high": zt.high}
            units = [r["item"] for r in qrows]
            alpha = stats.alpha_bootstrap(units, values, "ordinal", domain=[1, 2, 3, 4, 5], level_ci=LEVEL,
                                          n_boot=min(n_boot, 1000), seed=seed)
            report["acr"][question] = {"conditions": conds, "alpha": alpha.as_dict()}
        else:
            qrows = [r for r in kept if r["question"] == question]
            pairs: dict[tuple, list[str]] = {}
            for r in qrows:
                pairs.setdefault(tuple(r["conditions"]), []).append(r["choice"])
            report["ab"][question] = [{"a": a, "b": b, **stats.ab_summary(ch, LEVEL),
                                       "raters": len({r["rater"] for r in qrows if tuple(r["conditions"]) == (a, b)})}
                                      for (a, b), ch in sorted(pairs.items())]
    return report


def _f(x, d=2):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}f}"


def markdown(report: dict) -> str:
    from textinv.runs.report import markdown_table

    out = [f"# Rating study report", "", f"Study `{report['study']}` ({report['study_id']}): {report['answers']} answers "
           f"from {len(report['raters'])} rater(s).", ""]
    out += ["## Rater screening", "",
            "P.808 toolkit rules: every trap answered exactly, every gold item within 1 of its expected answer, variance "
            f"of the rater's ratings at least {stats.MIN_VARIANCE}, Pearson correlation of the rater's per-condition "
            f"means with the other raters' at least {stats.MIN_CORRELATION} (over question x condition cells where the rater "
            f"gave {stats.MIN_PER_CONDITION} or more ratings; applied with 3 or more such cells).", ""]
    body = [[r, "excluded" if s["excluded"] else "kept", s["answers"], _f(s["correlation"]),
             "; ".join(s["reasons"]) or s["note"] or ""] for r, s in report["screening"].items()]
    out += [markdown_table(["Rater", "Decision", "Answers", "Correlation", "Why"], body), ""]
    out += [f"Excluded: {', '.join(report['excluded']) or 'none'}. Everything below uses the kept raters only.", ""]
    for question, res in report["acr"].items():
        out += [f"## ACR: {question}", "", f"> {QUESTIONS[question]['text']}", ""]
        body = [[c, v["raters"], v["items"], v["ratings"], _f(v["mos"]), f"[{_f(v['t_low'])}, {_f(v['t_high'])}]",
                 _f(v["mean"]), f"[{_f(v['boot_low'])}, {_f(v['boot_high'])}]", _f(v["z"]),
                 f"[{_f(v['z_low'])}, {_f(v['z_high'])}]"] for c, v in res["conditions"].items()]
        out += [markdown_table(["Condition", "Raters", "Items", "Ratings", "MOS", "95% CI (t)", "Mean",
                                "95% CI (bootstrap)", "z-MOS", "95% CI (z, t)"], body), ""]
        a = res["alpha"]
        out += [f"Krippendorff's alpha (ordinal): {_f(a['estimate'], 3)} [{_f(a['low'], 3)}, {_f(a['high'], 3)}] "
                "(bootstrap over items).", ""]
    for question, res in report["ab"].items():
        out += [f"## A/B: {question}", "", f"> {QUESTIONS[question]['text']}", ""]
        body = [[f"{p['a']} vs {p['b']}", p["raters"], p["n"], p["a_wins"], p["b_wins"], p["ties"],
                 _f(p["a_rate"], 3), f"[{_f(p['a_low'], 3)}, {_f(p['a_high'], 3)}]", _f(p["tie_share"], 3)]
                for p in res]
        out += [markdown_table(["A vs B", "Raters", "Answers", "A wins", "B wins", "Ties",
                                "A's win rate (decided)", "95% CI (Wilson)", "Tie share"], body), ""]
    out += ["## Methods", "",
            "- **MOS**: mean of the per-rater means (each rater's mean over the items they rated in the condition); "
            "95% interval from the t distribution over raters (n - 1 degrees of freedom): items taken as fixed.",
            "- **Mean / bootstrap**: the plain mean of all ratings; 95% percentile interval from "
            f"{report['n_boot']} resamples of raters and of items, both with replacement (raters and items random).",
            "- **z-MOS**: each rating z-normalised within its rater (over all the rater's ratings of that question), "
            "then as MOS.",
            "- **Alpha**: Krippendorff's alpha with the ordinal metric over items (units) rated by two or more kept "
            "raters; 95% percentile interval from resampling items.",
            "- **A/B**: A's win rate among decided answers (ties = \"cannot determine / both equally\", reported "
            "apart), Wilson score interval; answers from one rater are not independent, so with few raters the "
            "interval is too narrow.", ""]
    return "\n".join(out)


def plot(report: dict, path: Path) -> Path:
    from textinv.runs.report import pyplot

    plt = pyplot()
    qs = list(report["acr"])
    fig, axes = plt.subplots(1, max(1, len(qs)), figsize=(4.2 * max(1, len(qs)), 3.6), dpi=110, squeeze=False)
    try:
        for ax, q in zip(axes[0], qs):
            conds = report["acr"][q]["conditions"]
            names = list(conds)
            x = np.arange(len(names))
            mos = np.array([conds[c]["mos"] for c in names])
            err = np.array([[conds[c]["mos"] - conds[c]["t_low"], conds[c]["t_high"] - conds[c]["mos"]] for c in names]).T
            ax.errorbar(x - 0.1, mos, yerr=np.nan_to_num(err), fmt="o", capsize=4, label="MOS, t over raters")
            mean = np.array([conds[c]["mean"] for c in names])
            berr = np.array([[conds[c]["mean"] - conds[c]["boot_low"], conds[c]["boot_high"] - conds[c]["mean"]]
                             for c in names]).T
            ax.errorbar(x + 0.1, mean, yerr=np.nan_to_num(berr), fmt="s", capsize=4, label="mean, bootstrap")
            ax.set_xticks(x, [f"{c}\n(n={conds[c]['raters']})" for c in names], fontsize=8)
            ax.set_ylim(1, 5)
            ax.set_title(q)
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].set_ylabel("rating (1 Bad .. 5 Excellent)")
        axes[0][0].legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _finite(x):
    """JSON without NaN (not JSON): undefined numbers (an interval from one rater) become null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_report(study: Study, n_boot: int = 2000, seed: int = 0) -> dict:
    from textinv.utils.atomic import atomic_write_text

    report = analyse(study, n_boot=n_boot, seed=seed)
    out = study.folder / "report"
    out.mkdir(exist_ok=True)
    text = markdown(report)
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.json", json.dumps(_finite(report), indent=1))
    files = {"report.md": out / "report.md", "report.json": out / "report.json"}
    if report["acr"]:
        files["mos.png"] = plot(report, out / "mos.png")
    return {"report": report, "markdown": text, "files": files}


def table_mos(study_dirs, rows: list[dict], question: str = "quality", n_boot: int = 0) -> dict[str, str]:
    """Table 1's MOS column: row label -> 'MOS [t interval] (n raters)' where a study's condition holds exactly
    the row's runs (screened raters only); rows no study covers get nothing."""
    out = {}
    for folder in study_dirs:
        study = Study.load(folder)
        covers = {c: {str(Path(p).resolve()) for p in runs} for c, runs in study.covers().items() if runs}
        report = None
        for row in rows:
            mine = {str(Path(r.run_dir).resolve()) for r in row["runs"]}
            cond = next((c for c, runs in covers.items() if runs == mine), None)
            if cond is None or row["label"] in out:
                continue
            report = report or analyse(study, n_boot=max(n_boot, 10))
            v = report["acr"].get(question, {}).get("conditions", {}).get(cond)
            if v:
                out[row["label"]] = f"{v['mos']:.2f} [{_f(v['t_low'])}, {_f(v['t_high'])}] (n={v['raters']})"
    return out
