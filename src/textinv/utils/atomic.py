"""Write files so that a crash never leaves a truncated file under the final name."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from textinv.errors import UserError

# The folders this process may write into (None: not confined). A job confines itself to its run or
# output folder, so no file name built from user text can land anywhere else.
_ROOTS: list[Path] | None = None


def inside(folder: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Does `path` (resolved: links and `..` followed) lie in `folder`?"""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


@contextlib.contextmanager
def confined(*roots: str | os.PathLike | None) -> Iterator[None]:
    """Every atomic write inside this block must land under one of `roots`."""
    global _ROOTS
    saved = _ROOTS
    _ROOTS = [Path(r).resolve() for r in roots if r]
    try:
        yield
    finally:
        _ROOTS = saved


def check_inside(final: Path) -> None:
    if _ROOTS is not None and not any(inside(root, final) for root in _ROOTS):
        raise UserError(f"refused to write {final}: it lies outside {', '.join(map(str, _ROOTS))}")


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; outputs get the mode a plain open() would give (a web UI running as
# another user must be able to read the embedding). Read once: os.umask is process-wide.
FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success fsync it and rename it over `final`."""
    final = Path(final)
    check_inside(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except RuntimeError as err:  # torch.save on a full disk: "PytorchStreamWriter failed writing file"
            if "writ" not in str(err):
                raise
            raise OSError(errno.ENOSPC, "the write failed (disk full?)", str(final)) from err
        os.chmod(tmp_path, FILE_MODE)  # after the write: some writers (safetensors) replace the file
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write(final: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and move the result to `final` atomically."""
    with atomic_path(final) as tmp:
        write(tmp)
    return Path(final)


def atomic_write_text(final: str | os.PathLike, text: str) -> Path:
    return atomic_write(final, lambda p: p.write_text(text, encoding="utf-8"))
