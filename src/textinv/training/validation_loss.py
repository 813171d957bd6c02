"""A convergence signal that generates nothing: the denoising loss on one fixed validation batch.

Voronov et al. (NeurIPS 2023, "Is This Loss Informative? Faster Text-to-Image Customization by Tracking
Objective Dynamics"): the training loss is too noisy to show convergence because every step draws new
images, noise, timesteps and prompts. Fixing all four (drawn once from `seed`) leaves a smooth curve
that flattens when the concept is learned. Every `every_n_steps` optimizer steps it costs `batch_size`
UNet forwards, no backward, no sampling.

Their stopping rule (DVAR): stop once Var(last `window` values) / Var(all values) < `threshold`. With
`early_stop=true` the run stops there, records the step (validation_loss.json, run.json) and still runs
its final full evaluation at that step (textinv.evaluation.callback).
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from textinv.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)

CURVE_FILE = "validation_loss.json"


def normalized_variance(history: list[float], window: int) -> float | None:
    """Var(last `window`) / Var(all) (population variances), None until `window` values exist."""
    if len(history) < max(window, 2):
        return None
    total = statistics.pvariance(history)
    return statistics.pvariance(history[-window:]) / total if total > 0 else 0.0


def stopped_early(trainer) -> int | None:
    """The step a ValidationLoss callback stopped the run at, or None."""
    for cb in getattr(trainer, "callbacks", []):
        if isinstance(cb, ValidationLoss) and cb.stopped_at is not None:
            return cb.stopped_at
    return None


class ValidationLoss(L.Callback):
    def __init__(self, run_dir: str, every_n_steps: int = 25, batch_size: int = 8, seed: int = 1234,
                 chunk: int = 4, early_stop: bool = False, window: int = 20, threshold: float = 0.15,
                 min_steps: int = 0, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.every_n_steps, self.batch_size, self.seed, self.chunk = every_n_steps, batch_size, seed, chunk
        self.early_stop, self.window, self.threshold, self.min_steps = early_stop, window, threshold, min_steps
        self.enabled = enabled and every_n_steps > 0
        self.meter = None  # textinv.training.cost.CostMeter, set by textinv.training.job: these forwards are counted apart
        self.points: list[dict] = []  # {"step", "loss", "normalized_variance"}
        self.stopped_at: int | None = None
        self._batch: dict | None = None

    # --- the fixed batch ----------------------------------------------------------------------
    @torch.no_grad()
    def build_batch(self, pl_module, datamodule) -> dict:
        """Latents, noise, timesteps and prompts drawn once: image i % N, its mirror on odd rounds."""
        g = torch.Generator().manual_seed(self.seed)
        pixels = datamodule.pixel_tensor()
        n = len(pixels)
        idx = [i % n for i in range(self.batch_size)]
        views = torch.stack([pixels[i].flip(-1) if (k // n) % 2 else pixels[i] for k, i in enumerate(idx)])
        mean, std = pl_module._encode_moments(views)
        latents = (mean + std * torch.randn(mean.shape, generator=g).to(mean.device))
        latents = latents * pl_module.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g).to(latents.device)
        num_t = pl_module.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, num_t, (self.batch_size,), generator=g).to(latents.device)
        prompts = datamodule.dataset(1).all_prompts()
        order = torch.randperm(len(prompts), generator=g).tolist()
        chosen = [prompts[order[k % len(prompts)]] for k in range(self.batch_size)]
        return {"latents": latents, "noise": noise, "t": t, "prompts": chosen, "images": torch.tensor(idx)}

    @torch.no_grad()
    def loss(self, pl_module) -> float:
        b = self._batch
        total = 0.0
        for s in range(0, self.batch_size, self.chunk):
            lat, noise, t = b["latents"][s:s + self.chunk], b["noise"][s:s + self.chunk], b["t"][s:s + self.chunk]
            noisy, target = pl_module.noised_and_target(lat, noise, t)
            kwargs = pl_module.unet_conditioning(b["prompts"][s:s + self.chunk], b["images"][s:s + self.chunk])
            pred = pl_module.unet(noisy.to(pl_module.unet.dtype), t, **kwargs).sample
            total += F.mse_loss(pred.float(), target.float(), reduction="sum").item()
        return total / b["latents"].numel()

    # --- hooks --------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        if not self.enabled:
            return
        step = trainer.global_step
        path = self.run_dir / CURVE_FILE
        if step > 0 and path.is_file():  # resumed: keep the curve up to here
            try:
                self.points = [p for p in json.loads(path.read_text(encoding="utf-8"))["points"] if p["step"] <= step]
            except (ValueError, KeyError, TypeError) as err:
                log.warning("ignoring the unreadable %s (%s): the validation-loss curve restarts here", path, err)
        self._batch = self.build_batch(pl_module, trainer.datamodule)
        if not any(p["step"] == step for p in self.points):
            self.measure(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.enabled or step % self.every_n_steps or (self.points and self.points[-1]["step"] == step):
            return
        self.measure(trainer, pl_module)

    def measure(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if self.meter is not None:
            with self.meter.phase("validation"):
                value = self.loss(pl_module)
        else:
            value = self.loss(pl_module)
        history = [p["loss"] for p in self.points] + [value]
        nvar = normalized_variance(history, self.window)
        self.points.append({"step": step, "loss": value, "normalized_variance": nvar})
        metrics = {"val/dvar_loss": value}
        if nvar is not None:
            metrics["val/dvar_normalized_variance"] = nvar
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=step)
        stop = (self.early_stop and nvar is not None and nvar < self.threshold and step >= self.min_steps
                and step < trainer.max_steps)
        if trainer.world_size > 1:  # every rank computes the same numbers; agree anyway
            stop = trainer.strategy.reduce_boolean_decision(stop, all=True)
        if stop and self.stopped_at is None:
            self.stopped_at = step
            trainer.should_stop = True
            log.info("validation loss plateaued at step %d (Var(last %d) / Var(all) = %.3f < %.3f): stopping early; "
                     "the final evaluation runs at this step", step, self.window, nvar, self.threshold)
        if trainer.is_global_zero:
            self.write()

    def write(self) -> None:
        atomic_write_text(self.run_dir / CURVE_FILE, json.dumps({
            "every_n_steps": self.every_n_steps, "batch_size": self.batch_size, "seed": self.seed,
            "criterion": {"early_stop": self.early_stop, "window": self.window, "threshold": self.threshold,
                          "min_steps": self.min_steps, "rule": "Var(last window) / Var(all) < threshold"},
            "stopped_at": self.stopped_at, "points": self.points}, indent=2))

    def summary(self) -> dict:
        """What run.json records."""
        return {"stopped_early_at": self.stopped_at, "final_loss": self.points[-1]["loss"] if self.points else None,
                "checks": len(self.points), "file": CURVE_FILE}
