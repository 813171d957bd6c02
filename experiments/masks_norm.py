"""Issue 20's measurements in the miniature world: what "a photo of S*" shows, per run or per option over seeds.

    python experiments/masks_norm.py RUN_OR_SWEEP_DIR [...] [--images N] [--md FILE]

For each run (a baseline row or a trained one, drawn concept): reconstruction and editability (final full
protocol), the reconstruction prompt's images read by the toy classifier (shape, colour, rendering, and the
background: the share on each background, the concept's training ones first and together "train bg"), and the learned
vector's final norm with the vocabulary's median (run.json). Trained runs are grouped by their options
(data.masked with data.mask.floor and unmasked_probability, method.norm_rescale, method.init_pull): mean and sample std over their seeds. `--images N`
reads only the first N images of each prompt (same seeds as a run evaluated with fewer).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from PIL import Image


def classify_run(run: Path, classifier, images: int | None) -> dict:
    from textinv.runs.layout import PROMPTS_FILE, config_file, eval_images_dir, prompt_images
    from textinv.toyworld.attributes import classify
    import yaml

    config = yaml.safe_load(config_file(run).read_text())
    draw = config["concept"].get("draw") or {}
    backgrounds = draw.get("background") or []
    backgrounds = [backgrounds] if isinstance(backgrounds, str) else list(backgrounds)
    folders = [p for p in eval_images_dir(run).glob("*") if (p / PROMPTS_FILE).is_file() and "light" not in p.name]
    folder = sorted(folders, key=lambda p: p.name)[-1]  # baseline, or the last full evaluation
    files = prompt_images(folder, 0)[: images or None]  # prompt 0: the reconstruction prompt
    pred = classify(classifier, [Image.open(f).convert("RGB") for f in files])
    n = len(files)
    out = {"images": n}
    for key in ("shape", "color", "style"):
        if isinstance(draw.get(key), str):
            out[f"{key}={draw[key]}"] = sum(p == draw[key] for p in pred[key]) / n
    from textinv.toyworld.models import HEADS

    for bg in backgrounds + [b for b in HEADS["background"] if b not in backgrounds]:  # training ones first
        out[f"bg={bg}"] = sum(p == bg for p in pred["background"]) / n
    out["train bg"] = sum(p in backgrounds for p in pred["background"]) / n
    return out


def mask_label(mask: dict) -> str:
    """The mask options that set a group apart (a key a run's config lacks takes today's default)."""
    from textinv.data.datamodule import Masking

    label = f"floor {mask.get('floor', Masking.floor)}"
    if mask.get("unmasked_probability", Masking.unmasked_probability):
        label += f", unmasked {mask.get('unmasked_probability', Masking.unmasked_probability)}"
    return label


def row_of(run) -> dict:
    cfg = run.config
    data, method = cfg.get("data") or {}, cfg.get("method") or {}
    summary = {}
    path = run.run_dir / "run.json"
    if path.is_file():
        summary = json.loads(path.read_text())
    norms = summary.get("norms") or [[None]]
    return {"run": str(run.run_dir), "row": run.row, "seed": run.seed,
            "masked": (mask_label(data.get("mask") or {}) if data.get("masked", False) and not run.baseline else False),
            "norm_rescale": bool(method.get("norm_rescale", False)) and not run.baseline,
            "init_pull": float(method.get("init_pull", 0.0) or 0.0) if not run.baseline else 0.0,
            "reconstruction": run.value("reconstruction"), "editability": run.value("editability"),
            "norm": norms[0][0], "vocab_median": (summary.get("vocab_median_norm") or [None])[0]}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--md", default=None)
    args = p.parse_args(argv)
    from textinv.runs.results import load_runs
    from textinv.toyworld import TOYWORLD_CLASSIFIER
    from textinv.toyworld.models import load_classifier

    classifier = load_classifier(TOYWORLD_CLASSIFIER)
    rows = []
    for run in load_runs(args.runs):
        rows.append({**row_of(run), **classify_run(run.run_dir, classifier, args.images)})
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["row"], r["masked"], r["norm_rescale"], r["init_pull"]), []).append(r)
    metrics = [k for k in rows[0] if k not in ("run", "row", "seed", "masked", "norm_rescale", "init_pull")] if rows else []
    lines = ["| row | masked | norm_rescale | init_pull | seeds | " + " | ".join(metrics) + " |",
             "|---" * (5 + len(metrics)) + "|"]
    for (row, masked, rescale, pull), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "SD", str(kv[0][1:]))):
        cells = []
        for m in metrics:
            vals = [r[m] for r in rs if isinstance(r.get(m), (int, float))]
            if not vals:
                cells.append("-")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.3f}")
            else:
                cells.append(f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}")
        seeds = ",".join(str(r["seed"]) for r in rs)
        lines.append(f"| {row} | {masked} | {rescale} | {pull} | {seeds} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    for r in rows:
        print(json.dumps(r))
    if args.md:
        Path(args.md).write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
