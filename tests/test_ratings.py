"""Rating studies (textinv.ratings, python -m textinv rate, the app's --study pages): Krippendorff's alpha against
his worked examples, interval coverage over seeded simulations, a five-rater study of the miniature world's demo
runs answered by simulated raters through HTTP (true ordering recovered, the report against an independent
computation), blinding, 30 concurrent raters, a server killed mid-study, CSV merge, and the MOS column of Table 1.
tests/test_ratings_browser.py rates a session with the keyboard in a real browser."""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import norm, t as student_t

from conftest import ROOT, load_script

pytest.importorskip("fastapi")
pytestmark = pytest.mark.timeout(1800)  # app_runs (the session's toy-world runs) is built by the first test using it

from textinv.ratings import stats  # noqa: E402
from textinv.ratings.simulate import Simulation, simulate  # noqa: E402
from textinv.ratings.store import Store  # noqa: E402
from textinv.ratings.study import Study, new_study, png_text_chunks, read_invites  # noqa: E402

NAN = math.nan


# --- statistics ------------------------------------------------------------------------------------------------
def _pairs(matrix):
    return zip(*[(j, v) for row in matrix for j, v in enumerate(row) if v == v])


def test_alpha_matches_krippendorffs_worked_examples():
    """Krippendorff (2011) "Computing Krippendorff's Alpha-Reliability": 4 observers x 12 units with missing values,
    alpha nominal .743, ordinal .815, interval .849; and the 3 coders x 15 units example (Wikipedia): nominal .691,
    interval .811."""
    paper = [[1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
             [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
             [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
             [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN]]
    units, values = _pairs(paper)
    assert round(stats.krippendorff_alpha(units, values, "nominal"), 3) == 0.743
    assert round(stats.krippendorff_alpha(units, values, "ordinal"), 3) == 0.815
    assert round(stats.krippendorff_alpha(units, values, "interval"), 3) == 0.849
    wiki = [[NAN] * 5 + [3, 4, 1, 2, 1, 1, 3, 3, NAN, 3],
            [1, NAN, 2, 1, 3, 3, 4, 3] + [NAN] * 7,
            [NAN, NAN, 2, 1, 3, 4, 4, NAN, 2, 1, 1, 3, 3, NAN, 4]]
    units, values = _pairs(wiki)
    assert round(stats.krippendorff_alpha(units, values, "nominal"), 6) == 0.691358
    assert round(stats.krippendorff_alpha(units, values, "interval"), 6) == 0.810845
    # perfect agreement is 1; the bootstrap interval holds the estimate
    assert stats.krippendorff_alpha([0, 0, 1, 1, 2, 2], [1, 1, 3, 3, 5, 5]) == 1.0
    ci = stats.alpha_bootstrap(*_pairs(paper), level="ordinal", n_boot=300)
    assert ci.low <= ci.estimate <= ci.high


def _expected_acr(m: float, s: float) -> float:
    """E[clip(round(X), 1, 5)] for X ~ N(m, s): what a simulated rater's answers average to."""
    k = np.arange(1, 6)
    upper = norm.cdf((k + 0.5 - m) / s)
    lower = norm.cdf((k - 0.5 - m) / s)
    upper[-1], lower[0] = 1.0, 0.0
    return float((k * (upper - lower)).sum())


def test_intervals_cover_the_truth_at_their_nominal_rate():
    """400 seeded studies (15 raters x 12 items, rater bias, item effect, noise, answers rounded and clipped to 1-5):
    the t interval over per-rater means covers the mean for the study's items (items fixed) and the bootstrap over
    raters and items covers the population mean (both random), each at 95% within 3 binomial standard deviations
    of 400 draws (+-0.033). Measured with 2000 studies: 0.946 and 0.949."""
    studies, n_r, n_i = 400, 15, 12
    mu, sd_bias, sd_item, sd_noise = 3.2, 0.4, 0.3, 0.6
    rng = np.random.default_rng(0)
    population = _expected_acr(mu, math.hypot(sd_bias, sd_item, sd_noise))
    bias = rng.normal(0, sd_bias, (studies, n_r))
    item = rng.normal(0, sd_item, (studies, n_i))
    x = np.clip(np.rint(mu + bias[:, :, None] + item[:, None, :] + rng.normal(0, sd_noise, (studies, n_r, n_i))), 1, 5)
    per_item = np.vectorize(lambda i: _expected_acr(mu + i, math.hypot(sd_bias, sd_noise)))(item).mean(1)
    raters, items = np.repeat(np.arange(n_r), n_i), np.tile(np.arange(n_i), n_r)
    hits_t = hits_boot = 0
    for s in range(studies):
        t = stats.mos_t(raters, x[s].ravel())
        boot = stats.mos_bootstrap(raters, items, x[s].ravel(), n_boot=500, seed=s)
        hits_t += t.low <= per_item[s] <= t.high
        hits_boot += boot.low <= population <= boot.high
    tolerance = 3 * math.sqrt(0.95 * 0.05 / studies)
    assert abs(hits_t / studies - 0.95) <= tolerance, hits_t / studies
    assert abs(hits_boot / studies - 0.95) <= tolerance, hits_boot / studies


def test_wilson_and_screening_rules():
    # Wilson score interval by its formula: 7 of 10 at 95%
    z = norm.ppf(0.975)
    centre, half = (7 + z * z / 2) / (10 + z * z), z / (10 + z * z) * math.sqrt(7 * 3 / 10 + z * z / 4)
    assert np.allclose(stats.wilson(7, 10), (centre - half, centre + half))
    summary = stats.ab_summary(["A"] * 7 + ["B"] * 3 + ["="] * 5)
    assert (summary["a_wins"], summary["b_wins"], summary["ties"], summary["decided"]) == (7, 3, 5, 10)
    assert summary["a_rate"] == 0.7 and summary["tie_share"] == 5 / 15
    rows = []
    for rater, offset in (("good1", 0), ("good2", 0.3), ("flat", None), ("trap", 0), ("reversed", "r")):
        for q_cond, truth in ((("quality", "a"), 1.5), (("quality", "b"), 3), (("quality", "c"), 4.5)):
            for i in range(3):
                value = 3 if offset is None else int(round(6 - truth)) if offset == "r" else \
                    int(round(truth + offset + (i - 1) * 0.4))
                rows.append({"rater": rater, "role": "test", "question": q_cond[0], "condition": q_cond[1],
                             "value": value})
        rows.append({"rater": rater, "role": "trap", "question": "quality", "condition": "trap", "value":
                     4 if rater == "trap" else 2, "expect": 2})
        rows.append({"rater": rater, "role": "gold", "question": "quality", "condition": "gold", "value": 2, "expect": 1})
    out = stats.screen_raters(rows)
    assert [r for r, s in out.items() if s["excluded"]] == ["flat", "reversed", "trap"]
    assert "variance" in out["flat"]["reasons"][0] and "trap" in out["trap"]["reasons"][0]
    assert out["reversed"]["reasons"] == [f"correlation with the others' MOS {out['reversed']['correlation']:.2f} < 0.7"]


# --- a study of the demo's runs, served --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread on a free 127.0.0.1 port (as tests/test_app_browser.py)."""

    def __init__(self, runs: Path, study: Path):
        import uvicorn

        from textinv.app.server import create_app

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.srv = uvicorn.Server(uvicorn.Config(create_app(runs, study=study), host="127.0.0.1", port=self.port,
                                                 log_level="warning", limit_concurrency=200, backlog=256))
        self.thread = threading.Thread(target=self.srv.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        end = time.monotonic() + 60
        while not self.srv.started and time.monotonic() < end:
            time.sleep(0.05)
        assert self.srv.started
        return self

    def __exit__(self, *exc):
        self.srv.should_exit = True
        self.thread.join(20)


def _references() -> dict:
    folder = ROOT / "data" / "concepts" / "toy_heart"  # drawn by app_runs' training run
    return {"toy_heart": str(folder)} if folder.is_dir() else {}


@pytest.fixture(scope="module")
def runs_copy(app_runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("rating_runs") / "outputs"
    shutil.copytree(app_runs, root, ignore=shutil.ignore_patterns("wandb"))
    return root


@pytest.fixture(scope="module")
def rated(runs_copy, tmp_path_factory):
    """A five-rater study of the demo's runs (SD and SD + TI, hidden references), answered by five simulated raters
    through the server's pages (the README's toy study); the pages every rater saw are kept for the blinding test."""
    folder = tmp_path_factory.mktemp("study") / "study"
    study = new_study([runs_copy], folder, raters=5, seed=3, images_per_prompt=2, references=_references(),
                      subjects={"toy_heart": "orange heart"})
    seen: list[tuple[str, dict, bytes]] = []  # (url, headers, body) of everything the raters' clients received
    import httpx

    original = httpx.Client.send

    def recording(self, request, **kw):
        response = original(self, request, **kw)
        response.read()
        seen.append((str(request.url), dict(response.headers), response.content))
        return response

    with Server(runs_copy, folder) as server:
        httpx.Client.send = recording
        try:
            acks = simulate(folder, server.url, Simulation(seed=11), concurrency=5)
        finally:
            httpx.Client.send = original
    return study, acks, seen


def _conditions_in_order(truth: dict, question: str, present) -> list[str]:
    return sorted((c for c in present if c in truth[question]), key=lambda c: truth[question][c])


def test_five_simulated_raters_recover_the_true_ordering(rated):
    from textinv.ratings.report import analyse
    from textinv.ratings.simulate import TRUTH

    study, acks, _ = rated
    store = Store(study.db_path)
    assert len(acks) == len(store.answers()) == sum(p["tasks"] for p in store.progress())
    report = analyse(study, n_boot=500)
    assert report["excluded"] == [] and len(report["raters"]) == 5
    assert set(report["acr"]["quality"]["conditions"]) == {"SD", "SD + TI", "reference"} if _references() else True
    for question, res in report["acr"].items():
        conds = res["conditions"]
        by_mos = sorted(conds, key=lambda c: conds[c]["mos"])
        assert by_mos == _conditions_in_order(TRUTH, question, conds), (question, {c: v["mos"] for c, v in conds.items()})
        assert all(v["raters"] == 5 for v in conds.values())
    subject = {(p["a"], p["b"]): p for p in report["ab"]["ab_subject"]}[("SD", "SD + TI")]
    assert subject["a_high"] < 0.5  # SD + TI truly reproduces the subject better: SD's win rate is below a half
    prompt = {(p["a"], p["b"]): p for p in report["ab"]["ab_prompt"]}[("SD", "SD + TI")]
    assert prompt["a_rate"] > 0.5  # and the untouched model follows the text better (the study's trade-off)


def test_report_numbers_equal_an_independent_computation(rated, capsys):
    """`rate report` (the command) against a recomputation from the SQLite rows with plain Python: MOS and its t
    interval, the plain mean, z-scores, Krippendorff's alpha by pairs of values, A/B counts and Wilson bounds."""
    import json

    from textinv.ratings.cli import main

    study, _, _ = rated
    assert main(["report", str(study.folder), "--bootstrap", "300"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((study.folder / "report" / "report.json").read_text())
    assert (study.folder / "report" / "mos.png").stat().st_size > 5000 and "## ACR: quality" in printed
    con = sqlite3.connect(study.db_path)
    rows = con.execute("SELECT r.label, a.item, a.question, a.value FROM answers a JOIN raters r ON r.id=a.rater").fetchall()
    for question, res in report["acr"].items():
        mine = [(r, i, v) for r, i, q, v in rows if q == question and study.items[i]["role"] in ("test", "reference")]
        by_rater: dict = {}
        for r, i, v in mine:
            by_rater.setdefault(r, []).append(v)
        zs = {}
        for r, vs in by_rater.items():
            m, sd = statistics.fmean(vs), statistics.stdev(vs)
            zs[r] = (m, sd)
        for cond, got in res["conditions"].items():
            sel = [(r, i, v) for r, i, v in mine if study.items[i]["condition"] == cond]
            means = [statistics.fmean([v for r2, _, v in sel if r2 == r]) for r in sorted({r for r, _, _ in sel})]
            mos = statistics.fmean(means)
            half = student_t.ppf(0.975, len(means) - 1) * statistics.stdev(means) / math.sqrt(len(means))
            assert got["mos"] == pytest.approx(mos) and got["t_low"] == pytest.approx(mos - half)
            assert got["t_high"] == pytest.approx(mos + half)
            assert got["mean"] == pytest.approx(statistics.fmean([v for _, _, v in sel]))
            assert got["boot_low"] <= got["mean"] <= got["boot_high"]
            zmeans = [statistics.fmean([(v - zs[r][0]) / zs[r][1] for r2, _, v in sel if r2 == r])
                      for r in sorted({r for r, _, _ in sel})]
            assert got["z"] == pytest.approx(statistics.fmean(zmeans))
        # alpha by its definition over pairs: 1 - D_o / D_e with the ordinal metric
        units: dict = {}
        for _, i, v in mine:
            units.setdefault(i, []).append(v)
        pairable = [vs for vs in units.values() if len(vs) >= 2]
        values = [v for vs in pairable for v in vs]
        n_c = {c: values.count(c) for c in range(1, 6)}

        def delta(c, k):
            lo, hi = min(c, k), max(c, k)
            return (sum(n_c[g] for g in range(lo, hi + 1)) - (n_c[c] + n_c[k]) / 2) ** 2

        d_o = sum(delta(a, b) / (len(vs) - 1) for vs in pairable for x, a in enumerate(vs) for y, b in enumerate(vs)
                  if x != y) / len(values)
        d_e = sum(delta(a, b) for x, a in enumerate(values) for y, b in enumerate(values) if x != y) / (
            len(values) * (len(values) - 1))
        assert res["alpha"]["estimate"] == pytest.approx(1 - d_o / d_e)
    z = norm.ppf(0.975)
    for question, pairs in report["ab"].items():
        for p in pairs:
            got = [v for r, i, q, v in rows if q == question and study.items[i]["conditions"] == [p["a"], p["b"]]]
            a, b, tie = got.count(1), got.count(2), got.count(0)
            assert (p["a_wins"], p["b_wins"], p["ties"]) == (a, b, tie)
            n, phat = a + b, a / (a + b)
            centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
            half = z / (1 + z * z / n) * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
            assert (p["a_low"], p["a_high"]) == pytest.approx((centre - half, centre + half))


def test_blinding_nothing_a_rater_receives_names_the_condition(rated, runs_copy):
    """Every page, image and header the five raters' clients received: no run, method, step, condition or
    prompt of origin; pages of one question look the same whatever the condition (image ids aside); images carry
    no text chunks and differ in id per rater; no Last-Modified/ETag."""
    study, _, seen = rated
    images = {meta["sha256"]: meta for meta in study.images.values()}
    forbidden = ["SD + TI", "SD + HN", "baseline", "textual", "inversion", "hypernet", "step0", "demo/", "toy-heart",
                 "toy_heart", "<toy", "/eval/", "prompts.json", "metrics", "condition", "reference_", "gold", "trap",
                 str(runs_copy), study.id] + list(study.images) + list(study.items)
    for run in study.covers()["SD + TI"] + study.covers()["SD"]:
        forbidden += [run, Path(run).name + "/"]
    normalised: dict = {}
    ids_by_rater: dict = {}
    sizes: set = set()
    for url, headers, body in seen:
        assert "last-modified" not in headers and "etag" not in headers and "content-disposition" not in headers
        rater_token = url.split("/rate/")[1].split("/")[0]
        if url.endswith(".png"):
            assert body[:8] == b"\x89PNG\r\n\x1a\n" and png_text_chunks(body) == []
            sizes.add(Image.open(io.BytesIO(body)).size)
            assert hashlib.sha256(body).hexdigest() in images  # the study's re-encoded copy, nothing else
            ids_by_rater.setdefault(hashlib.sha256(body).hexdigest(), set()).add((rater_token, url.rsplit("/", 1)[1]))
            continue
        text = body.decode()
        if 'data-question="' not in text:  # a 303 after an answer: empty
            assert text == "", url
            continue
        stripped = re.sub(r'/rate/[^"/]+(/img/[^".]+\.png|/answer)?', "/rate/X", text)
        stripped = re.sub(r'name="csrf" value="[^"]+"', "", stripped)
        for word in forbidden:
            assert word not in stripped, (word, url)
        question = re.search(r'data-question="([^"]*)"', text).group(1)
        prompt = re.search(r'<q id="prompt-text">([^<]*)</q>', text)
        page = re.sub(r'value="\d+"|\d+ / \d+|About \d+ minute', "", stripped)
        normalised.setdefault((question, prompt.group(1) if prompt else None), set()).add(page)
    different = {k: sorted(v) for k, v in normalised.items() if len(v) > 1}
    if different:
        import difflib

        key, pages = next(iter(different.items()))
        raise AssertionError(f"{key}: " + "\n".join(difflib.unified_diff(pages[0].splitlines(), pages[1].splitlines())))
    assert any(q == "prompt" for q, _ in normalised) and any(q == "ab_subject" for q, _ in normalised)
    assert len(sizes) <= 2  # generated images and hidden references one size (the trap another)
    # one image, five raters: five different ids, none of them the study's own name
    shared = [v for v in ids_by_rater.values() if len({t for t, _ in v}) == 5]
    assert shared and all(len({i for _, i in v}) == 5 for v in shared)
    # the prompt raters read is the same text for every condition (the study's words for the concept)
    texts = {it["text"] for it in study.items.values() if it.get("template") == "a photo of {}"}
    assert texts == {"a photo of orange heart"}


def test_pages_refuse_bad_requests_and_count_a_resubmitted_answer_once(rated, runs_copy, tmp_path):
    from fastapi.testclient import TestClient

    from textinv.app.server import create_app

    study, _, _ = rated
    folder = tmp_path / "study"
    new_study([runs_copy], folder, raters=2, seed=1, images_per_prompt=1, references=_references())
    (label, token), (_, other) = read_invites(folder)
    with TestClient(create_app(runs_copy, study=folder)) as client:
        assert client.get("/rate/" + "x" * 32).status_code == 404
        page = client.get(f"/rate/{token}")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        pos = re.search(r'name="pos" value="(\d+)"', page.text).group(1)
        kind = re.search(r'data-kind="(\w+)"', page.text).group(1)
        value = "3" if kind == "acr" else "left"
        assert client.post(f"/rate/{token}/answer", data={"pos": pos, "value": value}).status_code == 403
        bad = client.post(f"/rate/{token}/answer", data={"csrf": csrf, "pos": pos, "value": "9"})
        assert bad.status_code == 400 and "answer" in bad.text
        for _ in range(2):  # the same form twice (a double click, a reload): one answer
            ok = client.post(f"/rate/{token}/answer", data={"csrf": csrf, "pos": pos, "value": value},
                             follow_redirects=False)
            assert ok.status_code == 303
        assert len(Store(folder / "ratings.sqlite").answers()) == 1
        img = re.search(r'src="(/rate/[^"]+/img/[^"]+)"', page.text).group(1)
        assert client.get(img).status_code == 200
        assert client.get(img.replace(token, other)).status_code == 404  # another rater's id for it is not this
        assert client.get(f"/rate/{token}/img/..%2F..%2Fstudy.json.png").status_code == 404
        assert "r01" in client.get("/study").text
        assert client.get("/").status_code == 200  # the operator's server (runs pages on)
    with TestClient(create_app(runs_copy, study=folder, runs_pages_on=False)) as client:  # what raters get
        assert client.get(f"/rate/{token}").status_code == 200
        for path in ("/", "/table", "/run?id=demo/ti", "/generate"):
            assert client.get(path).status_code == 404
    with pytest.raises(sqlite3.IntegrityError):  # the database itself refuses a second answer
        con = sqlite3.connect(folder / "ratings.sqlite")
        row = con.execute("SELECT rater, item, question FROM answers").fetchone()
        con.execute("INSERT INTO answers (rater, item, question, value, answered_at) VALUES (?, ?, ?, 1, 0)", row)


def test_thirty_concurrent_raters_lose_and_double_count_nothing(runs_copy, tmp_path):
    """30 simulated raters at once (3 of them careless) against one server: every acknowledged answer is in the
    database with its value, none twice, every task answered; screening excludes the careless raters only."""
    from textinv.ratings.report import analyse

    folder = tmp_path / "study"
    new_study([runs_copy], folder, raters=30, seed=5, images_per_prompt=1, minutes=1.5, references=_references())
    with Server(runs_copy, folder) as server:
        acks = simulate(folder, server.url, Simulation(seed=2, careless=3), concurrency=30)
    store = Store(folder / "ratings.sqlite")
    answers = store.answers()
    tasks = sum(p["tasks"] for p in store.progress())
    stored = {(a["rater"], a["item"], a["question"]): a["value"] for a in answers}
    assert len(acks) == len(answers) == len(stored) == tasks
    for ack in acks:
        expected = ack.value if isinstance(ack.value, int) else {"A": 1, "B": 2, "=": 0}[ack.value]
        assert stored[(ack.rater, ack.item, ack.question)] == expected
    report = analyse(Study.load(folder), n_boot=100)
    why = {r: s["reasons"] for r, s in report["screening"].items() if s["excluded"]}
    print(f"30 raters: screening excluded {why}")
    assert report["excluded"] == ["r01", "r02", "r03"], why
    print(f"30 raters: {len(acks)} answers acknowledged, {len(answers)} stored, {tasks} tasks")


def test_server_killed_mid_study_then_restarted_loses_nothing(runs_copy, tmp_path):
    """`python -m textinv app --study` SIGKILLed while simulated raters answer, then started again: the raters
    resume where they stopped and every answer acknowledged before the kill is in the database, once."""
    folder = tmp_path / "study"
    new_study([runs_copy], folder, raters=3, seed=8, images_per_prompt=1, minutes=2, references=_references())
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def start():
        return subprocess.Popen([sys.executable, "-m", "textinv", "app", "--study", str(folder), "--port", str(port)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    server = start()
    result: dict = {}
    sim = threading.Thread(target=lambda: result.update(acks=simulate(folder, f"http://127.0.0.1:{port}",
                                                                      Simulation(seed=4), concurrency=3,
                                                                      patience=180, pause=0.02)))
    store = Store(folder / "ratings.sqlite")
    try:
        sim.start()
        end = time.monotonic() + 300
        while time.monotonic() < end and (not (folder / "ratings.sqlite").exists() or len(store.answers()) < 10):
            time.sleep(0.2)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        before = {(a["rater"], a["item"], a["question"]): a["value"] for a in store.answers()}
        server = start()
        sim.join(300)
        assert not sim.is_alive()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
    answers = store.answers()
    after = {(a["rater"], a["item"], a["question"]): a["value"] for a in answers}
    tasks = sum(p["tasks"] for p in store.progress())
    assert 10 <= len(before) < tasks  # killed mid-study
    assert len(answers) == len(after) == tasks
    assert all(after[k] == v for k, v in before.items())
    acked = {(a.rater, a.item, a.question) for a in result["acks"]}
    assert acked <= set(after) and len(result["acks"]) == len(acked)  # every acknowledged answer kept, none twice
    print(f"kill test: {len(before)} answers before the kill, {len(answers)} after the restart, {tasks} tasks")


def test_export_import_merges_copies_of_a_study(runs_copy, tmp_path, capsys):
    """One study run on two machines (copies of the folder, different raters answering on each): export from one,
    import into the other; identical answers are skipped on a second import, a conflicting one is reported."""
    from textinv.ratings.cli import main

    a = tmp_path / "a"
    new_study([runs_copy], a, raters=3, seed=2, images_per_prompt=1, references=_references())
    b = tmp_path / "b"
    shutil.copytree(a, b)
    for folder, raters in ((a, {1}), (b, {2, 3})):
        store = Store(folder / "ratings.sqlite")
        for rid in raters:
            for pos, item, question in store.tasks(rid):
                store.answer(rid, item, question, 1 + (pos + rid) % 5 if "ab" not in question else pos % 3)
    assert main(["export", str(b), "--out", str(tmp_path / "b.csv")]) == 0
    assert main(["import", str(a), str(tmp_path / "b.csv")]) == 0
    store_a, store_b = Store(a / "ratings.sqlite"), Store(b / "ratings.sqlite")
    merged = {(x["rater"], x["item"], x["question"]): x["value"] for x in store_a.answers()}
    assert len(merged) == sum(p["tasks"] for p in store_a.progress())
    assert all(merged[(x["rater"], x["item"], x["question"])] == x["value"] for x in store_b.answers())
    again = store_a.import_csv((tmp_path / "b.csv").read_text(), "b.csv")
    assert again["added"] == 0 and again["identical"] == len(store_b.answers()) and not again["conflicts"]
    text = (tmp_path / "b.csv").read_text().splitlines()
    first = text[1].split(",")
    first[4] = str(5 if first[4] != "5" else 4)
    conflict = store_a.import_csv("\n".join([text[0], ",".join(first)]), "edited.csv")
    assert len(conflict["conflicts"]) == 1 and conflict["added"] == 0
    other = tmp_path / "other"
    new_study([runs_copy], other, raters=3, seed=2, images_per_prompt=1)
    from textinv.errors import UserError

    with pytest.raises(UserError, match="is not this study"):
        Store(other / "ratings.sqlite").import_csv((tmp_path / "b.csv").read_text(), "b.csv")


def test_table_and_web_page_show_the_mos_of_a_covering_study(rated, runs_copy, tmp_path):
    from fastapi.testclient import TestClient

    from textinv.app.server import create_app
    from textinv.ratings.report import analyse

    study, _, _ = rated
    report = analyse(study, n_boot=10)
    load_script("table").main([str(runs_copy), "--out", str(tmp_path / "t"), "--no-wandb", "--study", str(study.folder)])
    table = (tmp_path / "t" / "table.md").read_text()
    assert "| MOS |" in table.splitlines()[2]
    for cond in ("SD", "SD + TI"):
        v = report["acr"]["quality"]["conditions"][cond]
        cell = f"{v['mos']:.2f} [{v['t_low']:.2f}, {v['t_high']:.2f}] (n=5)"
        assert f"| {cond} |" in table and cell in table
    with TestClient(create_app(runs_copy, study=study.folder)) as client:
        page = client.get("/table").text
    assert page.count('data-metric="mos"') == 2 and "(n=5)" in page
    plain = tmp_path / "plain"
    load_script("table").main([str(runs_copy), "--out", str(plain), "--no-wandb"])
    assert "MOS" not in (plain / "table.md").read_text()  # no study, no column
