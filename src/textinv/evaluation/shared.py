"""Evaluation shared by all DDP ranks: each rank generates its share of the images, rank 0 scores and writes.

The images of one evaluation are cut into batches exactly as one process cuts them (prompt-major order,
`eval.batch_size` images per pipeline call, image k of every prompt from seed `eval.seed + k`); batch i goes to
rank i mod N. Every batch is therefore computed with the same inputs and the same shapes whatever N is, so
the images are the same (byte for byte on CPU) with 1 or N ranks, and so are the metrics rank 0 computes
from them. The images travel to rank 0 over a gloo group (CPU memory; under NCCL a gloo group of its own
is created once, so no GPU memory holds them); rank 0 assembles them in order, scores and writes.

Collectives run on every rank at the same points: every rank calls `generate_shared` at every evaluation
(textinv.evaluation.callback asks the schedule on every rank; the baseline job runs on every rank). A rank
whose generation fails sends the error instead of images, so no rank waits forever; rank 0 raises it
(recorded as an evaluation failure) and the others go on.
"""

from __future__ import annotations

import datetime
import logging

import torch

log = logging.getLogger(__name__)

_GROUP: dict[str, object] = {}
TIMEOUT = datetime.timedelta(hours=4)  # a share of a full SDXL evaluation on a slow GPU fits in it


def rank_and_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _group():
    """The default group when it is gloo; otherwise one gloo group, created once on every rank."""
    dist = torch.distributed
    if dist.get_backend() == "gloo":
        return None
    key = f"gloo-{id(dist.distributed_c10d._get_default_group())}"
    if key not in _GROUP:
        _GROUP[key] = dist.new_group(backend="gloo", timeout=TIMEOUT)
    return _GROUP[key]


def broadcast(value):
    """Rank 0's `value` on every rank (the value itself in a single process)."""
    rank, world = rank_and_world()
    if world == 1:
        return value
    box = [value if rank == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0, group=_group())
    return box[0]


def my_batches(num_jobs: int, batch_size: int, rank: int, world: int) -> list[range]:
    """The job ranges (prompt-major image numbers) of this rank's batches: batch i goes to rank i mod world."""
    starts = range(0, num_jobs, batch_size)
    return [range(s, min(s + batch_size, num_jobs)) for i, s in enumerate(starts) if i % world == rank]


def generate_shared(generate, num_prompts: int, num_images: int):
    """`generate(share)` on every rank with share = (rank, world); returns the full [prompt][k] image lists on
    rank 0 (None on the others). `generate` returns [prompt] lists of textinv.models.generation.GeneratedImage."""
    rank, world = rank_and_world()
    if world == 1:
        rows = generate(None)
        return [[s.image for s in row] for row in rows]
    try:
        rows = generate((rank, world))
        payload = [(s.index, p, s.image) for p, row in enumerate(rows) for s in row]
    except Exception as err:  # noqa: BLE001 - sent to rank 0, which raises it; no rank is left waiting
        log.error("rank %d: evaluation generation failed: %s: %s", rank, type(err).__name__, err)
        payload = {"error": f"rank {rank}: {type(err).__name__}: {str(err)[:300]}"}
    gathered = [None] * world if rank == 0 else None
    torch.distributed.gather_object(payload, gathered, dst=0, group=_group())
    if rank != 0:
        return None
    errors = [g["error"] for g in gathered if isinstance(g, dict)]
    if errors:
        raise RuntimeError(f"evaluation generation failed on {len(errors)} rank(s): {errors[0]}")
    images: list[list] = [[None] * num_images for _ in range(num_prompts)]
    for part in gathered:
        for k, p, image in part:
            images[p][k] = image
    missing = sum(img is None for row in images for img in row)
    if missing:
        raise RuntimeError(f"shared evaluation: {missing} image(s) came back from no rank")
    return images
