"""A blind rating study drawn from runs (python -m textinv rate new RUNS... --raters N --out STUDY).

A study folder holds:

    study.json     items, conditions (run rows: SD, SD + TI, SD + HN, the hidden reference), questions, the secret
                   that derives per-rater image ids; read by the server, never served
    images/        every image shown, re-encoded as PNG without text chunks, under random names, written in
                   random order (no name, date or order tells a condition)
    ratings.sqlite raters (token hashes only), each rater's tasks in their own random order, the answers
    invites.csv    the invite links (the only plain copy of the tokens: hand one to each rater, keep it private)

Items: a generated image (role test) of a run's final full-protocol evaluation for the chosen prompts and seeds;
a training photo of the concept (role reference, condition "reference": the hidden reference of P.910 ACR-HR); a
noise image (role gold, expected Bad within 1); an attention check (role trap: the image itself says which answer
to give). Pairs: the same prompt and seed from two conditions (A/B forced choice, sides drawn per rater).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import os
import secrets
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from textinv.errors import UserError

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
IMAGES_DIR = "images"
DB_FILE = "ratings.sqlite"
INVITES_FILE = "invites.csv"
REFERENCE = "reference"

ACR_LABELS = {5: "Excellent", 4: "Good", 3: "Fair", 2: "Poor", 1: "Bad"}  # ITU-T P.800 absolute category rating
QUESTIONS = {
    "quality": {"kind": "acr", "text": "How good is this image overall?"},
    "subject": {"kind": "acr", "refs": True,
                "text": "How well does this image show the same subject as the reference photos (the subject "
                        "itself, not its background or pose)?"},
    "prompt": {"kind": "acr", "prompt": True, "text": "How well does this image match the text below?"},
    # DreamBooth's two A/B questions (Ruiz et al. 2023), with "cannot determine / both equally"
    "ab_subject": {"kind": "ab", "refs": True,
                   "text": "Which of the two images best reproduces the identity (e.g. item type and details) of "
                           "the reference item?"},
    "ab_prompt": {"kind": "ab", "prompt": True, "text": "Which of the two images is best described by the reference text?"},
}
ITEM_QUESTIONS = {"test": ("quality", "subject", "prompt"), "reference": ("quality", "subject"),
                  "gold": ("quality",), "trap": ("quality",), "pair": ("ab_subject", "ab_prompt")}
# Seconds a rater needs per answer (assumed; P.808 sessions run ~6-8 s per ACR clip): sizes the sessions.
SECONDS = {"acr": 8, "ab": 10}
TRAP_ANSWER = 2
GOLD_ANSWER = 1


def _png(img: Image.Image) -> bytes:
    """RGB PNG with no ancillary chunks: generators' text chunks (prompt, model, embedding) do not survive."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def png_text_chunks(data: bytes) -> list[str]:
    """The names of a PNG's text/time/metadata chunks (tEXt, zTXt, iTXt, tIME, eXIf): a blind study's have none."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8].decode("latin-1")
        if kind in ("tEXt", "zTXt", "iTXt", "tIME", "eXIf"):
            out.append(kind)
        pos += 12 + length
    return out


def _noise_image(rng: np.random.Generator, size: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _trap_image(size: int, answer: int) -> Image.Image:
    img = Image.new("RGB", (max(size, 256), max(size, 256)), (200, 200, 200))
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=18)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    lines = ["Attention check:", "please answer", f"{answer} ({ACR_LABELS[answer]})", "for this image."]
    for i, line in enumerate(lines):
        draw.text((16, 60 + 32 * i), line, fill=(20, 20, 20), font=font)
    return img


@dataclass
class Study:
    folder: Path
    data: dict

    @classmethod
    def load(cls, folder: str | Path) -> "Study":
        folder = Path(folder).expanduser()
        path = folder / STUDY_FILE
        if not path.is_file():
            raise UserError(f"{folder} is not a rating study (no {STUDY_FILE}); make one with python -m textinv rate new")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{path} is not valid JSON ({err})") from None
        return cls(folder, data)

    @property
    def id(self) -> str:
        return self.data["study_id"]

    @property
    def items(self) -> dict[str, dict]:
        return self.data["items"]

    @property
    def images(self) -> dict[str, dict]:
        return self.data["images"]

    @property
    def db_path(self) -> Path:
        return self.folder / DB_FILE

    def image_file(self, image: str) -> Path:
        return self.folder / IMAGES_DIR / f"{image}.png"

    def public_id(self, rater: int, image: str) -> str:
        """The id under which rater `rater` sees `image`: an HMAC with the study's secret, so ids differ per rater
        and say nothing about the image without the secret (stable: a reloaded page shows the same ids)."""
        mac = hmac.new(bytes.fromhex(self.data["secret"]), f"img:{rater}:{image}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:12]).decode()

    def flipped(self, rater: int, item: str) -> bool:
        """Whether rater `rater` sees pair `item` with its B image on the left (drawn per rater and item)."""
        mac = hmac.new(bytes.fromhex(self.data["secret"]), f"side:{rater}:{item}".encode(), hashlib.sha256).digest()
        return bool(mac[0] & 1)

    def refs_for(self, item: dict) -> list[str]:
        """The concept's training photos shown beside a subject question: all but one, the same count for every item
        (a hidden reference leaves its own photo out, any other item one photo drawn from its id), so the number of
        reference photos never tells a real photo from a generated image."""
        refs = self.data["concepts"].get(item.get("concept") or "", {}).get("photos", [])
        if len(refs) < 2:
            return []
        own = [r for r in refs if r in item["images"]]
        if own:
            return [r for r in refs if r != own[0]]
        key = hashlib.sha256(json.dumps(item["images"]).encode()).digest()
        drop = refs[key[0] % len(refs)]
        return [r for r in refs if r != drop]

    def covers(self) -> dict[str, list[str]]:
        """Condition -> the run folders its images come from."""
        return {c: v.get("runs", []) for c, v in self.data["conditions"].items()}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _subjects(runs, overrides: dict[str, str]) -> dict[str, str]:
    out = {}
    for r in runs:
        out.setdefault(r.concept, overrides.get(r.concept) or str(r.header.get("initializer") or "the subject"))
    return out


def _reference_photos(run, explicit: dict[str, str]) -> list[Path]:
    from textinv.data.images import list_image_files

    where = explicit.get(run.concept) or run.get("concept.data_dir")
    if not where:
        return []
    candidates = [Path(where).expanduser()]
    if not candidates[0].is_absolute():
        candidates += [p / where for p in run.run_dir.resolve().parents]
    for c in candidates:
        if c.is_dir():
            return list_image_files(c)
    return []


def new_study(run_paths, out: str | Path, raters: int, seed: int = 0, images_per_prompt: int = 2,
              prompts: list[int] | None = None, minutes: float = 30.0, references: dict[str, str] | None = None,
              subjects: dict[str, str] | None = None, golds: int = 1, traps: int = 1,
              include_unfinished: bool = False) -> Study:
    """Draw a study from the runs below `run_paths` into the new folder `out` (see the module doc)."""
    from textinv.runs.results import ROW_ORDER, load_runs
    from textinv.ratings.store import Store

    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty; a study is written into a new folder")
    if raters < 1:
        raise UserError(f"--raters {raters} must be at least 1 (BT.500 asks for 15 or more)")
    runs = load_runs(run_paths, include_unfinished=include_unfinished)
    rng = np.random.default_rng(seed)
    subjects = _subjects(runs, subjects or {})
    pending: list[tuple[str, bytes, dict]] = []  # (image id, png, metadata): written in random order at the end
    used_ids: set[str] = set()

    def add_image(data: bytes, meta: dict) -> str:
        while True:
            image = secrets.token_hex(8)
            if image not in used_ids:
                used_ids.add(image)
                break
        pending.append((image, data, {**meta, "sha256": hashlib.sha256(data).hexdigest()}))
        return image

    items: dict[str, dict] = {}

    def add_item(**item) -> str:
        key = f"i{len(items):05d}"
        items[key] = item
        return key

    conditions: dict[str, dict] = {}
    concepts: dict[str, dict] = {}
    size = 64
    # generated images: per run, its final full-protocol folder, chosen prompts and seeds
    by_key: dict[tuple, str] = {}  # (concept, condition, run index in its row, template, k) -> image id
    order = {r: i for i, r in enumerate(ROW_ORDER)}
    for run in sorted(runs, key=lambda r: (order.get(r.row, 99), r.concept, str(r.seed), str(r.run_dir))):
        cond = run.row
        conditions.setdefault(cond, {"runs": [], "role": "test"})
        conditions[cond]["runs"].append(str(run.run_dir))
        nth = sum(1 for k in conditions[cond].setdefault("_concept_runs", []) if k == run.concept)
        conditions[cond]["_concept_runs"].append(run.concept)
        folder = run.images_dir()
        templates = run.templates(folder)
        for p, template in enumerate(templates):
            if prompts is not None and p not in prompts:
                continue
            for k, path in enumerate(run.image_files(folder, p)[:images_per_prompt]):
                with Image.open(path) as img:
                    size = max(size, img.width)
                    data = _png(img)
                image = add_image(data, {"condition": cond, "run": str(run.run_dir), "file": str(path)})
                text = template.replace("{}", subjects[run.concept])
                add_item(role="test", kind="single", images=[image], condition=cond, concept=run.concept,
                         run=str(run.run_dir), prompt_index=p, seed_index=k, template=template, text=text)
                by_key[(run.concept, cond, nth, template, k)] = image
        if run.concept not in concepts:
            photos = _reference_photos(run, references or {})
            if not photos:
                log.warning("no training photos found for concept %s (concept.data_dir=%s): no hidden references "
                            "and no reference photos for the subject questions; pass --references %s=DIR",
                            run.concept, run.get("concept.data_dir"), run.concept)
            ids = []
            for path in photos:  # centre square at the generated images' size: the size tells nothing either
                with Image.open(path) as img:
                    img = img.convert("RGB")
                    side = min(img.size)
                    left, top = (img.width - side) // 2, (img.height - side) // 2
                    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
                    ids.append(add_image(_png(img), {"condition": REFERENCE, "file": str(path)}))
            concepts[run.concept] = {"photos": ids, "subject": subjects[run.concept]}
            for image in ids:
                add_item(role="reference", kind="single", images=[image], condition=REFERENCE, concept=run.concept)
    for c in conditions.values():
        c.pop("_concept_runs", None)
    if any(v["photos"] for v in concepts.values()):
        conditions[REFERENCE] = {"runs": [], "role": "reference"}
    # pairs: same concept, template and seed from two conditions (the n-th run of each row paired with the n-th)
    conds = [c for c in conditions if c != REFERENCE]
    for a, b in combinations(conds, 2):
        for (concept, cond, nth, template, k), img_a in sorted(by_key.items()):
            if cond != a:
                continue
            img_b = by_key.get((concept, b, nth, template, k))
            if img_b:
                add_item(role="test", kind="pair", images=[img_a, img_b], conditions=[a, b], concept=concept,
                         template=template, seed_index=k, text=template.replace("{}", subjects[concept]))
    for _ in range(golds):
        add_item(role="gold", kind="single", condition="gold", expect=GOLD_ANSWER,
                 images=[add_image(_png(_noise_image(rng, size)), {"condition": "gold"})])
    for _ in range(traps):
        add_item(role="trap", kind="single", condition="trap", expect=TRAP_ANSWER,
                 images=[add_image(_png(_trap_image(size, TRAP_ANSWER)), {"condition": "trap"})])
    if not any(i["role"] == "test" for i in items.values()):
        raise UserError("the runs gave no evaluation images for the chosen prompts; check --prompts")

    # tasks: (item, question); each rater a random order, sized to `minutes`
    tasks = [(key, q) for key, it in items.items() if it["role"] in ("test", "reference")
             for q in ITEM_QUESTIONS["pair" if it["kind"] == "pair" else it["role"]]]
    controls = [(key, q) for key, it in items.items() if it["role"] in ("gold", "trap") for q in ITEM_QUESTIONS[it["role"]]]
    seconds = lambda ts: sum(SECONDS[QUESTIONS[q]["kind"]] for _, q in ts)  # noqa: E731
    budget = minutes * 60 - seconds(controls)
    rng.shuffle(tasks)
    per_rater = len(tasks)
    while per_rater > 1 and seconds(tasks[:per_rater]) > budget:
        per_rater -= 1
    if per_rater < len(tasks):
        log.warning("%d tasks take longer than %g minutes: each rater gets %d of them (each task rated by about %.1f "
                    "raters)", len(tasks), minutes, per_rater, raters * per_rater / len(tasks))
    sessions = []
    for r in range(raters):
        mine = [tasks[(r * per_rater + j) % len(tasks)] for j in range(per_rater)]
        mine = list(dict.fromkeys(mine))
        rng.shuffle(mine)
        for c in controls:  # never first: a rater learns the page on real items
            mine.insert(int(rng.integers(1, len(mine) + 1)), c)
        sessions.append(mine)

    out.mkdir(parents=True, exist_ok=True)
    (out / IMAGES_DIR).mkdir()
    order_idx = rng.permutation(len(pending))
    images = {}
    for i in order_idx:
        image, data, meta = pending[i]
        (out / IMAGES_DIR / f"{image}.png").write_bytes(data)
        images[image] = meta
    study = {
        "version": 1, "study_id": secrets.token_hex(8), "secret": secrets.token_hex(32), "seed": seed,
        "minutes": minutes, "seconds_per_answer": SECONDS, "questions": QUESTIONS, "acr_labels": ACR_LABELS,
        "conditions": conditions, "concepts": concepts, "images": images, "items": items,
    }
    (out / STUDY_FILE).write_text(json.dumps(study, indent=1), encoding="utf-8")
    tokens = [secrets.token_urlsafe(24) for _ in range(raters)]
    labels = [f"r{i + 1:02d}" for i in range(raters)]
    Store(out / DB_FILE).create(study["study_id"], [(lab, hash_token(t)) for lab, t in zip(labels, tokens)], sessions)
    invites = out / INVITES_FILE
    fd = os.open(invites, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("rater,token,path\n")
        for lab, t in zip(labels, tokens):
            f.write(f"{lab},{t},/rate/{t}\n")
    return Study(out, study)


def read_invites(folder: str | Path) -> list[tuple[str, str]]:
    """(rater label, token) of a study's invites.csv."""
    path = Path(folder) / INVITES_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing: the invite tokens are only there (python -m textinv rate new writes it)")
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return [(r.split(",")[0], r.split(",")[1]) for r in rows if r.strip()]
