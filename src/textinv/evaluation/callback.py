"""Evaluation while training: at the steps textinv.evaluation.schedule names, generate, score, and log.
Under DDP every rank generates its share of the images and rank 0 scores and writes
(textinv.evaluation.shared): every rank takes part in every evaluation. The last step is max_steps, or where
the validation-loss early stop ended the run."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from textinv.evaluation.evaluator import EvalConfig, Evaluator
from textinv.evaluation.recorder import EvaluationRecorder
from textinv.evaluation.schedule import Protocol, protocols_at
from textinv.evaluation.shared import broadcast

log = logging.getLogger(__name__)


def final_step_reached(trainer) -> bool:
    """The run's last step: max_steps, or an early stop on the validation loss (textinv.training.validation_loss)."""
    from textinv.training.validation_loss import stopped_early

    return trainer.global_step >= trainer.max_steps or stopped_early(trainer) is not None


class EvaluationCallback(L.Callback):
    def __init__(self, cfg: EvalConfig, evaluator: Evaluator | None, run_dir: str | Path, header: dict,
                 meter=None):
        self.cfg, self.evaluator = cfg, evaluator
        self.recorder = EvaluationRecorder(evaluator, run_dir, header)
        self.meter = meter  # textinv.training.cost.CostMeter: evaluation time and UNet forwards counted apart
        self.generators: dict[str, object] = {}  # one per sampler
        self.failures: list[dict] = []  # evaluations that raised: recorded in run.json, training goes on
        self._done: set[tuple[int, str]] = set()  # (step, protocol) evaluated

    @property
    def evaluations(self) -> list[dict]:
        return self.recorder.evaluations

    @property
    def metrics_path(self) -> Path:
        return self.recorder.metrics_path

    def on_train_start(self, trainer, pl_module) -> None:
        step = trainer.global_step
        # rank 0 reads what a resumed run already evaluated; every rank follows it (they evaluate together)
        done = self.recorder.resume(step) if trainer.is_global_zero and self.evaluator is not None else None
        self._done = broadcast(done) or set()
        if step == 0:  # the other steps are evaluated at the end of their batch
            self.evaluate(trainer, pl_module, protocols_at(self.cfg, step, final=False))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # the last step is left to on_train_end: it is the final (full-protocol) evaluation
        if not final_step_reached(trainer):
            self.evaluate(trainer, pl_module, protocols_at(self.cfg, trainer.global_step, final=False))

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.interrupted or not final_step_reached(trainer):
            return  # stopped by a signal: the resumed run evaluates its end
        self.evaluate(trainer, pl_module, protocols_at(self.cfg, trainer.global_step, final=True))
        if self.evaluator is not None and trainer.is_global_zero and self.meter is not None:
            self.write_header({"cost": self.meter.summary()})

    def write_header(self, extra: dict) -> None:
        """Add to the metrics.json header (the plan at the start, what was spent at the end)."""
        self.recorder.write(extra)

    def evaluate(self, trainer, pl_module, protocols: list[Protocol]) -> None:
        step = trainer.global_step
        if self.evaluator is None:
            return
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
        self.recorder.record(trainer.loggers, self.generator(pl_module, protocol.scheduler), step, protocol,
                             pl_module.method.eval_word, pl_module.method.log_tag)
