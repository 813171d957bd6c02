"""The rating pages of a study (python -m textinv app --study STUDY): one task per page, blind.

    GET  /rate/{token}               the rater's next unanswered task (or the thank-you page); resumable
    POST /rate/{token}/answer        pos + value (+ CSRF): committed to SQLite, then 303 back to the next task
    GET  /rate/{token}/img/{id}.png  an image under this rater's id for it (an HMAC: differs per rater)
    GET  /study                      the operator's progress per rater (labels and counts only)

Nothing a rater's browser receives names a run, method, step, condition or prompt of origin: images come from
the study's re-encoded copies (no text chunks) under per-rater ids, without Last-Modified or ETag; the page
shows the question, the reference photos (subject questions) and the study's neutral text (prompt questions)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from textinv.app.safety import Refused, check_csrf
from textinv.ratings.store import AB_CODES
from textinv.ratings.study import ACR_LABELS, QUESTIONS, hash_token

router = APIRouter()


def _study(request: Request):
    study = getattr(request.app.state, "study", None)
    if study is None:
        raise Refused("this server runs no rating study (python -m textinv app --study STUDY)", 404)
    return study


def _session(request: Request, token: str):
    """(study, store, rater id, tasks) of an invite token; an unknown token is a 404 that says nothing more."""
    study = _study(request)
    store = request.app.state.store
    if not 16 <= len(token) <= 100:
        raise Refused("no such invitation", 404)
    found = store.rater(hash_token(token))
    if found is None:
        raise Refused("no such invitation", 404)
    rater = found[0]
    cache = request.app.state.session_tasks
    if rater not in cache:  # tasks never change after the study is made
        cache[rater] = store.tasks(rater)
    return study, store, rater, cache[rater]


def _image_map(study, rater: int, tasks) -> dict[str, str]:
    key = ("images", rater)
    cache = study.__dict__.setdefault("_public", {})
    if key not in cache:
        ids = {}
        for _, item, _q in tasks:
            it = study.items[item]
            for image in it["images"] + study.refs_for(it):
                ids[study.public_id(rater, image)] = image
        cache[key] = ids
    return cache[key]


@router.get("/rate/{token}")
def rate(request: Request, token: str):
    from textinv.app.rendering import render

    study, store, rater, tasks = _session(request, token)
    done = store.answered(rater)
    todo = [t for t in tasks if (t[1], t[2]) not in done]
    context = {"token": token, "answered": len(tasks) - len(todo), "total": len(tasks),
               "minutes": round(len(todo) * 8 / 60 + 0.5)}
    if not todo:
        return render(request, "rate.html", {**context, "finished": True})
    pos, item_id, question = todo[0]
    item = study.items[item_id]
    q = QUESTIONS[question]
    url = lambda image: f"/rate/{token}/img/{study.public_id(rater, image)}.png"  # noqa: E731
    images = [url(i) for i in item["images"]]
    if q["kind"] == "ab" and study.flipped(rater, item_id):
        images = images[::-1]
    return render(request, "rate.html", {
        **context, "finished": False, "pos": pos, "question": question, "kind": q["kind"], "text": q["text"],
        "images": images, "refs": [url(i) for i in study.refs_for(item)] if q.get("refs") else [],
        "prompt": item.get("text") if q.get("prompt") else None, "labels": ACR_LABELS})


@router.post("/rate/{token}/answer")
async def answer(request: Request, token: str):
    await check_csrf(request)
    study, store, rater, tasks = _session(request, token)
    form = await request.form()
    try:
        pos = int(str(form.get("pos", "")))
    except ValueError:
        raise Refused("pos must be a whole number") from None
    task = next((t for t in tasks if t[0] == pos), None)
    if task is None:
        raise Refused(f"no task {pos} in this session")
    _, item_id, question = task
    raw = str(form.get("value", ""))
    shown_left = None
    if QUESTIONS[question]["kind"] == "acr":
        if raw not in {"1", "2", "3", "4", "5"}:
            raise Refused(f"value={raw!r}: answer 1 to 5")
        value = int(raw)
    else:
        if raw not in ("left", "right", "tie"):
            raise Refused(f"value={raw!r}: answer left, right or tie")
        flipped = study.flipped(rater, item_id)
        shown_left = "B" if flipped else "A"
        side = {"left": shown_left, "right": "A" if flipped else "B", "tie": "="}[raw]
        value = AB_CODES[side]
    store.answer(rater, item_id, question, value, shown_left)  # committed before the next task is shown
    return RedirectResponse(f"/rate/{token}", status_code=303)


@router.get("/rate/{token}/img/{public}.png")
def image(request: Request, token: str, public: str):
    study, _, rater, tasks = _session(request, token)
    image = _image_map(study, rater, tasks).get(public)
    if image is None:
        raise Refused("no such image", 404)
    data = study.image_file(image).read_bytes()  # a name from study.json, inside the study's images/
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/study")
def overview(request: Request):
    from textinv.app.rendering import render

    study = _study(request)
    rows = request.app.state.store.progress()
    return render(request, "study.html", {"rows": rows, "answers": sum(r["answered"] for r in rows),
                                          "tasks": sum(r["tasks"] for r in rows), "folder": study.folder})
