"""Training-time outputs: the method's snapshots and final files, the finished-run marker."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path

import torch

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO

from textinv.utils.atomic import atomic_path, atomic_write_text
from textinv.runs.layout import LAST_CHECKPOINT, finished_marker, snapshot_suffix, snapshots_dir

log = logging.getLogger(__name__)


class MethodFileWriter(L.Callback):
    """The training method's files (textinv.methods.base.Method.write_files): snapshots every N steps (and at
    chosen steps) under snapshots/, final files at the end (rank 0)."""

    def __init__(self, run_dir: str, every_n_steps: int = 500, at_steps: list[int] | tuple = ()):
        self.run_dir = Path(run_dir)
        self.every_n_steps, self.at_steps = every_n_steps, set(int(s) for s in at_steps)
        self._last_written = -1

    def _due(self, step: int) -> bool:
        return step != self._last_written and (step in self.at_steps or
                                               (self.every_n_steps > 0 and step % self.every_n_steps == 0))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and self._due(step):
            pl_module.method.write_files(snapshots_dir(self.run_dir), step, suffix=snapshot_suffix(step))
            self._last_written = step

    def _finished(self, trainer) -> bool:
        from textinv.training.validation_loss import stopped_early

        return trainer.is_global_zero and not trainer.interrupted and (
            trainer.global_step >= trainer.max_steps or stopped_early(trainer) is not None)

    def on_train_end(self, trainer, pl_module) -> None:
        """The files first: written before the final evaluation, so a failing evaluation loses nothing."""
        self._files = []
        if not self._finished(trainer):
            return  # stopped early (signal): not a finished run
        self._files = pl_module.method.write_files(self.run_dir, trainer.global_step)
        log.info("wrote %s in %s", ", ".join(str(p.relative_to(self.run_dir)) for p in self._files), self.run_dir)

    def on_fit_end(self, trainer, pl_module) -> None:
        """run.json last, after the final evaluation: the run finished, and what went wrong on the way."""
        if not self._finished(trainer) or not getattr(self, "_files", None):
            return
        method = pl_module.method
        summary = {
            "finished": True,
            "step": trainer.global_step,
            **method.summary(),
            "model": pl_module.model_name,
            "files": [str(p.relative_to(self.run_dir)) for p in self._files],
            **method.findings(pl_module.optim.lr),
        }
        speed = getattr(pl_module, "speed", None)
        if speed is not None and speed.compile:  # compile=true: what was applied, compile time, break-even
            summary["compile"] = {"applied": speed.applied, **(pl_module.compile_report or {})}
        failures = [f for cb in trainer.callbacks for f in getattr(cb, "failures", [])]
        if failures:
            summary["evaluation_failures"] = failures
        from textinv.training.cost import CostMeter
        from textinv.training.validation_loss import ValidationLoss

        for cb in trainer.callbacks:
            if isinstance(cb, CostMeter):
                summary["cost"] = cb.summary()  # planned and spent: time and UNet forwards
            if isinstance(cb, ValidationLoss) and cb.enabled:
                summary["validation_loss"] = cb.summary()
        atomic_write_text(finished_marker(self.run_dir), json.dumps(summary, indent=2))  # written last


class FinishCompletedTraining(L.Callback):
    """A run stopped after its last training step (say during its final evaluation) resumes with nothing left to
    train. Lightning then skips on_train_start/on_train_end, so the final evaluation, the method's files and run.json
    would never come and the re-run would end in silence. This callback, first in the list, runs those two hooks
    of every callback at on_fit_end, before the others' on_fit_end writes run.json."""

    def __init__(self) -> None:
        self._loop_ran = False

    def on_train_start(self, trainer, pl_module) -> None:
        self._loop_ran = True

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._loop_ran or trainer.interrupted or trainer.global_step < trainer.max_steps:
            return
        log.info("training had already reached step %d; finishing the run (final evaluation, files, run.json)",
                 trainer.global_step)
        self._loop_ran = True
        for hook in ("on_train_start", "on_train_end"):
            for cb in trainer.callbacks:
                if cb is not self:
                    getattr(cb, hook)(trainer, pl_module)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary name and renamed: never a truncated last.ckpt."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class FinalEvaluationStopped(BaseException):
    """A signal during the final evaluation: training is over and its files are written, the evaluation stops at
    once (a BaseException: the evaluation's own error handling must not swallow it) and run.json is not written."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class GracefulStop(L.Callback):
    """SIGINT/SIGTERM finish the current optimizer step, save a resumable last.ckpt and stop the run.

    A second Ctrl-C aborts at once (the previous checkpoint stays valid: writes are atomic). Under DDP
    the ranks agree on stopping through one tiny all-reduce per step, so none waits for the others.
    Once training is over (on_train_end: the method's files are written, last.ckpt is at the final step), a
    signal stops the final evaluation at once (FinalEvaluationStopped) instead of being held until it ends:
    the run is then unfinished, and re-running the same command runs only the final evaluation again.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._step_at_start = -1
        self.in_final_evaluation = False

    def _handle(self, signum, frame) -> None:
        if self.in_final_evaluation:
            self.signum = signum
            raise FinalEvaluationStopped(signum)
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: stopping after this step with a resumable checkpoint (again to abort now)",
                    signal.Signals(signum).name)

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)

    def on_train_end(self, trainer, pl_module) -> None:
        """Before the final evaluation (the evaluation callback comes after this one): a checkpoint at the final
        step, so a run stopped during the evaluation resumes without training again."""
        from textinv.evaluation.callback import final_step_reached

        if trainer.interrupted or not final_step_reached(trainer):
            return
        ckpt = trainer.checkpoint_callback
        # _step_at_start < 0: no step ran in this process (a resume at the final step, FinishCompletedTraining):
        # the checkpoint it resumed from is at this step already
        if (self._step_at_start >= 0 and ckpt is not None
                and getattr(ckpt, "_last_global_step_saved", None) != trainer.global_step):
            trainer.save_checkpoint(Path(ckpt.dirpath) / LAST_CHECKPOINT)
        self.in_final_evaluation = True
        if self.signum is not None:  # arrived between the last step's check and here
            raise FinalEvaluationStopped(self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._step_at_start:
            return  # mid-accumulation: only stop on an optimizer-step boundary
        stop = self.signum is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        ckpt_dir = Path(trainer.checkpoint_callback.dirpath) if trainer.checkpoint_callback else Path(trainer.default_root_dir)
        trainer.save_checkpoint(ckpt_dir / LAST_CHECKPOINT)
        trainer.should_stop = True
        self.signum = self.signum or signal.SIGTERM
