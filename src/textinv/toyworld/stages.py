"""Resumable training loops: a stage checkpoints every N steps and stops cleanly at a time budget.

A stage's step is a pure function of (seed, step) and of the state it restores, so a run cut into
pieces ends with the same weights as one run straight through (bitwise on one CPU configuration).
Curves go to `<work>/curves/<stage>.csv`; rows past the restored step are dropped on resume.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from textinv.utils.atomic import atomic_path

log = logging.getLogger(__name__)


class OutOfTime(Exception):
    """The time budget ran out; every stage so far is checkpointed. Run the same command again."""


@dataclass
class Stage:
    name: str
    steps: int
    lr: float
    modules: dict[str, nn.Module]
    step_fn: Callable[[int], dict[str, float]]  # one optimizer step's losses (backward done inside)
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    ema_decay: float | None = None  # keep an exponential moving average of the weights (exported)
    ema: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to min_lr_ratio x lr."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _params(stage: Stage) -> list[nn.Parameter]:
    return [p for m in stage.modules.values() for p in m.parameters() if p.requires_grad]


def _update_ema(stage: Stage, step: int) -> None:
    decay = min(stage.ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for name, module in stage.modules.items():
            avg = stage.ema.setdefault(name, {k: v.detach().clone() for k, v in module.state_dict().items()})
            for k, v in module.state_dict().items():
                if v.dtype.is_floating_point:
                    avg[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    avg[k].copy_(v)


def _rewrite_curve(path: Path, keep_below: int) -> None:
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < keep_below]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)


def run_stage(stage: Stage, work: Path, deadline: float, checkpoint_every: int = 100, log_every: int = 50) -> None:
    """Train `stage` to its last step, resuming from `<work>/<name>.ckpt`; raise OutOfTime at the deadline."""
    ckpt, curve = work / f"{stage.name}.ckpt", work / "curves" / f"{stage.name}.csv"
    curve.parent.mkdir(parents=True, exist_ok=True)
    params = _params(stage)
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    start = 0
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        for name, module in stage.modules.items():
            module.load_state_dict(state["modules"][name])
        opt.load_state_dict(state["optimizer"])
        stage.ema = state.get("ema", {})
        start = int(state["step"])
        _rewrite_curve(curve, start)
    if start >= stage.steps:
        return
    log.info("stage %s: steps %d-%d", stage.name, start, stage.steps)

    def save(step: int) -> None:
        state = {"modules": {k: m.state_dict() for k, m in stage.modules.items()}, "optimizer": opt.state_dict(),
                 "ema": stage.ema, "step": step}
        with atomic_path(ckpt) as tmp:
            torch.save(state, tmp)

    for m in stage.modules.values():
        m.train()
    new_file = not curve.is_file()
    t0, f = time.time(), curve.open("a", newline="")
    writer = csv.writer(f)
    try:
        for step in range(start, stage.steps):
            lr = stage.lr_at(step)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            losses = stage.step_fn(step)
            if stage.clip_grad:
                torch.nn.utils.clip_grad_norm_(params, stage.clip_grad)
            opt.step()
            if stage.ema_decay:
                _update_ema(stage, step)
            if new_file:
                writer.writerow(["step", "lr", "seconds", *losses])
                new_file = False
            writer.writerow([step, f"{lr:.3e}", f"{time.time() - t0:.1f}", *(f"{v:.5f}" for v in losses.values())])
            done = step + 1
            if done % log_every == 0:
                rate = (time.time() - t0) / (done - start)
                log.info("%s step %d/%d %s (%.2f s/step, %.1f min left)", stage.name, done, stage.steps,
                         " ".join(f"{k}={v:.4f}" for k, v in losses.items()), rate, rate * (stage.steps - done) / 60)
            if done % checkpoint_every == 0 or done == stage.steps:
                f.flush()
                save(done)
            if time.time() > deadline and done < stage.steps:
                f.flush()
                save(done)
                raise OutOfTime(f"stage {stage.name} paused at step {done}/{stage.steps}")
    finally:
        f.close()
        for m in stage.modules.values():
            m.eval()


def load_ema(stage: Stage) -> None:
    """Put the averaged weights into the modules (what gets exported)."""
    for name, module in stage.modules.items():
        if name in stage.ema:
            module.load_state_dict(stage.ema[name])
