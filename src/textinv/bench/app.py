"""python -m textinv.bench.app [--from RUNS] [--runs 100]: the web page's speed targets, measured (issue 19).

Copies the runs of RUNS (default: the newest `make demo` folder under outputs/demo/) until the folder holds
`--runs` runs (hard links: no disk), then times each page through the app's own test client (median and spread of
`--repeats`), and a toy-world generation job from the page's form: the first (loads the model) and a warm one."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from textinv.cli import Parser


def fill(source: Path, root: Path, count: int) -> list[str]:
    runs = sorted(p.parent.relative_to(source) for p in source.rglob("run.json"))
    if not runs:
        raise SystemExit(f"error: no finished runs under {source}; run `make demo` first or pass --from RUNS")
    ids = []
    for i in range(count):
        run = runs[i % len(runs)]
        target = root / f"copy{i:03d}" / run
        shutil.copytree(source / run, target, copy_function=os.link)
        ids.append(str(target.relative_to(root)))
    return ids


def timed(client, url: str, repeats: int) -> dict:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        answer = client.get(url)
        seconds.append(time.perf_counter() - start)
        if answer.status_code != 200:
            raise SystemExit(f"error: GET {url} answered {answer.status_code}: {answer.text[:200]}")
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds)}


def generation_seconds(client, run_id: str, word: str) -> float:
    from textinv.app.safety import CSRF_COOKIE

    client.get("/generate")  # hands out the CSRF cookie the form must echo
    form = {"csrf": client.cookies[CSRF_COOKIE], "words": run_id, "prompt": f"a photo of {word}", "seed": "0",
            "steps": "20", "num_images": "1", "guidance_scale": "5"}
    start = time.perf_counter()
    job = client.post("/generate", data=form, follow_redirects=False).headers["location"].split("id=")[1]
    while True:
        state = client.get(f"/job/status?id={job}", headers={"accept": "application/json"}).json()
        if state["status"] not in ("queued", "running"):
            break
        time.sleep(0.05)
    if state["status"] != "done":
        raise SystemExit(f"error: the generation job ended {state['status']}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = Parser(prog="python -m textinv.bench.app", description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source", type=Path, help="a runs folder (default: the newest outputs/demo/*)")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    source = args.source or max(Path("outputs/demo").glob("*"), default=None, key=lambda d: d.stat().st_mtime)
    if source is None:
        raise SystemExit("error: no outputs/demo/* folder; run `make demo` first or pass --from RUNS")
    from fastapi.testclient import TestClient

    from textinv.app.server import create_app
    from textinv.runs.results import load_run

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "outputs"
        ids = fill(Path(source), root, args.runs)
        trained = next(i for i in ids if not load_run(root / i).baseline)
        word = load_run(root / trained).word
        with TestClient(create_app(root)) as client:
            pages = {"runs list": "/", "table (all runs)": "/table?" + "&".join(f"run={i}" for i in ids),
                     "one run": f"/run?id={trained}", "generate form": "/generate"}
            print(f"pages over {len(ids)} runs (copies of {source}), {args.repeats} requests each:")
            for label, url in pages.items():
                r = timed(client, url, args.repeats)
                print(f"  {label:18s} median {r['median_s']:.3f} s (min {r['min_s']:.3f}, max {r['max_s']:.3f}); "
                      f"target < 1 s: {'met' if r['median_s'] < 1 else 'NOT met'}")
            first = generation_seconds(client, trained, word)
            warm = generation_seconds(client, trained, word)
            print(f"toy-world image from the page (DDIM 20, 64 px): first {first:.1f} s (loads the model), "
                  f"then {warm:.1f} s; target < 10 s: {'met' if warm < 10 else 'NOT met'}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load and load > 0.5 * (os.cpu_count() or 1):
        print(f"note: load average {load:.1f} on {os.cpu_count()} cores: other jobs share this machine", file=sys.stderr)


if __name__ == "__main__":
    main()
