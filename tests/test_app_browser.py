"""The web page in a real browser: Playwright driving Debian's chromium (`apt-get install chromium`; no browser
download) against uvicorn on a free 127.0.0.1 port. Runs list -> Table 1 (the numbers of table.md) -> a run ->
generate on the toy world -> the image appears; every request goes to the server only. Screenshots of each
page land in the test's folder."""

from __future__ import annotations

import html
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import load_script

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium (apt-get install chromium): browser tests skipped", allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
pytestmark = pytest.mark.timeout(1800)  # builds the session's toy-world runs (app_runs) when run alone


@pytest.fixture
def server(app_runs, tmp_path):
    import uvicorn

    from textinv.app.server import create_app

    root = tmp_path / "outputs"
    shutil.copytree(app_runs, root, ignore=shutil.ignore_patterns("wandb"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(root), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not srv.started and time.monotonic() < end:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}", root
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def page(server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.requested_hosts = set()
            tab.on("request", lambda r: tab.requested_hosts.add(r.url.split("/")[2]))
            yield tab
        finally:
            browser.close()


def shot(page, folder: Path, name: str) -> None:
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_browse_compare_and_generate(server, page, tmp_path):
    base, root = server
    load_script("table").main([str(root), "--out", str(tmp_path / "table"), "--no-wandb"])
    table_md = (tmp_path / "table" / "table.md").read_text()
    shots = tmp_path / "screenshots"
    shots.mkdir()

    page.goto(base + "/")
    assert page.locator("#runs-table tbody tr").count() == 2
    shot(page, shots, "runs")
    page.fill('input[name="q"]', "ti")
    page.click("text=Apply")
    assert page.locator("#runs-table tbody tr").count() == 1
    page.goto(base + "/")
    page.check("#select-all")
    page.click("text=Table 1 and trade-off plot")
    page.wait_for_selector("#table1")
    shot(page, shots, "table")
    shown = {cells[0].strip(): [c.strip() for c in cells[1:6]] for cells in
             (r.locator("td").all_inner_texts() for r in page.locator("#table1 tbody tr").all())}
    expected = {cells[0]: cells[1:6] for cells in ([c.strip() for c in line.strip("|").split("|")]
                for line in table_md.split("## Runs")[0].splitlines() if line.startswith("| SD"))}
    assert shown == expected and set(expected) == {"SD", "SD + TI"}  # each row of table.md, cell by cell
    assert html.unescape(page.locator("#table-md").inner_html()) == table_md
    assert page.evaluate("document.querySelector('img.plot').naturalWidth") > 300

    page.goto(base + "/")
    page.click("text=demo/ti")
    page.wait_for_selector("#steps-grid")
    page.wait_for_load_state("load")  # every image, the curves PNG included (drawn on request)
    assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    shot(page, shots, "run")
    page.click("#generate-with")
    page.wait_for_selector("#generate-form")
    shot(page, shots, "generate")
    page.fill('input[name="steps"]', "abc")
    page.click("#generate-submit")
    assert "must be a whole number" in page.inner_text("#form-error")
    page.fill('input[name="steps"]', "3")
    page.fill('input[name="seed"]', "5")
    page.click("#generate-submit")
    page.locator('#job[data-status="done"]').wait_for(timeout=300_000)  # the page's CSP forbids eval'd waits
    page.wait_for_selector("#job-images img")
    assert page.evaluate("document.querySelector('#job-images img').naturalWidth") == 64
    assert page.inner_text("#job-steps") == "3 / 3"
    shot(page, shots, "job")
    page.click("text=Generate another")
    assert page.locator(".history img").count() == 1

    assert page.requested_hosts == {base.split("/")[2]}, page.requested_hosts  # nothing left the server
    assert {p.name for p in shots.iterdir()} == {f"{n}.png" for n in ("runs", "table", "run", "generate", "job")}
