"""Every run under the runs folder, read through textinv.runs.results, tolerantly: a folder being written by a
training process (metrics.json half-way, no run.json yet) or a malformed file becomes a row with a status and
a reason, never a broken page.

Status: finished (run.json, written last), running (a held or present `.textinv.lock`, no run.json),
interrupted (a checkpoint to resume from, no lock), failed (neither; the reason from train.log's last warning
or error line).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from textinv.errors import UserError
from textinv.runs.lock import LOCK_NAME
from textinv.runs.layout import FINISHED_MARKER, config_file, finished_marker, last_checkpoint, metrics_file
from textinv.runs.results import TABLE_METRICS, RunResult, find_run_dirs, load_run

GENERATIONS_DIR = "app-generations"  # the page's own outputs, below the runs folder
FINISHED, RUNNING, INTERRUPTED, FAILED = "finished", "running", "interrupted", "failed"
LOG_TAIL_BYTES = 64 * 1024


@dataclass
class RunEntry:
    id: str  # path below the runs folder (URLs)
    path: Path
    status: str
    reason: str = ""
    result: RunResult | None = None  # None: metrics.json unreadable (the reason says why)
    info: dict = field(default_factory=dict)  # run.json, where it is there and readable

    def field(self, key: str):
        return self.result.get(key) if self.result is not None else None

    @property
    def method(self) -> str:
        if self.result is None:
            return "?"
        if self.result.baseline:
            return "baseline (SD)"
        return str(self.result.header.get("method") or "textual_inversion").replace("_", " ")  # older runs: TI

    @property
    def final(self) -> dict:
        """The final full-protocol evaluation, or the latest of any protocol while a run is still going."""
        if self.result is None:
            return {}
        try:
            return self.result.final
        except UserError:
            return self.result.evaluations[-1]

    def metric(self, name: str) -> float | None:
        if self.result is None or not self.final:
            return None
        return self.result.value(TABLE_METRICS.get(name, name), self.final)

    @property
    def cost_s(self) -> float | None:
        spent = ((self.info.get("cost") or {}).get("spent") or {}) if isinstance(self.info, dict) else {}
        value = spent.get("wall_s")
        return float(value) if isinstance(value, (int, float)) else None

    def sort_key(self, key: str):
        value = {"concept": self.field("concept"), "method": self.method, "model": self.field("model"),
                 "seed": self.field("seed"), "lr": self.field("lr"), "steps": self.field("steps"),
                 "status": self.status, "cost": self.cost_s, "run": self.id}.get(key)
        if key in TABLE_METRICS:
            value = self.metric(key)
        return (value is None, value if isinstance(value, (int, float)) else str(value))


def read_json_tolerant(path: Path):
    """A JSON file, or None when missing or being written (half a file)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def log_reason(run_dir: Path) -> str:
    """The last warning or error line of the run's train.log (its tail only: logs can be long)."""
    path = run_dir / "train.log"
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if "][ERROR]" in line or "][WARNING]" in line or line.startswith("error:"):
            return line.split("] - ", 1)[-1].strip()[:300]
    return ""


def run_status(run_dir: Path) -> tuple[str, str, dict]:
    info = read_json_tolerant(finished_marker(run_dir))
    if isinstance(info, dict):
        notes = []
        if info.get("evaluation_failures"):
            notes.append(f"{len(info['evaluation_failures'])} evaluation failure(s)")
        if info.get("unchanged_vectors"):
            notes.append(str((info["unchanged_vectors"] or {}).get("why") or "unchanged vectors"))
        return FINISHED, "; ".join(notes), info
    if (finished_marker(run_dir)).exists():
        return RUNNING, f"{FINISHED_MARKER} is being written", {}
    if (run_dir / LOCK_NAME).exists():
        return RUNNING, "", {}
    reason = log_reason(run_dir)
    if last_checkpoint(run_dir).is_file():
        return INTERRUPTED, reason or "stopped before the last step; re-run the same command to resume", {}
    return FAILED, reason or "no run.json and no checkpoint", {}


_PARSED: dict[Path, tuple[tuple, RunResult]] = {}  # run folder -> (its files' stamps, the parsed run)


def _stamp(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def cached_run(run_dir: Path) -> RunResult:
    """load_run, parsed again only when metrics.json or config.yaml changed (a page over 100 runs would otherwise
    parse 100 YAML and JSON files per request)."""
    key = (_stamp(metrics_file(run_dir)), _stamp(config_file(run_dir)))
    hit = _PARSED.get(run_dir.resolve())
    if hit is not None and hit[0] == key:
        return hit[1]
    result = load_run(run_dir)
    _PARSED[run_dir.resolve()] = (key, result)
    return result


def load_entry(root: Path, run_dir: Path) -> RunEntry:
    status, reason, info = run_status(run_dir)
    entry = RunEntry(run_dir.resolve().relative_to(root.resolve()).as_posix() or ".", run_dir, status, reason,
                     info=info)
    try:
        entry.result = cached_run(run_dir)
    except UserError as err:  # half-written or malformed metrics.json: the row says so
        entry.reason = "; ".join(filter(None, [entry.reason, str(err)]))
    except OSError as err:
        entry.reason = "; ".join(filter(None, [entry.reason, f"unreadable: {err.strerror}"]))
    return entry


def scan(root: Path) -> list[RunEntry]:
    """Every run below `root` (a folder holding eval/metrics.json), its own generated images left out."""
    root = Path(root)
    if not root.is_dir():
        return []
    try:
        dirs = find_run_dirs([root])
    except UserError:  # no run yet
        return []
    top, skip = root.resolve(), (root / GENERATIONS_DIR).resolve()
    inside = [d for d in dirs if (d == top or top in d.parents) and skip not in d.parents]  # symlinks out: left out
    return [load_entry(root, d) for d in inside if os.access(metrics_file(d), os.R_OK)]


def find_entry(root: Path, run_id: str) -> RunEntry | None:
    """One run by its id (confined to the runs folder by the caller)."""
    from textinv.app.safety import confined_path

    run_dir = confined_path(root, run_id)
    if not metrics_file(run_dir).is_file():
        return None
    return load_entry(root, run_dir)
