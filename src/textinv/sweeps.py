"""Sweeps (conf/sweep/): one Hydra multirun per ablation, one deterministic folder per point.

A point's folder is named from its swept values (outputs/sweeps/<name>/<point>/), so re-running an
interrupted sweep finds its earlier points: finished ones (run.json) are skipped, unfinished ones
resume from their checkpoints/last.ckpt (textinv.run.resolve_resume).
"""

from __future__ import annotations

import contextlib
import sys


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (python train.py -m ..., or a conf/sweep/ config)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def finish_wandb_run(failed: bool = False) -> None:
    """Close this job's W&B run: otherwise Lightning's WandbLogger of the next point in the same process
    reuses it ("a wandb run already in progress") and two points end up in one W&B run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


@contextlib.contextmanager
def sweep_job():
    """Around one Hydra job (train.py's main): what it starts ends with it, so the next point of a sweep run
    by the same process starts clean: its own W&B run, its own DDP ranks (textinv.ddp)."""
    from .ddp import ddp_children_run_this_job

    failed = True
    try:
        with ddp_children_run_this_job():
            yield
        failed = False
    finally:
        finish_wandb_run(failed)
