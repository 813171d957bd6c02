"""Data-parallel training of one concept (trainer=ddp trainer.devices=N).

Every rank holds the frozen model and the same trained weights (the method's parameters); the StepSampler
gives each rank its own samples (textinv.data.datamodule), DDP averages their gradients, so every rank applies
the same update. Only rank 0
writes files (callbacks check trainer.is_global_zero); collectives run on every rank, never inside a
rank-0 branch.

Two pieces here:
- `DataParallelCheck`: prints and logs the effective batch and learning rate; under DDP, every N steps,
  one all_gather checks that the ranks hold the same trained weights and drew different samples.
- `ddp_children_run_this_job`: Lightning's `strategy=ddp` starts ranks 1..N-1 by re-running the script.
  Its Hydra support re-runs `sys.argv` with `hydra.run.dir=<run.dir>`: inside a sweep that would start the
  whole sweep again in each child, and it repeats `hydra.run.dir` (which train.py rejects as a conflicting
  override). Here the children get exactly this job's overrides, its output folder and `hydra.mode=RUN`.
  On SLURM (submitit) the tasks are started by srun, one per rank, and none of this is used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import lightning as L
import torch

log = logging.getLogger(__name__)

# The launcher's own environment variables, set in the launching process: cleared after each job so the
# next point of a sweep launches its own ranks (with LOCAL_RANK still set, Lightning would wait for peers).
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_PINNED = ("hydra.run.dir", "hydra.mode", "hydra.job.name", "hydra.output_subdir")


class DataParallelCheck(L.Callback):
    """Effective batch and learning rate in the log and the loggers' config; rank agreement under DDP."""

    def __init__(self, every_n_steps: int = 100, atol: float = 1e-6):
        self.every_n_steps, self.atol = every_n_steps, atol
        self._last = -1

    def on_fit_start(self, trainer, pl_module) -> None:
        batch = trainer.datamodule.batch_size if trainer.datamodule is not None else 1
        accum, world = trainer.accumulate_grad_batches, trainer.world_size
        group = trainer.optimizers[0].param_groups[0]
        lr = group.get("initial_lr", group["lr"])  # before warmup scales it
        fields = {"world_size": world, "effective_batch": batch * accum * world, "effective_lr": lr}
        if trainer.is_global_zero:
            log.info("data parallel: %d rank(s) x batch %d x accumulation %d = effective batch %d; learning rate %.4g",
                     world, batch, accum, fields["effective_batch"], lr)
        for logger in trainer.loggers:
            logger.log_hyperparams(fields)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # identical on every rank, so every rank takes the same branch
        if trainer.world_size < 2 or self.every_n_steps <= 0 or step == self._last or step % self.every_n_steps:
            return
        self._last = step
        # [world, total numel]: the method's parameters, flattened; every rank takes part
        weights = _all_gather(torch.cat([p.detach().flatten().float() for p in pl_module.method.parameters()]))
        indices = _all_gather(torch.as_tensor(batch["index"], device=pl_module.device))
        diff = check_ranks(weights, indices, step, self.atol)
        if trainer.is_global_zero:
            log.info("step %d: %d ranks hold the same trained weights (max difference %.3g); samples %s", step,
                     len(weights), diff, indices.tolist())


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    out = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(out, tensor.contiguous())
    return torch.stack(out)


def check_ranks(weights: torch.Tensor, indices: torch.Tensor, step: int, atol: float) -> float:
    """Raises (on every rank alike: they all see the same gathered tensors) when ranks disagree."""
    diff = float((weights - weights[:1]).abs().max())
    flat = indices.flatten().tolist()
    if not diff <= atol:
        raise RuntimeError(f"DDP ranks disagree at step {step}: the trained weights differ by up to {diff:.3g} "
                           f"(tolerance {atol:g})")
    if len(set(flat)) != len(flat):
        raise RuntimeError(f"DDP ranks drew the same samples at step {step}: {indices.tolist()}")
    return diff


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def hydra_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning runs for rank `local_rank`: this Hydra job alone, in its own output folder."""
    import __main__
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    hc = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    hydra_overrides = [o for o in hc.overrides.hydra if o.split("=", 1)[0].lstrip("+~") not in _PINNED]
    command += [*hc.overrides.task, *hydra_overrides, f"hydra.run.dir={_quote(hc.runtime.output_dir)}",
                "hydra.mode=RUN", f"hydra.job.name={hc.job.name}_ddp_rank{local_rank}", "hydra.output_subdir=null"]
    return command, get_original_cwd()


@contextlib.contextmanager
def ddp_children_run_this_job():
    """Around one Hydra job: Lightning's DDP children re-run this job only; afterwards the process group and
    the launcher's environment are cleared so that the next job of a sweep starts its own ranks."""
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as pytorch_launcher

    saved = {k: os.environ.get(k) for k in _LAUNCH_ENV}
    originals = (fabric_launcher._hydra_subprocess_cmd, pytorch_launcher._hydra_subprocess_cmd)
    fabric_launcher._hydra_subprocess_cmd = pytorch_launcher._hydra_subprocess_cmd = hydra_child_command
    try:
        yield
    finally:
        fabric_launcher._hydra_subprocess_cmd, pytorch_launcher._hydra_subprocess_cmd = originals
        if saved["LOCAL_RANK"] is None:  # we launched (or were a single process), not a child or srun task
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
