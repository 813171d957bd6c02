"""Sweeps (sweeps/*.yaml, the config group `sweep`): one Hydra multirun per ablation, one folder per point.

A point's folder is named from its swept values (outputs/sweeps/<name>/<point>/), so re-running an
interrupted sweep finds its earlier points: finished ones (run.json) are skipped, unfinished ones
resume from their checkpoints/last.ckpt (textinv.training.job.resolve_resume).
"""

from __future__ import annotations

import contextlib
import sys


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (python train.py -m ..., or a sweeps/ config)."""
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
    by the same process starts clean: its own W&B run, its own DDP ranks (textinv.training.ddp)."""
    from textinv.training.ddp import ddp_children_run_this_job

    failed = True
    try:
        with ddp_children_run_this_job():
            yield
        failed = False
    finally:
        finish_wandb_run(failed)


STEP_LIST_KEYS = ("callbacks.embedding_writer.at_steps", "eval.at_steps")


def collapse_steps_sweep(argv: list[str]) -> list[str]:
    """A multirun over `steps=1000,2000,5000` costs one run per point of the other swept keys, not three:
    each trains to 5000 and snapshots and evaluates at 1000, 2000 and 5000 (with the default constant
    schedule the step-1000 snapshot is the embedding a 1000-step run ends with). Other argv is returned as is."""
    if not any(a in ("-m", "--multirun") or a.startswith("sweep=") for a in argv):
        return argv
    out, values = [], None
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key == "steps" and "," in value:
            try:
                values = sorted({int(v) for v in value.split(",")})
            except ValueError:
                return argv  # not a plain list of integers: Hydra parses it and reports what is wrong
            out.append(f"steps={values[-1]}")
        else:
            out.append(arg)
    if values is None:
        return argv
    given = [a for a in argv if a.partition("=")[0].lstrip("+~") in STEP_LIST_KEYS]
    if given:
        print(f"error: {given[0]} and a steps sweep both choose the evaluated steps; give one of them",
              file=sys.stderr, flush=True)
        sys.exit(2)
    listed = ",".join(map(str, values))
    out += [f"{key}=[{listed}]" for key in STEP_LIST_KEYS]
    print(f"steps sweep {listed}: one run per point to step {values[-1]}, with snapshots and evaluations at "
          f"steps {listed}", file=sys.stderr, flush=True)
    return out
