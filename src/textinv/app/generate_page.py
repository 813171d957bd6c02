"""The generate form (learned words of finished runs, a prompt, seed, steps, guidance), its job page with
progress and cancel, and the history of earlier generations (each in its own folder with settings.json)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse

from textinv.app.generation import TOY_MODEL, Request as GenerationRequest, model_arguments
from textinv.app.jobs import past_generations
from textinv.app.runs_index import FINISHED, scan
from textinv.app.safety import Refused, check_csrf, form_float, form_int, relative_id
from textinv.models.generation import SCHEDULERS
from textinv.runs.layout import diffusers_file

router = APIRouter()
LIMITS = {"seed": (0, 2**31 - 1), "steps": (1, 200), "num_images": (1, 8)}
GUIDANCE = (0.0, 30.0)
MAX_PROMPT = 1000


def learned_words(root) -> list[dict]:
    """Finished runs with a learned embedding: what the form offers, with the model each was trained on."""
    words = []
    for e in scan(root):
        if e.status == FINISHED and e.result is not None and not e.result.baseline and diffusers_file(e.path).is_file():
            words.append({"id": e.id, "token": str(e.info.get("placeholder") or e.result.get("placeholder")),
                          "concept": e.result.concept, "model": model_arguments(e.result.config.get("model")),
                          "model_label": e.result.model_id})
    return words


def model_choices(words: list[dict]) -> dict[str, dict]:
    """Model key -> its ModelSource arguments and label: each model a run used, and the toy world."""
    out = {json.dumps(TOY_MODEL, sort_keys=True): {"args": TOY_MODEL, "label": "toy (the miniature world)"}}
    for w in words:
        out.setdefault(json.dumps(w["model"], sort_keys=True), {"args": w["model"], "label": w["model_label"]})
    return out


def form_page(request: Request, values: dict, message: str = "", status: int = 200):
    from textinv.app.rendering import render

    root = request.app.state.root
    words = learned_words(root)
    return render(request, "generate.html", {
        "words": words, "models": model_choices(words), "values": values, "message": message,
        "schedulers": SCHEDULERS, "limits": LIMITS, "guidance": GUIDANCE,
        "jobs": sorted(request.app.state.jobs.jobs.values(), key=lambda j: -j.seq)[:10],
        "history": past_generations(root)}, status)


DEFAULTS = {"prompt": "", "negative_prompt": "", "seed": 0, "steps": 20, "guidance_scale": 5.0, "num_images": 1,
            "scheduler": "ddim", "model": "", "words": []}


@router.get("/generate")
def generate_form(request: Request, run: str = ""):
    words = learned_words(request.app.state.root)
    chosen = [w for w in words if w["id"] == run]
    values = {**DEFAULTS, "words": [run] if chosen else []}
    if chosen:
        values["prompt"] = f"a photo of {chosen[0]['token']}"
        values["model"] = json.dumps(chosen[0]["model"], sort_keys=True)
    return form_page(request, values)


def parse_request(root, form) -> GenerationRequest:
    """The form -> a generation request; any bad value is a Refused with a one-line message."""
    words = {w["id"]: w for w in learned_words(root)}
    models = model_choices(list(words.values()))
    chosen = [str(v) for v in form.getlist("words")]
    unknown = [c for c in chosen if c not in words]
    if unknown:
        raise Refused(f"no finished run with a learned word {unknown[0]!r} under the runs folder")
    model_key = str(form.get("model") or "")
    if not model_key and chosen:
        model_key = json.dumps(words[chosen[0]]["model"], sort_keys=True)
    if model_key not in models:
        raise Refused("choose a model from the list")
    wrong = [c for c in chosen if json.dumps(words[c]["model"], sort_keys=True) != model_key]
    if wrong:
        raise Refused(f"{words[wrong[0]]['token']} ({wrong[0]}) was learned on {words[wrong[0]]['model_label']}, "
                      f"not on {models[model_key]['label']}: pick words of one model")
    prompt = str(form.get("prompt") or "").strip()
    if not prompt:
        raise Refused("write a prompt, e.g. 'a photo of <toy-heart>'")
    if len(prompt) > MAX_PROMPT:
        raise Refused(f"the prompt is {len(prompt)} characters long; at most {MAX_PROMPT}")
    scheduler = str(form.get("scheduler") or "ddim")
    if scheduler not in SCHEDULERS:
        raise Refused(f"scheduler={scheduler!r} is unknown; use one of {', '.join(SCHEDULERS)}")
    numbers = {k: form_int(form, k, DEFAULTS[k], *LIMITS[k]) for k in LIMITS}
    return GenerationRequest(
        model=models[model_key]["args"], embeddings=[str(diffusers_file(root / c).resolve()) for c in chosen],
        prompt=prompt, negative_prompt=str(form.get("negative_prompt") or "")[:MAX_PROMPT], scheduler=scheduler,
        guidance_scale=form_float(form, "guidance_scale", DEFAULTS["guidance_scale"], *GUIDANCE), **numbers)


@router.post("/generate", dependencies=[Depends(check_csrf)])
async def generate_submit(request: Request):
    form = await request.form()
    try:
        gen = parse_request(request.app.state.root, form)
    except Refused as err:  # the form again, with the user's values and the message
        values = {**DEFAULTS, **{k: form.get(k) for k in DEFAULTS if k != "words"}, "words": form.getlist("words")}
        return form_page(request, values, str(err), err.status)
    job = request.app.state.jobs.submit(gen)
    return RedirectResponse(f"/job?id={job.id}", status_code=303)


def job_or_404(request: Request, id: str):
    job = request.app.state.jobs.jobs.get(id)
    if job is None:
        raise Refused(f"no generation job {id!r} (jobs are kept while the server runs; earlier images are in "
                      "the history)", 404)
    return job


def job_state(request: Request, job) -> dict:
    root = request.app.state.root
    return {"id": job.id, "status": job.status, "done": job.done, "total": job.total, "message": job.message,
            "seconds": job.seconds, "ahead": request.app.state.jobs.position(job) if job.status == "queued" else 0,
            "images": [f"/files/{relative_id(root, job.out_dir / f)}" for f in job.images],
            "folder": relative_id(root, job.out_dir)}


@router.get("/job")
def job_page(request: Request, id: str):
    from textinv.app.rendering import render

    job = job_or_404(request, id)
    return render(request, "job.html", {"job": job, "state": job_state(request, job),
                                        "settings": job.request.settings()})


@router.get("/job/status")
def job_status(request: Request, id: str):
    return JSONResponse(job_state(request, job_or_404(request, id)))


@router.post("/job/cancel", dependencies=[Depends(check_csrf)])
async def job_cancel(request: Request, id: str):
    job = request.app.state.jobs.cancel(job_or_404(request, id).id)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(job_state(request, job))
    return RedirectResponse(f"/job?id={job.id}", status_code=303)
