"""Simulated raters (python -m textinv rate simulate STUDY --url URL --seed S): every invite of a study answered
through the running server's HTTP pages, as a person would: load the page, look at the images, press an answer.

A simulated rater knows nothing the page does not show; it recognises an image by its bytes (the SHA-256 the
study recorded), which stands for a person seeing it. Truth: a true score per question and condition (TRUTH,
or --truth), a per-item effect (sd `item_sd`) and per-rater bias (sd `bias_sd`) and noise (sd `noise_sd`); an ACR
answer is round(truth + item + bias + noise) clipped to 1..5; an A/B answer compares truth + item + noise of both
sides, "cannot determine / both equally" when they differ by less than `tie_margin`. Answers are a function of
(seed, rater, item, question), so a rater who is interrupted and resumes gives the same answers. Careless raters
(`careless`: the first ones) answer uniformly at random, traps included: screening should exclude them."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from textinv.ratings.study import QUESTIONS, REFERENCE, Study, read_invites

# Default true scores (1-5) per question and condition: the references best, then TI/HN, then the untouched model.
TRUTH = {"quality": {REFERENCE: 4.4, "SD + TI": 3.4, "SD + HN": 3.1, "SD": 3.0},
         "subject": {REFERENCE: 4.6, "SD + TI": 3.6, "SD + HN": 3.0, "SD": 2.0},
         "prompt": {"SD + TI": 3.2, "SD + HN": 3.4, "SD": 3.8}}
AB_OF = {"ab_subject": "subject", "ab_prompt": "prompt"}


@dataclass
class Simulation:
    truth: dict = field(default_factory=lambda: {q: dict(v) for q, v in TRUTH.items()})
    bias_sd: float = 0.4
    noise_sd: float = 0.6
    item_sd: float = 0.3
    tie_margin: float = 0.25
    careless: int = 0
    seed: int = 0

    def _rng(self, *key) -> np.random.Generator:
        digest = hashlib.sha256(repr((self.seed, *key)).encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def bias(self, rater: str) -> float:
        return float(self._rng("bias", rater).normal(0, self.bias_sd))

    def item_effect(self, item: str) -> float:
        return float(self._rng("item", item).normal(0, self.item_sd))

    def true_score(self, question: str, condition: str) -> float:
        return float(self.truth.get(question, {}).get(condition, 3.0))

    def acr(self, rater: str, careless: bool, item_id: str, item: dict, question: str) -> int:
        rng = self._rng("answer", rater, item_id, question)
        if careless:
            return int(rng.integers(1, 6))
        if item["role"] in ("gold", "trap"):
            return int(item["expect"])  # an attentive rater reads the trap and sees the noise
        x = self.true_score(question, item["condition"]) + self.item_effect(item_id) + self.bias(rater) \
            + rng.normal(0, self.noise_sd)
        return int(np.clip(np.rint(x), 1, 5))

    def ab(self, rater: str, careless: bool, item_id: str, item: dict, question: str) -> str:
        """'A' (the pair's first condition), 'B' or '='."""
        rng = self._rng("answer", rater, item_id, question)
        if careless:
            return str(rng.choice(["A", "B", "="]))
        q = AB_OF[question]
        a, b = (self.true_score(q, c) + self.item_effect(f"{item_id}:{i}") + rng.normal(0, self.noise_sd)
                for i, c in enumerate(item["conditions"]))
        return "=" if abs(a - b) < self.tie_margin else ("A" if a > b else "B")


@dataclass
class Ack:
    rater: str
    item: str
    question: str
    value: int | str


FIELD = re.compile(r'name="(csrf|pos)" value="([^"]*)"')


def _rater(client, base: str, label: str, token: str, careless: bool, sim: Simulation, study: Study,
           by_hash: dict, acks: list, lock: threading.Lock, patience: float, pause: float) -> int:
    """Answer one invite to the end; returns the answers acknowledged. Connection errors (a server being
    restarted) are retried until `patience` seconds pass without progress."""
    import httpx

    done = 0
    last_progress = time.monotonic()
    while True:
        try:
            page = client.get(f"{base}/rate/{token}")
            page.raise_for_status()
            html = page.text
            if 'data-finished="true"' in html:
                return done
            fields = dict(FIELD.findall(html))
            question = re.search(r'data-question="([^"]+)"', html).group(1)
            srcs = re.findall(r'<img class="item" [^>]*src="([^"]+)"', html)
            shown = []
            for src in srcs:
                img = client.get(base + src)
                img.raise_for_status()
                shown.append(by_hash[hashlib.sha256(img.content).hexdigest()])
            kind = QUESTIONS[question]["kind"]
            if kind == "acr":
                item_id = next(k for k, it in study.items.items() if it["kind"] == "single" and it["images"] == shown)
                value = sim.acr(label, careless, item_id, study.items[item_id], question)
                sent, canonical = str(value), value
            else:
                item_id = next(k for k, it in study.items.items() if it["kind"] == "pair" and set(it["images"]) == set(shown))
                canonical = sim.ab(label, careless, item_id, study.items[item_id], question)
                left_is_a = shown[0] == study.items[item_id]["images"][0]
                sent = {"=": "tie", "A": "left" if left_is_a else "right", "B": "right" if left_is_a else "left"}[canonical]
            if pause:
                time.sleep(pause)
            resp = client.post(f"{base}/rate/{token}/answer", data={"csrf": fields["csrf"], "pos": fields["pos"],
                                                                     "value": sent}, follow_redirects=False)
            if resp.status_code != 303:
                raise RuntimeError(f"{label}: answer refused ({resp.status_code}): {resp.text[:200]}")
            with lock:
                acks.append(Ack(label, item_id, question, canonical))
            done += 1
            last_progress = time.monotonic()
        except (httpx.TransportError, httpx.HTTPStatusError) as err:
            if time.monotonic() - last_progress > patience:
                raise RuntimeError(f"{label}: no answer from {base} for {patience:.0f} s ({err})") from None
            time.sleep(0.3)


def simulate(study_dir, url: str, sim: Simulation, concurrency: int = 8, patience: float = 60.0,
             pause: float = 0.0, raters: list[str] | None = None) -> list[Ack]:
    """Every invite answered through `url`, `concurrency` raters at once; returns every acknowledged answer."""
    import httpx

    study = Study.load(study_dir)
    by_hash = {meta["sha256"]: image for image, meta in study.images.items()}
    invites = read_invites(study.folder)
    if raters is not None:
        invites = [i for i in invites if i[0] in raters]
    acks: list[Ack] = []
    lock = threading.Lock()
    base = url.rstrip("/")

    def one(index_invite):
        index, (label, token) = index_invite
        with httpx.Client(timeout=60) as client:
            return _rater(client, base, label, token, index < sim.careless, sim, study, by_hash, acks, lock,
                          patience, pause)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        list(pool.map(one, enumerate(invites)))
    return acks
