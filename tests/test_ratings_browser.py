"""A rating session in a real browser: Playwright driving Debian's chromium against uvicorn on 127.0.0.1 with a
short study of the demo's runs. The rater answers every task with the keyboard only (1-5 for ratings, arrows
for A/B), closes the tab half way and comes back through the invite link where they stopped; every answer
reaches the database once, and no request leaves the server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium (apt-get install chromium): browser tests skipped", allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
pytestmark = pytest.mark.timeout(1800)  # builds the session's toy-world runs (app_runs) when run alone

from test_ratings import Server, _references  # noqa: E402

from textinv.ratings.store import Store  # noqa: E402
from textinv.ratings.study import new_study, read_invites  # noqa: E402


def test_rate_a_whole_session_with_the_keyboard(app_runs, tmp_path):
    runs = tmp_path / "outputs"
    shutil.copytree(app_runs, runs, ignore=shutil.ignore_patterns("wandb"))
    folder = tmp_path / "study"
    new_study([runs], folder, raters=1, seed=4, images_per_prompt=1, minutes=1.5, references=_references())
    (_, token), = read_invites(folder)
    store = Store(folder / "ratings.sqlite")
    total = len(store.tasks(1))
    with Server(runs, folder) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            hosts = set()
            page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
            page.goto(f"{server.url}/rate/{token}")
            pressed = 0
            while page.get_attribute("#rate", "data-finished") == "false":
                page.wait_for_load_state("load")
                assert page.evaluate("[...document.querySelectorAll('img.item')].every(i => i.naturalWidth > 0)")
                assert page.inner_text("#progress-text") == f"{pressed} / {total}"
                kind = page.get_attribute("#rate", "data-kind")
                before = page.url, page.inner_text("#progress-text")
                with page.expect_navigation():
                    page.keyboard.press(str(1 + pressed % 5) if kind == "acr" else
                                        ("ArrowLeft", "ArrowRight", "ArrowDown")[pressed % 3])
                pressed += 1
                assert len(store.answers()) == pressed  # written before the next task shows
                if pressed == total // 2:  # close the tab, come back later through the invite
                    page.close()
                    page = browser.new_page()
                    page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
                    page.goto(f"{server.url}/rate/{token}")
                    assert page.inner_text("#progress-text") == f"{pressed} / {total}"
            assert page.is_visible("#thanks") and pressed == total
            page.screenshot(path=str(tmp_path / "done.png"))
        finally:
            browser.close()
    answers = store.answers()
    assert len(answers) == total == len({(a["item"], a["question"]) for a in answers})
    acr = [a["value"] for a in answers if not a["question"].startswith("ab_")]
    assert set(acr) <= {1, 2, 3, 4, 5} and len(set(acr)) > 1
    assert hosts == {server.url.split("/")[2]}, hosts
