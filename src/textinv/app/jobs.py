"""The generation queue: jobs of one model run one at a time, in order (one worker thread per model); each job
reports its progress in UNet calls and can be cancelled, queued or running. Outputs go to a new folder
`<runs>/app-generations/<time>-<id>/` (PNG files and settings.json), never over an earlier one."""

from __future__ import annotations

import itertools
import json
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from textinv.app.generation import Cancelled, Request, generate_images
from textinv.app.runs_index import GENERATIONS_DIR
from textinv.errors import UserError
from textinv.utils.atomic import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
SETTINGS_FILE = "settings.json"


@dataclass
class Job:
    id: str
    request: Request
    out_dir: Path
    seq: int = 0  # submission order
    status: str = QUEUED
    done: int = 0  # UNet calls so far
    message: str = ""
    images: list[str] = field(default_factory=list)  # file names in out_dir
    started: float | None = None
    seconds: float | None = None
    cancel_flag: threading.Event = field(default_factory=threading.Event)

    @property
    def total(self) -> int:
        return self.request.unet_calls

    def record(self) -> dict:
        """settings.json: what made the images, and how the job ended."""
        return {"id": self.id, "status": self.status, "message": self.message, "seconds": self.seconds,
                "settings": self.request.settings(),
                "images": [{"file": f, "seed": self.request.seed + k} for k, f in enumerate(self.images)]}


class JobQueue:
    def __init__(self, root: Path, runner: Callable = generate_images):
        self.root = Path(root)
        self.runner = runner
        self.jobs: dict[str, Job] = {}
        self._queues: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._seq = itertools.count()

    def new_folder(self, job_id: str) -> Path:
        """A fresh folder per job: created here with exist_ok=False, so nothing earlier is ever written over."""
        base = self.root / GENERATIONS_DIR
        base.mkdir(parents=True, exist_ok=True)
        folder = base / f"{datetime.now():%Y%m%d-%H%M%S}-{job_id}"
        folder.mkdir()
        return folder

    def submit(self, request: Request) -> Job:
        job_id = secrets.token_hex(4)
        job = Job(job_id, request, self.new_folder(job_id), seq=next(self._seq))
        self._write(job)
        with self._lock:
            self.jobs[job_id] = job
            key = request.model_key
            if key not in self._queues:
                self._queues[key] = queue.Queue()
                threading.Thread(target=self._worker, args=(self._queues[key],), daemon=True,
                                 name=f"textinv-app-generate-{len(self._queues)}").start()
            self._queues[key].put(job)
        return job

    def cancel(self, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        if job is not None and job.status in (QUEUED, RUNNING):
            job.cancel_flag.set()
            if job.status == QUEUED:
                job.status, job.message = CANCELLED, "cancelled before it started"
                self._write(job)
        return job

    def position(self, job: Job) -> int:
        """Jobs of the same model ahead of this queued one."""
        key = job.request.model_key
        return sum(1 for j in self.jobs.values() if j.request.model_key == key and j.status in (QUEUED, RUNNING)
                   and j.seq < job.seq)

    def _worker(self, jobs: queue.Queue) -> None:
        while True:
            job = jobs.get()
            if job.cancel_flag.is_set():
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        job.status, job.started = RUNNING, time.perf_counter()

        def step() -> None:
            if job.cancel_flag.is_set():
                raise Cancelled()
            job.done += 1

        try:
            samples = self.runner(job.request, step)
            for s in samples:
                name = f"{s.index:04d}.png"
                atomic_write(job.out_dir / name, lambda tmp, img=s.image: img.save(tmp, format="PNG"))
                job.images.append(name)
            status, message = DONE, ""
        except Cancelled:
            status, message = CANCELLED, f"cancelled after {job.done} of {job.total} steps"
        except UserError as err:
            status, message = FAILED, str(err)
        except Exception as err:  # the page shows one line; the log keeps the traceback
            log.exception("generation job %s failed", job.id)
            status, message = FAILED, f"{type(err).__name__}: {err}"
        job.seconds = round(time.perf_counter() - job.started, 2)
        job.message = message
        self._write(job, status)  # settings.json first: whoever sees the final status finds it on disk
        job.status = status

    def _write(self, job: Job, status: str | None = None) -> None:
        record = {**job.record(), **({"status": status} if status else {})}
        atomic_write_text(job.out_dir / SETTINGS_FILE, json.dumps(record, indent=2))


def past_generations(root: Path, limit: int = 20) -> list[dict]:
    """The newest earlier jobs' settings.json (the page's history; half-written ones skipped)."""
    from textinv.app.runs_index import read_json_tolerant

    base = Path(root) / GENERATIONS_DIR
    folders = sorted((d for d in base.iterdir() if d.is_dir()), reverse=True)[:limit] if base.is_dir() else []
    out = []
    for folder in folders:
        record = read_json_tolerant(folder / SETTINGS_FILE)
        if isinstance(record, dict):
            out.append({**record, "folder": f"{GENERATIONS_DIR}/{folder.name}"})
    return out
