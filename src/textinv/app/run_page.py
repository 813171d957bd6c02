"""One run: its settings, status and cost, training images, evaluation images per prompt and step beside the
SD row's, loss / validation-loss / metric / embedding-norm curves, its files with each tool's prompt syntax,
and the file route every image and download of the page goes through (confined to the runs folder)."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from textinv.app.plots import curves_png
from textinv.app.runs_index import RunEntry, find_entry, read_json_tolerant, scan
from textinv.app.safety import Refused, confined_path, relative_id
from textinv.errors import UserError
from textinv.runs.layout import diffusers_file
from textinv.runs.report import fmt
from textinv.runs.results import FULL, LIGHT, METRIC_LABELS, TABLE_METRICS, RunResult

router = APIRouter()
MAX_TRAINING_IMAGES = 12
PROJECT_ROOT = Path(__file__).resolve().parents[3]  # src/textinv/app/ -> the checkout
THUMB = 160
# README "Using the embedding in other tools": where the root file goes and how a prompt names it.
TOOLS = (("AUTOMATIC1111 web UI", "stable-diffusion-webui/embeddings/", "{name}"),
         ("ComfyUI", "ComfyUI/models/embeddings/", "embedding:{name}"),
         ("kohya sd-scripts (gen_img.py)", "--textual_inversion_embeddings {file}", "{name}"),
         ("InvokeAI", "Model Manager: install the file", "<{name}>"),
         ("diffusers", 'pipe.load_textual_inversion("{file}")', "{token}"))


def entry_or_404(request: Request, run_id: str) -> RunEntry:
    entry = find_entry(request.app.state.root, run_id)
    if entry is None:
        raise Refused(f"no run {run_id!r} in the runs folder", 404)
    return entry


@router.get("/files/{relative:path}")
def files(request: Request, relative: str, download: bool = False):
    path = confined_path(request.app.state.root, relative)
    if not path.is_file():
        raise Refused("no such file in the runs folder", 404)
    return FileResponse(path, filename=path.name if download else None,
                        content_disposition_type="attachment" if download else "inline")


def training_thumbnails(result: RunResult) -> list[str]:
    """The concept's training images (config concept.data_dir, usually outside the runs folder) as inline
    thumbnails: shown, never served by path."""
    from PIL import Image

    from textinv.data.images import list_image_files

    data_dir = result.get("concept.data_dir")
    if not data_dir:
        return []
    folder = Path(str(data_dir)).expanduser()
    if not folder.is_absolute():  # relative to where training ran: here, else the project root (the README's)
        folder = next((f for f in (Path.cwd() / folder, PROJECT_ROOT / folder) if f.is_dir()), folder)
    try:
        paths = list_image_files(folder)[:MAX_TRAINING_IMAGES]
    except (UserError, OSError):
        return []
    out = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                img.thumbnail((THUMB, THUMB))
                buf = io.BytesIO()
                img.save(buf, format="PNG")
        except (OSError, ValueError):
            continue
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


def baseline_for(request: Request, entry: RunEntry) -> RunEntry | None:
    """The SD row's run of the same concept and model (the nearest folder first)."""
    if entry.result is None or entry.result.baseline:
        return None
    candidates = [e for e in scan(request.app.state.root) if e.result is not None and e.result.baseline
                  and e.result.concept == entry.result.concept and e.result.model_id == entry.result.model_id]
    candidates.sort(key=lambda e: (e.path.parent != entry.path.parent, e.id))
    return candidates[0] if candidates else None


