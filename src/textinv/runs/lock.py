"""One process per run (or output) folder: a second one refuses in one line instead of interleaving files."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from textinv.errors import UserError

LOCK_NAME = ".textinv.lock"


def is_first_rank() -> bool:
    """DDP ranks 1..N-1 re-run the job in the same folder (Lightning, torchrun, srun): only rank 0 locks."""
    return all(int(os.environ.get(k) or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "hydra.run.dir") -> Iterator[None]:
    """Held while the block runs; released at exit (also when the process dies: an OS file lock)."""
    folder = Path(folder)
    if not is_first_rank():
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    created = not path.exists()  # ours to remove again: a refused or finished run leaves its folder as it was
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"{folder} is in use by another process (lock {LOCK_NAME}); wait for it to end or choose "
                        f"another {what}=...") from None
    try:
        yield
    finally:
        if created:
            path.unlink(missing_ok=True)  # while still held: no second process can be inside meanwhile
        lock.release()
