"""A CSV logger that survives resumption: `metrics.csv` is kept, not deleted, and written atomically.

Lightning's CSVLogger deletes an existing metrics.csv when it starts, so a resumed run would lose
its history. Here earlier rows are kept, rows past the resume point (steps that will be redone) are
dropped, and every save rewrites the file through a temporary name.
"""

from __future__ import annotations

import csv
import io
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from textinv.utils.atomic import atomic_write_text


class _ResumableWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.rows: list[dict] = []
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="", encoding="utf-8") as f:
                self.rows = list(csv.DictReader(f))
        self._trimmed = not self.rows

    def _check_log_dir_exists(self) -> None:
        """The parent deletes an existing metrics.csv here; a resumed run keeps it."""

    def log_metrics(self, metrics_dict, step=None) -> None:
        if not self._trimmed and step is not None:  # steps >= the first new one are being redone
            self.rows = [r for r in self.rows if int(float(r.get("step") or 0)) < step]
            self._trimmed = True
        super().log_metrics(metrics_dict, step)

    def save(self) -> None:
        if not self.metrics:
            return
        self.rows += [{k: v for k, v in m.items()} for m in self.metrics]
        self.metrics = []
        keys = sorted(set().union(*self.rows))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.metrics_file_path, buf.getvalue())


class ResumableCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> _ResumableWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir)
        return self._experiment