def image_grid(root: Path, result: RunResult, protocol: str, step: int | None) -> dict:
    """Prompts x steps (first image of each), and every image of each prompt at `step`."""
    steps = result.image_steps(protocol) if not result.baseline else []
    folders = {s: result.images_dir(s, protocol) for s in steps}
    if result.baseline:
        folders = {None: result.images_dir(None, protocol)}
    folders = {s: f for s, f in folders.items() if f.is_dir()}
    if not folders:
        return {}
    chosen = step if step in folders else list(folders)[-1]
    try:
        templates = result.templates(folders[chosen])
    except UserError:
        return {}
    evaluation = result.evaluation_at(chosen if chosen is not None else result.final.get("step", 0), protocol)
    rows = []
    for p, template in enumerate(templates):
        try:
            prompt = result.prompt_text(p, template, evaluation) if evaluation else template.replace("{}", result.word)
        except UserError:
            prompt = template.replace("{}", result.word)
        first = {s: next(iter(RunResult.image_files(f, p)), None) for s, f in folders.items()}
        rows.append({"p": p, "template": template, "prompt": prompt,
                     "by_step": {s: relative_id(root, f) if f else None for s, f in first.items()},
                     "all": [relative_id(root, f) for f in RunResult.image_files(folders[chosen], p)]})
    return {"steps": list(folders), "chosen": chosen, "rows": rows, "protocol": protocol}


def baseline_images(root: Path, baseline: RunEntry | None, protocol: str) -> dict[int, str]:
    """Prompt number -> the SD row's first image for it."""
    if baseline is None or baseline.result is None:
        return {}
    folder = baseline.result.images_dir(None, protocol)
    if not folder.is_dir():
        return {}
    out = {}
    for f in sorted(folder.glob("p*-*.png")):
        p = f.name[1:3]
        if p.isdigit() and int(p) not in out and f in RunResult.image_files(folder, int(p)):
            out[int(p)] = relative_id(root, f)
    return out


def embedding_files(root: Path, entry: RunEntry) -> dict:
    """The root file (every tool), the other layouts, and the token to write in prompts."""
    listed = entry.info.get("files") if isinstance(entry.info.get("files"), list) else []
    token = str(entry.info.get("placeholder") or (entry.result.header.get("placeholder") if entry.result else ""))
    main = entry.path / listed[0] if listed else None
    name = main.stem if main else token.strip("<>")
    tools = [{"tool": t, "where": w.format(file=main.name if main else "", name=name),
              "prompt": s.format(name=name, token=token)} for t, w, s in TOOLS]
    others = [relative_id(root, entry.path / f) for f in listed[1:] if (entry.path / f).is_file()]
    return {"main": relative_id(root, main) if main and main.is_file() else None, "others": others,
            "token": token, "tools": tools}


def listed_files(root: Path, run_dir: Path, limit: int = 200) -> list[dict]:
    """The run's files for download (W&B's folder and checkpoints summarised by their first entries)."""
    out = []
    for path in sorted(run_dir.rglob("*")):
        if len(out) >= limit:
            break
        if path.is_file() and not path.is_symlink() and not any(part.startswith(".") for part in
                                                                 path.relative_to(run_dir).parts):
            if "images" in path.relative_to(run_dir).parts or "wandb" in path.relative_to(run_dir).parts:
                continue  # shown above, or W&B's own files
            out.append({"id": relative_id(root, path), "name": path.relative_to(run_dir).as_posix(),
                        "kb": round(path.stat().st_size / 1024, 1)})
    return out


@router.get("/run")
def run(request: Request, id: str, protocol: str = FULL, step: int | None = None):
    from textinv.app.rendering import render

    if protocol not in (FULL, LIGHT):
        raise Refused(f"protocol={protocol!r}; use {FULL} or {LIGHT}")
    root = request.app.state.root
    entry = entry_or_404(request, id)
    baseline = baseline_for(request, entry)
    result = entry.result
    context = {"entry": entry, "baseline": baseline, "metrics": list(TABLE_METRICS), "labels": METRIC_LABELS,
               "fmt": fmt, "protocol": protocol, "grid": {}, "training": [], "baseline_images": {},
               "embedding": embedding_files(root, entry), "files": listed_files(root, entry.path),
               "header": {}, "can_generate": False}
    if result is not None:
        keys = ("concept", "placeholder", "initializer", "model", "family", "seed", "lr", "steps", "num_vectors")
        context.update(header={k: result.get(k) for k in keys}, training=training_thumbnails(result),
                       grid=image_grid(root, result, protocol, step),
                       baseline_images=baseline_images(root, baseline, protocol),
                       evaluations=[{"step": e.get("step"), "protocol": e.get("protocol") or FULL,
                                     **{m: result.value(k, e) for m, k in TABLE_METRICS.items()}}
                                    for e in result.evaluations],
                       can_generate=not result.baseline and diffusers_file(entry.path).is_file())
    return render(request, "run.html", context)


