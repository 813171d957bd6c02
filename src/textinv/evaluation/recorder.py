"""One evaluation, scored and recorded: generate, score, save the images, add the record to
eval/metrics.json, log it. The training callback (textinv.evaluation.callback) and the baseline job
(textinv.training.job) both record through `EvaluationRecorder`, so their files agree by construction."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from textinv.evaluation.evaluator import Evaluator, image_grid, save_images, write_metrics
from textinv.evaluation.schedule import FULL, Protocol, protocol_of
from textinv.runs.layout import image_folder, metrics_file

log = logging.getLogger(__name__)

SCALARS = ("reconstruction", "editability", "clip_i_all", "clip_t_all", "dino", "fid", "kid_mean", "is_mean", "is_std")


def log_evaluation(loggers, record: dict, images, step: int, tag: str) -> None:
    """Scalars to every logger (metrics.csv, W&B); an image grid and a W&B Table where W&B is on.
    Light-protocol scalars go under eval_light/ so a curve never mixes the two protocols."""
    protocol = protocol_of(record)
    prefix = "eval" if protocol == FULL else f"eval_{protocol}"
    tag = tag if prefix == "eval" else f"{tag}_{protocol}"
    scalars = {f"{prefix}/{k}": record[k] for k in SCALARS if isinstance(record.get(k), (int, float))}
    for lg in loggers:
        lg.log_metrics(scalars, step=step)
        if type(lg).__name__ == "WandbLogger":
            import wandb

            lg.log_image(key=f"{prefix}/{tag}_grid", images=[image_grid(images)], step=step)
            rows = [[e["prompt"], wandb.Image(row[0]), e["clip_i"], e["clip_t"]]
                    for e, row in zip(record["per_prompt"], images)]
            lg.log_table(key=f"{prefix}/{tag}_table", columns=["prompt", "image", "clip_i", "clip_t"], data=rows,
                         step=step)
        lg.save()


class EvaluationRecorder:
    """The evaluations of one run folder and its eval/metrics.json (header first, then the records)."""

    def __init__(self, evaluator: Evaluator | None, run_dir: str | Path, header: dict):
        self.evaluator, self.run_dir, self.header = evaluator, Path(run_dir), header
        self.evaluations: list[dict] = []

    @property
    def metrics_path(self) -> Path:
        return metrics_file(self.run_dir)

    def write(self, extra: dict | None = None) -> None:
        """Rewrite metrics.json, adding `extra` to its header (the plan at the start, what was spent at the end)."""
        self.header.update(extra or {})
        if self.evaluations:
            write_metrics(self.metrics_path, {**self.header, "settings": self.evaluator.settings()}, self.evaluations)

    def record(self, loggers, generator, step: int, protocol: Protocol, word: str, tag: str,
               baseline: bool = False, cache_key: str | None = None) -> dict | None:
        """Images of every evaluation prompt with `word` in place of {}, scored under `protocol`; the images
        go to eval/images/<step or baseline folder> and the record to metrics.json and the loggers."""
        ev = self.evaluator
        images = ev.generate(generator, word, cache_key=cache_key, protocol=protocol)
        if images is None:  # a DDP rank other than 0: it generated its share; rank 0 scores and writes
            return None
        record = {"step": step, "protocol": protocol.name, "settings": ev.settings(protocol),
                  **ev.score(images, word, inception=protocol.name == FULL)}
        save_images(image_folder(self.run_dir, None if baseline else step, protocol.name), ev.templates, images)
        self.evaluations.append(record)
        self.write()
        log_evaluation(loggers, record, images, step, tag)
        log.info("%s (%s protocol: %d images/prompt, %s %d steps): reconstruction %.4f, editability %.4f",
                 f"baseline ({word!r})" if baseline else f"step {step}", protocol.name, protocol.num_images,
                 protocol.scheduler, protocol.sampler_steps, record["reconstruction"], record["editability"])
        return record

    def resume(self, step: int) -> set[tuple[int, str]]:
        """A resumed run keeps the evaluations of steps already behind it: their (step, protocol)."""
        if not self.metrics_path.is_file():
            return set()
        try:
            old = json.loads(self.metrics_path.read_text(encoding="utf-8"))["evaluations"]
            self.evaluations = [e for e in old if isinstance(e, dict) and int(e["step"]) <= step]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            log.warning("ignoring the unreadable %s (%s): earlier evaluations are not kept", self.metrics_path, err)
            self.evaluations = []
        return {(int(e["step"]), protocol_of(e)) for e in self.evaluations}
