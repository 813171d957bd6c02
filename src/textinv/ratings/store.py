"""The answers of a study in SQLite (WAL journal, synchronous FULL): one answer per (rater, item, question),
enforced by a UNIQUE constraint, committed before the server shows the next item, so killing the server at any
moment loses nothing that a rater saw acknowledged. CSV export/import merges copies of a study run on several
machines (identical answers are skipped, a conflicting one is kept as it was and reported)."""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from textinv.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (id INTEGER PRIMARY KEY, label TEXT UNIQUE NOT NULL, token_hash TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (rater INTEGER NOT NULL REFERENCES raters(id), pos INTEGER NOT NULL,
    item TEXT NOT NULL, question TEXT NOT NULL, PRIMARY KEY (rater, pos), UNIQUE (rater, item, question));
CREATE TABLE IF NOT EXISTS answers (id INTEGER PRIMARY KEY, rater INTEGER NOT NULL REFERENCES raters(id),
    item TEXT NOT NULL, question TEXT NOT NULL, value INTEGER NOT NULL, shown_left TEXT, answered_at REAL NOT NULL,
    origin TEXT NOT NULL DEFAULT 'server', UNIQUE (rater, item, question));
"""
# A/B answers as stored: the pair's first condition (A), its second (B), or "cannot determine / both equally".
AB_CODES = {"A": 1, "B": 2, "=": 0}
AB_NAMES = {v: k for k, v in AB_CODES.items()}
CSV_FIELDS = ["study_id", "rater", "item", "question", "value", "shown_left", "answered_at", "origin"]


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def connect(self):
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA busy_timeout=60000")
            yield con
        finally:
            con.close()

    def create(self, study_id: str, raters: list[tuple[str, str]], sessions: list[list[tuple[str, str]]]) -> None:
        with self.connect() as con:
            con.executescript(SCHEMA)
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO meta VALUES ('study_id', ?)", (study_id,))
            for rid, ((label, token_hash), tasks) in enumerate(zip(raters, sessions), start=1):
                con.execute("INSERT INTO raters VALUES (?, ?, ?)", (rid, label, token_hash))
                con.executemany("INSERT INTO tasks VALUES (?, ?, ?, ?)",
                                [(rid, pos, item, q) for pos, (item, q) in enumerate(tasks)])
            con.execute("COMMIT")

    def study_id(self) -> str:
        with self.connect() as con:
            return con.execute("SELECT value FROM meta WHERE key='study_id'").fetchone()[0]

    def rater(self, token_hash: str) -> tuple[int, str] | None:
        with self.connect() as con:
            row = con.execute("SELECT id, label FROM raters WHERE token_hash=?", (token_hash,)).fetchone()
        return None if row is None else (row[0], row[1])

    def raters(self) -> list[tuple[int, str]]:
        with self.connect() as con:
            return con.execute("SELECT id, label FROM raters ORDER BY id").fetchall()

    def tasks(self, rater: int) -> list[tuple[int, str, str]]:
        with self.connect() as con:
            return con.execute("SELECT pos, item, question FROM tasks WHERE rater=? ORDER BY pos", (rater,)).fetchall()

    def answered(self, rater: int) -> set[tuple[str, str]]:
        with self.connect() as con:
            return set(con.execute("SELECT item, question FROM answers WHERE rater=?", (rater,)).fetchall())

    def answer(self, rater: int, item: str, question: str, value: int, shown_left: str | None = None,
               origin: str = "server") -> bool:
        """Record an answer (committed and synced on return); False when this rater already answered it (the
        first answer stays: a resubmitted form cannot count twice)."""
        with self.connect() as con:
            cur = con.execute("INSERT INTO answers (rater, item, question, value, shown_left, answered_at, origin) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rater, item, question) DO NOTHING",
                              (rater, item, question, int(value), shown_left, time.time(), origin))
            return cur.rowcount == 1

    def answers(self) -> list[dict]:
        with self.connect() as con:
            con.row_factory = sqlite3.Row
            rows = con.execute("SELECT r.label AS rater, a.item, a.question, a.value, a.shown_left, a.answered_at, "
                               "a.origin FROM answers a JOIN raters r ON r.id = a.rater ORDER BY a.id").fetchall()
        return [dict(r) for r in rows]

    def progress(self) -> list[dict]:
        with self.connect() as con:
            rows = con.execute("SELECT r.label, (SELECT COUNT(*) FROM tasks t WHERE t.rater=r.id), "
                               "(SELECT COUNT(*) FROM answers a WHERE a.rater=r.id) FROM raters r ORDER BY r.id").fetchall()
        return [{"rater": label, "tasks": n, "answered": a} for label, n, a in rows]

    # --- CSV ----------------------------------------------------------------------------------------------------
    def export_csv(self) -> str:
        study_id = self.study_id()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for a in self.answers():
            writer.writerow({"study_id": study_id, **a, "answered_at": repr(a["answered_at"]),
                             "shown_left": a["shown_left"] or ""})
        return buf.getvalue()

    def import_csv(self, text: str, source: str) -> dict:
        """Merge answers exported from another copy of this study; returns counts (added, identical, conflicts)."""
        study_id = self.study_id()
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or set(CSV_FIELDS) - set(reader.fieldnames):
            raise UserError(f"{source} is not an answers export (columns {', '.join(CSV_FIELDS)})")
        added = identical = 0
        conflicts = []
        with self.connect() as con:
            labels = dict(con.execute("SELECT label, id FROM raters").fetchall())
            known = set(con.execute("SELECT rater, item, question FROM tasks").fetchall())
            con.execute("BEGIN IMMEDIATE")
            try:
                for n, row in enumerate(reader, start=2):
                    if row["study_id"] != study_id:
                        raise UserError(f"{source} line {n}: study {row['study_id']!r} is not this study ({study_id})")
                    rid = labels.get(row["rater"])
                    try:
                        value, when = int(row["value"]), float(row["answered_at"])
                    except ValueError:
                        raise UserError(f"{source} line {n}: value {row['value']!r} / answered_at "
                                        f"{row['answered_at']!r} are not numbers") from None
                    if rid is None or (rid, row["item"], row["question"]) not in known:
                        raise UserError(f"{source} line {n}: rater {row['rater']} has no task {row['item']}/"
                                        f"{row['question']} in this study")
                    old = con.execute("SELECT value FROM answers WHERE rater=? AND item=? AND question=?",
                                      (rid, row["item"], row["question"])).fetchone()
                    if old is None:
                        con.execute("INSERT INTO answers (rater, item, question, value, shown_left, answered_at, origin) "
                                    "VALUES (?, ?, ?, ?, ?, ?, ?)", (rid, row["item"], row["question"], value,
                                                                     row["shown_left"] or None, when,
                                                                     row["origin"] or source))
                        added += 1
                    elif old[0] == value:
                        identical += 1
                    else:
                        conflicts.append(f"{row['rater']} {row['item']}/{row['question']}: kept {old[0]}, "
                                         f"{source} says {value}")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return {"added": added, "identical": identical, "conflicts": conflicts}
