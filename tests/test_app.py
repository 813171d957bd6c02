"""The web page's server logic through FastAPI's test client (tests/test_app_browser.py drives a real browser):
the runs list and its statuses, Table 1 equal to experiments/table.py's, the run page, files confined to the
runs folder, the CSRF check, bad form values, and generation jobs on the toy world (progress, cancel)."""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import time

import pytest
from PIL import Image

from conftest import load_script

pytest.importorskip("fastapi")
pytestmark = pytest.mark.timeout(1800)  # the session's toy-world runs (app_runs) are built by the first test
from fastapi.testclient import TestClient  # noqa: E402

from textinv.app.safety import CSRF_COOKIE  # noqa: E402
from textinv.app.server import create_app  # noqa: E402
from textinv.errors import UserError  # noqa: E402
from textinv.runs.report import fmt  # noqa: E402
from textinv.runs.results import load_run  # noqa: E402


@pytest.fixture
def runs(app_runs, tmp_path):
    """A copy of the runs folder each test may change."""
    root = tmp_path / "outputs"
    shutil.copytree(app_runs, root, ignore=shutil.ignore_patterns("wandb"))
    return root


@pytest.fixture
def client(runs):
    with TestClient(create_app(runs)) as c:
        yield c


def token(client) -> str:
    client.get("/generate")
    return client.cookies[CSRF_COOKIE]


def rows(page: str) -> dict[str, str]:
    """Run id -> its row's HTML, from the runs list."""
    return dict(re.findall(r'<tr data-run="([^"]+)"[^>]*>(.*?)</tr>', page, re.S))


def test_index_lists_runs_with_status_metrics_filter_and_sort(client, runs):
    page = client.get("/")
    assert page.status_code == 200
    found = rows(page.text)
    assert set(found) == {"demo/baseline", "demo/ti"}
    for run_id, row in found.items():
        run = load_run(runs / run_id)
        assert "finished" in row
        assert f'data-metric="reconstruction">{fmt(run.value("reconstruction"))}<' in row
        assert f'data-metric="editability">{fmt(run.value("editability"))}<' in row
    assert "baseline (SD)" in found["demo/baseline"] and "textual inversion" in found["demo/ti"]
    assert list(rows(client.get("/?q=baseline").text)) == ["demo/baseline"]
    ascending = list(rows(client.get("/?sort=reconstruction").text))
    assert list(rows(client.get("/?sort=reconstruction&desc=true").text)) == ascending[::-1]
    bad = client.get("/?sort=nope")
    assert bad.status_code == 400 and "sort=&#39;nope&#39; is not a column" in bad.text


