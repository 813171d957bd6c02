"""Entry-point glue: user mistakes become one line on stderr and a non-zero exit, not a traceback."""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys

from textinv.errors import UserError

# Disk full, read-only or forbidden output: the user's environment, not a bug.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EPERM, errno.ENOTDIR,
                       errno.ENAMETOOLONG, errno.EISDIR, errno.EIO}


class _Signals:
    """While a command runs: SIGTERM (whose default ends the process without a word) and Ctrl-C outside the places
    that handle them (training, the baseline run) end it with one line saying so. Main thread only; the previous
    handlers come back afterwards."""

    def __enter__(self):
        import signal
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            def stop(signum, frame):
                from textinv.errors import Interrupted

                raise Interrupted(f"stopped by {signal.Signals(signum).name} before the command finished; files "
                                  "already written are complete (atomic writes); re-run the same command (train.py "
                                  "resumes from its last checkpoint if it wrote one)", signum)

            self.previous = signal.signal(signal.SIGTERM, stop)
        return self

    def __exit__(self, *exc):
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def exit_on_user_error(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _Signals():
                return fn(*args, **kwargs)
        except KeyboardInterrupt:
            if os.environ.get("TEXTINV_TRACEBACK"):
                raise
            print("error: stopped by SIGINT (Ctrl-C) before the command finished; files already written are complete "
                  "(atomic writes); re-run the same command (train.py resumes from its last checkpoint if it wrote "
                  "one)", file=sys.stderr, flush=True)
            sys.exit(130)
        except UserError as err:
            if os.environ.get("TEXTINV_TRACEBACK"):
                raise
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(err.exit_code)
        except OSError as err:
            if err.errno not in _ENVIRONMENT_ERRNOS or os.environ.get("TEXTINV_TRACEBACK"):
                raise
            print(f"error: cannot write {err.filename or 'an output file'}: {err.strerror}; free space or choose a "
                  "writable hydra.run.dir=...; files already written are complete (atomic writes)",
                  file=sys.stderr, flush=True)
            sys.exit(2)
    return wrapper


def reject_conflicting_overrides(argv: list[str]) -> None:
    """Hydra silently keeps the last of `lr=1e-3 lr=2e-3`; a sweep typo like that must not go unnoticed."""
    seen: dict[str, str] = {}
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in seen and seen[key] != arg:
            print(f"error: conflicting overrides {seen[key]!r} and {arg!r}; give {key} once "
                  f"(for a sweep: -m {key}=a,b)", file=sys.stderr, flush=True)
            sys.exit(2)
        seen[key] = arg


def hydra_error_line(ex: BaseException) -> str:
    """A Hydra composition error (several lines: what, how to append, the key's path, options) as one line."""
    import re

    text = str(ex).strip()
    cause = ex.__cause__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(ex).__name__
    m = re.match(r"Could not override '([^']+)'\.?", first)
    if m:
        why = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
        if "not in struct" in why or any("To append" in line for line in lines):
            return (f"{m.group(1)}: no such key in the config; check its spelling (`python train.py --cfg job` lists "
                    f"every key), or add a new one with +{m.group(1)}=...")
        return f"could not override {m.group(1)}: {why or 'see --cfg job'}"
    if "Available options" in text or "Could not find" in text:
        options = []
        for line in lines[1:]:
            if line.startswith("Config search path"):
                break
            if not line.startswith(("Available options", "See https", "In '")):
                options.append(line)
        m = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
        what = f"{m.group(1)}={m.group(2)}: no such {m.group(1)} config" if m else first
        return f"{what}; available: {', '.join(options)}" if options else what
    if "override_grammar" in text or type(ex).__name__ == "OverrideParseException":
        return (f"an override does not parse ({first}); write key=value, and quote values with spaces or "
                "special characters, e.g. 'prompt=\"a cat, at dusk\"'")
    return "; ".join(lines[:3])


def one_line_hydra_errors() -> None:
    """Hydra reports a mistake in the overrides (a misspelled key, an unknown choice, an override that does not
    parse) over several lines with exit 1; train.py and generate.py report it like every other mistake: one line,
    exit 2 (HYDRA_FULL_ERROR=1 still shows Hydra's own report)."""
    import hydra._internal.utils as hydra_utils
    from hydra.errors import CompactHydraException, InstantiationException

    original = hydra_utils.run_and_report

    def run_and_report(func):
        def guarded():
            try:
                return func()
            except CompactHydraException as ex:
                if isinstance(ex, InstantiationException) or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print(f"error: {hydra_error_line(ex)}", file=sys.stderr, flush=True)
                sys.exit(2)
        return original(guarded)

    hydra_utils.run_and_report = run_and_report


# Config keys that moved: an old override fails with one line naming the new key (Hydra's own error is
# several lines and does not say where the key went).
MOVED_KEYS = {"module.num_vectors": "method.num_vectors", "module.init_method": "method.init_method"}


def reject_moved_keys(argv: list[str]) -> None:
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in MOVED_KEYS:
            value = arg.split("=", 1)[1] if "=" in arg else "..."
            print(f"error: {key} is now {MOVED_KEYS[key]}; use {MOVED_KEYS[key]}={value}", file=sys.stderr,
                  flush=True)
            sys.exit(2)


def check_output_dir_override(argv: list[str]) -> None:
    """Hydra creates `hydra.run.dir` (and its log) before the job runs and fails there with a traceback;
    catch an unusable directory first."""
    for arg in argv:
        if arg.startswith(("hydra.run.dir=", "hydra.sweep.dir=")):
            key, value = arg.split("=", 1)
            path = os.path.abspath(os.path.expanduser(value.strip("'\"")))
            probe = path
            while not os.path.exists(probe):
                probe = os.path.dirname(probe)
            if not os.path.isdir(probe) or not os.access(probe, os.W_OK):
                why = "is not a directory" if not os.path.isdir(probe) else "is not writable"
                print(f"error: {key}={value}: {probe} {why}; choose a writable folder", file=sys.stderr, flush=True)
                sys.exit(2)


class Parser(argparse.ArgumentParser):
    """argparse for every `python -m textinv ...` command and experiments/ script: a bad argument is one line
    (`error: <prog>: <what>; see <prog> --help`) and exit 2, like every other user mistake (argparse's own
    error prints the usage block first). Sub-commands get the same class."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        print(f"error: {self.prog}: {message}; see {self.prog} --help", file=sys.stderr, flush=True)
        sys.exit(2)


def bounded_int(low: int, high: int):
    """An argparse type: a whole number in [low, high], else one line naming the range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} must be from {low} to {high}")
        return value
    return parse


