"""What a run spent: wall time and UNet forwards for training, evaluation and the validation loss.

A UNet forward is one image through the UNet once: a training micro-step of batch b is b forwards (its
backward is not counted apart), a guided sampler step of a batch of n images is 2n (classifier-free
guidance runs the unconditional and conditional halves). The count comes from a hook on the UNet (what
really ran, not what was planned); evaluation and the validation loss enter their phase around their
work, and everything else is training.
"""

from __future__ import annotations

import contextlib
import logging
import time

import lightning as L

log = logging.getLogger(__name__)

PHASES = ("train", "eval", "validation")


class CostMeter(L.Callback):
    def __init__(self, plan: dict | None = None):
        self.plan = plan or {}
        self.forwards = dict.fromkeys(PHASES, 0)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._phase = "train"
        self._start: float | None = None
        self._hook = None

    def _count(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs.get("sample")
        self.forwards[self._phase] += int(sample.shape[0])

    def attach(self, unet) -> None:
        if self._hook is None:
            self._hook = unet.register_forward_pre_hook(self._count, with_kwargs=True)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Count UNet forwards and wall time of the block as `name` (not as training)."""
        previous, self._phase = self._phase, name
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0
            self._phase = previous

    def start(self, unet) -> None:
        self.attach(unet)
        self._start = time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self.start(pl_module.unet)

    def summary(self) -> dict:
        # Round the parts first and take training as the remainder, so the parts add up to the
        # printed total exactly (rounding each of them separately could overshoot it by 1 ms).
        total = round(time.perf_counter() - self._start, 3) if self._start is not None else 0.0
        parts = {k: round(v, 3) for k, v in self.seconds.items() if k != "train"}
        spent = {"wall_s": total, "train_wall_s": round(max(0.0, total - sum(parts.values())), 3),
                 "eval_wall_s": parts["eval"], "validation_wall_s": parts["validation"],
                 "train_unet_forwards": self.forwards["train"], "eval_unet_forwards": self.forwards["eval"],
                 "validation_unet_forwards": self.forwards["validation"]}
        return {"plan": self.plan, "spent": spent}

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if not trainer.is_global_zero or self._start is None:
            return
        spent = self.summary()["spent"]
        log.info("spent: %.1f s in all; training %.1f s, %d UNet forwards; evaluation %.1f s, %d UNet forwards; "
                 "validation loss %.1f s, %d UNet forwards", spent["wall_s"], spent["train_wall_s"],
                 spent["train_unet_forwards"], spent["eval_wall_s"], spent["eval_unet_forwards"],
                 spent["validation_wall_s"], spent["validation_unet_forwards"])
        for lg in trainer.loggers:
            lg.log_metrics({f"cost/{k}": float(v) for k, v in spent.items()}, step=trainer.global_step)
            lg.save()