def test_statuses_and_runs_being_written(client, runs):
    ti = runs / "demo" / "ti"
    for name in ("running", "interrupted", "failed", "half"):
        shutil.copytree(ti, runs / name)
        (runs / name / "run.json").unlink()
    (runs / "running" / ".textinv.lock").touch()
    shutil.rmtree(runs / "failed" / "checkpoints")
    (runs / "failed" / "train.log").write_text("[2026-01-01 00:00:00,000][textinv][ERROR] - out of memory\n")
    text = (runs / "half" / "eval" / "metrics.json").read_text()
    (runs / "half" / "eval" / "metrics.json").write_text(text[: len(text) // 2])  # a writer half-way
    page = client.get("/")
    assert page.status_code == 200
    found = rows(page.text)
    assert 'class="status">running' in found["running"]
    assert 'class="status">interrupted' in found["interrupted"] and "resume" in found["interrupted"]
    assert 'class="status">failed' in found["failed"] and "out of memory" in found["failed"]
    assert "is not valid JSON" in found["half"]
    assert list(rows(client.get("/?status=running").text)) == ["running"]
    assert client.get("/run?id=half").status_code == 200


def test_table_view_shows_what_table_py_prints(client, runs, tmp_path):
    load_script("table").main([str(runs), "--out", str(tmp_path / "table"), "--no-wandb"])
    expected = (tmp_path / "table" / "table.md").read_text()
    page = client.get("/table")
    assert page.status_code == 200
    shown = html.unescape(re.search(r'<pre id="table-md">(.*?)</pre>', page.text, re.S).group(1))
    assert shown == expected
    for line in expected.split("## Runs")[0].splitlines():
        if line.startswith("| SD"):  # each row's numbers, also in the HTML table
            for cell in line.split("|")[2:7]:
                assert f">{cell.strip()}</td>" in page.text
    png = client.get("/plot/tradeoff.png")
    assert png.headers["content-type"] == "image/png" and Image.open(io.BytesIO(png.content)).size[0] > 300
    one = client.get("/table?run=demo/ti")
    assert one.status_code == 200 and "demo/baseline" not in one.text
    assert client.get("/table?run=../elsewhere").status_code == 404
    sweep = client.get("/sweep?run=demo/baseline&run=demo/ti&by=baseline")
    assert sweep.status_code == 200 and "Sweep over baseline" in sweep.text
    assert client.get("/plot/sweep.png?by=baseline").headers["content-type"] == "image/png"


def test_run_page_images_curves_and_files(client, runs):
    page = client.get("/run?id=demo/ti")
    assert page.status_code == 200
    assert "step 2" in page.text and "/files/demo/ti/eval/images/step000002/p00-000.png" in page.text
    assert "/files/demo/baseline/eval/images/baseline/p00-000.png" in page.text  # the SD row beside it
    assert page.text.count('alt="training image') == 5  # data/concepts/toy_heart, inline thumbnails
    assert "embedding:toy-heart" in page.text and "/files/demo/ti/toy-heart.pt?download=true" in page.text
    light = client.get("/run?id=demo/ti&protocol=light")
    assert "step 0" in light.text and "step000000-light/p00-000.png" in light.text
    curves = client.get("/run/curves.png?id=demo/ti")
    assert curves.headers["content-type"] == "image/png"
    download = client.get("/files/demo/ti/toy-heart.pt?download=true")
    assert download.status_code == 200 and download.content == (runs / "demo/ti/toy-heart.pt").read_bytes()
    assert "attachment" in download.headers["content-disposition"]
    image = client.get("/files/demo/ti/eval/images/step000002/p00-000.png")
    assert Image.open(io.BytesIO(image.content)).size == (64, 64)
    assert client.get("/run?id=nope").status_code == 404
    assert client.get("/run?id=demo/ti&protocol=x").status_code == 400


def test_files_only_from_inside_the_runs_folder(client, runs, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the page")
    (runs / "link").symlink_to(secret)
    (runs / "linkdir").symlink_to(tmp_path)
    for url in ("/files/..%2Fsecret.txt", "/files/demo/..%2F..%2Fsecret.txt", "/files/link", "/files/linkdir/secret.txt",
                f"/files/{secret}", "/files//etc/passwd", "/files/demo/ti/nothing.png", "/run?id=..%2F..",
                "/run?id=/etc"):
        answer = client.get(url)
        assert answer.status_code == 404, url
        assert "not for the page" not in answer.text and "Traceback" not in answer.text
    assert client.get("/files/demo/ti/run.json").json()["finished"] is True


def test_state_changing_requests_need_the_csrf_token(client):
    form = {"prompt": "a photo of <toy-heart>", "words": "demo/ti", "steps": "1"}
    assert client.post("/generate", data=form).status_code == 403  # no cookie yet, no token
    good = token(client)
    assert client.post("/generate", data={**form, "csrf": "x" * len(good)}).status_code == 403
    assert client.post("/generate", data=form).status_code == 403  # cookie but no token sent back
    cross = client.post("/generate", data={**form, "csrf": good}, headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    assert client.post("/job/cancel?id=nope").status_code == 403
    assert client.app.state.jobs.jobs == {}  # nothing was queued


@pytest.mark.parametrize("field,value,message", [
    ("steps", "abc", "steps=&#39;abc&#39; must be a whole number"),
    ("steps", "0", "steps=0 must be from 1 to 200"),
    ("guidance_scale", "nan", "guidance_scale=nan must be from 0 to 30"),
    ("seed", "-1", "seed=-1 must be from 0"),
    ("num_images", "99", "num_images=99 must be from 1 to 8"),
    ("prompt", "", "write a prompt"),
    ("scheduler", "euler", "scheduler=&#39;euler&#39; is unknown"),
    ("words", "demo/baseline", "no finished run with a learned word"),
    ("model", "{}", "choose a model from the list"),
])
def test_bad_form_values_give_a_message_on_the_form(client, field, value, message):
    csrf = token(client)
    form = {"csrf": csrf, "prompt": "a photo of <toy-heart>", "words": "demo/ti", "steps": "2", field: value}
    answer = client.post("/generate", data=form)
    assert answer.status_code == 400
    assert message in answer.text and 'id="form-error"' in answer.text and "Traceback" not in answer.text
    assert 'id="generate-form"' in answer.text  # the form again, with what was typed
    if field in ("steps", "guidance_scale", "seed", "num_images"):
        assert f'name="{field}" value="{value}"' in answer.text
    assert client.app.state.jobs.jobs == {}


def wait(client, job_id: str, until, timeout: float = 600) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = client.get(f"/job/status?id={job_id}").json()
        if until(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"job {job_id}: {state}")


def test_generation_on_the_toy_world_with_progress_and_cancel(client, runs):
    csrf = token(client)
    form = {"csrf": csrf, "words": "demo/ti", "prompt": "a photo of <toy-heart>", "seed": "7", "steps": "3",
            "num_images": "2", "guidance_scale": "4"}
    answer = client.post("/generate", data=form, follow_redirects=False)
    assert answer.status_code == 303
    job_id = answer.headers["location"].split("id=")[1]
    seen = []
    state = wait(client, job_id, lambda s: seen.append(s["done"]) or s["status"] not in ("queued", "running"))
    assert state["status"] == "done", state
    assert state["done"] == state["total"] == 3 and seen == sorted(seen)
    assert len(state["images"]) == 2
    for src in state["images"]:
        assert Image.open(io.BytesIO(client.get(src).content)).size == (64, 64)
    folder = runs / state["folder"]
    record = json.loads((folder / "settings.json").read_text())
    assert record["status"] == "done" and record["settings"]["seed"] == 7 and record["settings"]["steps"] == 3
    assert [i["seed"] for i in record["images"]] == [7, 8]
    assert record["settings"]["embeddings"] == [str((runs / "demo/ti/diffusers/learned_embeds.safetensors").resolve())]
    assert "a photo of &lt;toy-heart&gt;" in client.get("/generate").text  # in the history

    # the same seed again: a new folder beside the first, the first untouched; then a long job, cancelled
    before = {p: p.read_bytes() for p in folder.iterdir()}
    again = client.post("/generate", data=form, follow_redirects=False).headers["location"].split("id=")[1]
    long = client.post("/generate", data={**form, "steps": "200"}, follow_redirects=False)
    long_id = long.headers["location"].split("id=")[1]
    assert wait(client, again, lambda s: s["status"] == "done")["folder"] != state["folder"]
    assert {p: p.read_bytes() for p in folder.iterdir()} == before
    wait(client, long_id, lambda s: s["done"] > 0)
    cancelled = client.post(f"/job/cancel?id={long_id}", headers={"x-csrf-token": csrf, "accept": "application/json"})
    assert cancelled.status_code == 200
    end = wait(client, long_id, lambda s: s["status"] not in ("queued", "running"))
    assert end["status"] == "cancelled" and 0 < end["done"] < end["total"] and end["images"] == []
    assert json.loads((runs / end["folder"] / "settings.json").read_text())["status"] == "cancelled"


def test_a_run_folder_cannot_choose_code_for_the_server_to_run(tmp_path):
    from textinv.app.generation import model_source

    marker = tmp_path / "ran"
    with pytest.raises(UserError, match="is not a model this page loads"):
        model_source({"_target_": "pathlib.Path.touch", "self": str(marker)})
    assert not marker.exists()