def new_output_file(value: str, flag: str = "OUT"):
    """An output file the command creates: never an existing file (it would be overwritten), nor a path under a
    file or an unwritable folder (missing folders are made)."""
    from pathlib import Path

    path = Path(value).expanduser()
    if path.is_file() or path.is_symlink():
        raise UserError(f"{flag} {value} already exists; this command never overwrites a file it did not write: "
                        "choose a new name or move it away")
    check_writable_folder(path.parent, f"{flag} {value}", "is a file, not a folder; choose another path")
    return path


def out_folder(value: str):
    """--out: a folder (made if missing), never an existing file; its files are written inside it only."""
    from pathlib import Path

    path = Path(value).expanduser()
    check_writable_folder(path, f"--out {value}", "is an existing file, not a folder; choose a folder")
    return path


def check_writable_folder(path, what: str, not_a_folder: str) -> None:
    """Missing folders are made later: the nearest existing one at or above `path` must be a writable folder.
    `what` names the argument ("--out x"), `not_a_folder` ends the refusal when that nearest one is a file."""
    from pathlib import Path

    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what}: {probe} {not_a_folder}")
    if not os.access(probe, os.W_OK):
        raise UserError(f"{what}: {probe} is not writable; choose a writable folder")


OUTPUT_RECORD = ".textinv-outputs.json"  # in an --out folder: the file names textinv commands write there


def claim_outputs(out, patterns: list[str], command: str) -> None:
    """Before a command writes into --out: a file there whose name it would write (a regex of `patterns`) must have
    been written by a textinv command (the folder's record claims the pattern), else one line refuses, so a user's
    own `table.md` or `grid.png` is never overwritten. Then the record claims the patterns (written first: a
    command stopped half-way leaves only files it may rewrite)."""
    import json
    import re
    from pathlib import Path

    from textinv.utils.atomic import atomic_write_text

    out = Path(out)
    record = out / OUTPUT_RECORD
    claimed: list[str] = []
    if record.is_file():
        try:
            claimed = list(json.loads(record.read_text(encoding="utf-8"))["patterns"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise UserError(f"--out {out}: its {OUTPUT_RECORD} is unreadable, so which files textinv wrote there is "
                            "unknown; choose a new --out folder") from None
    if out.is_dir():
        ours = [re.compile(f"^(?:{p})$") for p in claimed]
        theirs = sorted(p.name for p in out.iterdir() if p.name != OUTPUT_RECORD
                        and any(re.match(f"^(?:{pat})$", p.name) for pat in patterns)
                        and not any(o.match(p.name) for o in ours))
        if theirs:
            raise UserError(f"--out {out} already holds {', '.join(theirs[:3])}{', ...' if len(theirs) > 3 else ''}, "
                            f"not written by textinv; {command} never overwrites them: choose another --out folder")
    out.mkdir(parents=True, exist_ok=True)
    merged = sorted(set(claimed) | set(patterns))
    if merged != sorted(claimed):
        atomic_write_text(record, json.dumps({"patterns": merged}, indent=2))


def results_parser(doc: str, metavar: str):
    """The arguments experiments/table.py and sweep.py share: runs to read, where to write, W&B, unfinished runs."""
    p = Parser(description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    p.add_argument("runs", nargs="+", metavar=metavar, help="run directories or sweep folders holding them")
    p.add_argument("--out", type=out_folder, required=True, help="output folder")
    p.add_argument("--no-wandb", action="store_true", help="do not log an (offline) W&B run")
    p.add_argument("--include-unfinished", action="store_true",
                   help="also use runs without run.json (their latest evaluation)")
    return p


def script_logging() -> None:
    """Log lines of the experiments/ scripts: `LEVEL: message` on stderr, matplotlib's chatter off."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