def _logged(run_dir: Path, wanted) -> dict[str, list]:
    """Columns of the run's metrics.csv whose name `wanted(name)` accepts: name -> [(step, value)]."""
    lines: dict[str, list] = {}
    path = next(iter(sorted(run_dir.glob("**/metrics.csv"))), None)
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))) if path else []
    except (OSError, UnicodeDecodeError, csv.Error):
        rows = []
    for row in rows:
        for key, value in row.items():
            if key and wanted(key) and value not in (None, "") and (row.get("step") or "").isdigit():
                try:
                    lines.setdefault(key, []).append((int(row["step"]), float(value)))
                except ValueError:
                    pass
    return lines


def loss_points(run_dir: Path) -> dict[str, list]:
    """Training loss per logged step (metrics.csv; any column named like loss) and the validation loss."""
    lines = _logged(run_dir, lambda key: "loss" in key)
    curve = read_json_tolerant(run_dir / "validation_loss.json")
    points = curve.get("points") if isinstance(curve, dict) else None
    if isinstance(points, list):
        lines["validation loss"] = [(p.get("step"), p.get("loss")) for p in points
                                    if isinstance(p, dict) and isinstance(p.get("step"), int)
                                    and isinstance(p.get("loss"), (int, float))]
    return lines


def norm_points(run_dir: Path) -> dict[str, list]:
    """The learned vectors' L2 norm per logged step with the vocabulary's median norm (metrics.csv `norm/...`,
    textual inversion's strength), or, for runs from before that was logged, at each snapshot and at the end."""
    logged = _logged(run_dir, lambda key: key.startswith("norm/"))
    if logged:
        return {key[len("norm/"):].replace("_", " "): pts for key, pts in logged.items()}
    from safetensors.torch import load_file

    points = []
    pattern = diffusers_file(run_dir / "snapshots", "-step*")  # the layout's snapshot name, as a pattern
    snapshots = sorted(pattern.parent.glob(pattern.name))
    final = diffusers_file(run_dir)
    for path in [*snapshots, final]:
        digits = path.stem.rsplit("-step", 1)[-1] if "-step" in path.stem else None
        try:
            tensors = load_file(str(path))
        except Exception:  # missing, or being written
            continue
        for vectors in list(tensors.values())[:1]:
            step = int(digits) if digits and digits.isdigit() else None
            points.append((step, vectors.float().norm(dim=-1).tolist()))
    if points and points[-1][0] is None:  # the final file: after the last snapshot
        last = max((s for s, _ in points if s is not None), default=0)
        points[-1] = (last if len(points) > 1 else 0, points[-1][1])
    lines: dict[str, list] = {}
    for step, norms in points:
        for i, n in enumerate(norms):
            lines.setdefault(f"vector {i}", []).append((step, n))
    return lines


@router.get("/run/curves.png")
def curves(request: Request, id: str):
    entry = entry_or_404(request, id)
    result = entry.result
    metric_lines: dict[str, list] = {}
    if result is not None:
        for protocol in (FULL, LIGHT):
            for metric in ("reconstruction", "editability"):
                pts = [(e["step"], result.value(metric, e)) for e in result.curve(protocol)]
                if any(v is not None for _, v in pts):
                    metric_lines[f"{metric} ({protocol})"] = pts
    panels = [("loss", loss_points(entry.path)), ("reconstruction / editability", metric_lines)]
    if result is None or not result.baseline:
        panels.append(("embedding norm (L2)", norm_points(entry.path)))
    return Response(curves_png(panels), media_type="image/png")
