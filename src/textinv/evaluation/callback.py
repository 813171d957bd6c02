"""Evaluation while training: at chosen steps, generate, score, and log (rank 0 only, no collectives).

During training the light protocol (eval.light); at the last step (max_steps, or where the validation-loss
early stop ended the run) the light protocol and then the full one, whose record tables read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L

from textinv.evaluation.evaluator import FULL, EvalConfig, Evaluator, Protocol, image_folder_name, image_grid, save_images, write_metrics

log = logging.getLogger(__name__)

SCALARS = ("reconstruction", "editability", "clip_i_all", "clip_t_all", "dino", "fid", "kid_mean", "is_mean", "is_std")


def log_evaluation(loggers, record: dict, images, step: int, tag: str) -> None:
    """Scalars to every logger (metrics.csv, W&B); an image grid and a W&B Table where W&B is on.
    Light-protocol scalars go under eval_light/ so a curve never mixes the two protocols."""
    prefix = "eval" if record.get("protocol", FULL) == FULL else f"eval_{record['protocol']}"
    tag = tag if prefix == "eval" else f"{tag}_{record['protocol']}"
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


def final_step_reached(trainer) -> bool:
    """The run's last step: max_steps, or an early stop on the validation loss (textinv.training.validation_loss)."""
    from textinv.training.validation_loss import stopped_early

    return trainer.global_step >= trainer.max_steps or stopped_early(trainer) is not None


class EvaluationCallback(L.Callback):
    def __init__(self, cfg: EvalConfig, evaluator: Evaluator | None, run_dir: str | Path, header: dict,
                 meter=None):
        self.cfg, self.evaluator, self.run_dir, self.header = cfg, evaluator, Path(run_dir), header
        self.meter = meter  # textinv.training.cost.CostMeter: evaluation time and UNet forwards counted apart
        self.generators: dict[str, object] = {}  # one per sampler
        self.evaluations: list[dict] = []
        self.failures: list[dict] = []  # evaluations that raised: recorded in run.json, training goes on
        self._done: set[tuple[int, str]] = set()  # (step, protocol) evaluated

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "eval" / "metrics.json"

    def on_train_start(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if self.metrics_path.is_file():  # resumed: keep evaluations of steps already behind us
            try:
                old = json.loads(self.metrics_path.read_text(encoding="utf-8"))["evaluations"]
                self.evaluations = [e for e in old if isinstance(e, dict) and int(e["step"]) <= step]
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
                log.warning("ignoring the unreadable %s (%s): earlier evaluations are not kept", self.metrics_path,
                            err)
                self.evaluations = []
            self._done = {(int(e["step"]), e.get("protocol", FULL)) for e in self.evaluations}
        if step == 0 and 0 in self.cfg.at_steps:
            self.evaluate(trainer, pl_module, self.cfg.protocols(final=False))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # the last step is left to on_train_end: it is the final (full-protocol) evaluation
        if self.cfg.due(trainer.global_step) and not final_step_reached(trainer):
            self.evaluate(trainer, pl_module, self.cfg.protocols(final=False))

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.interrupted or not final_step_reached(trainer):
            return  # stopped by a signal: the resumed run evaluates its end
        if self.cfg.at_end or self.cfg.due(trainer.global_step):
            self.evaluate(trainer, pl_module, self.cfg.protocols(final=True))
        if self.evaluator is not None and trainer.is_global_zero and self.meter is not None:
            self.write_header({"cost": self.meter.summary()})

    def write_header(self, extra: dict) -> None:
        """Add to the metrics.json header (the plan at the start, what was spent at the end)."""
        self.header.update(extra)
        if self.evaluations:
            write_metrics(self.metrics_path, {**self.header, "settings": self.evaluator.settings()}, self.evaluations)

    def evaluate(self, trainer, pl_module, protocols: list[Protocol]) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or self.evaluator is None:
            return  # the other ranks go on and wait at their next gradient all-reduce
        for protocol in protocols:
            if (step, protocol.name) in self._done:
                continue
            self._done.add((step, protocol.name))
            try:
                if self.meter is None:
                    self._evaluate(trainer, pl_module, step, protocol)
                else:
                    with self.meter.phase("eval"):
                        self._evaluate(trainer, pl_module, step, protocol)
            except Exception as err:  # noqa: BLE001 - an evaluation must never cost the trained state
                first = (str(err).strip().splitlines() or [""])[0][:300]
                self.failures.append({"step": step, "protocol": protocol.name,
                                      "error": f"{type(err).__name__}: {first}"})
                log.error("evaluation at step %d (%s protocol) failed (%s: %s); training and the method's files "
                          "are unaffected, run.json records the failure", step, protocol.name, type(err).__name__,
                          first)

    def generator(self, pl_module, scheduler: str):
        from textinv.models.generation import ImageGenerator

        if scheduler not in self.generators:
            generator = ImageGenerator.from_frozen(pl_module.frozen, scheduler=scheduler)
            pl_module.method.use_in(generator)  # the live trained state, as training sees it
            self.generators[scheduler] = generator
        return self.generators[scheduler]

    def _evaluate(self, trainer, pl_module, step: int, protocol: Protocol) -> None:
        word = pl_module.method.eval_word
        images = self.evaluator.generate(self.generator(pl_module, protocol.scheduler), word, protocol=protocol)
        record = {"step": step, "protocol": protocol.name, "settings": self.evaluator.settings(protocol),
                  **self.evaluator.score(images, word, inception=protocol.name == FULL)}
        save_images(self.run_dir / "eval" / "images" / image_folder_name(step, protocol.name),
                    self.evaluator.templates, images)
        self.evaluations.append(record)
        write_metrics(self.metrics_path, {**self.header, "settings": self.evaluator.settings()}, self.evaluations)
        log_evaluation(trainer.loggers, record, images, step, pl_module.method.log_tag)
        log.info("step %d (%s protocol: %d images/prompt, %s %d steps): reconstruction %.4f, editability %.4f", step,
                 protocol.name, protocol.num_images, protocol.scheduler, protocol.sampler_steps,
                 record["reconstruction"], record["editability"])
