"""Start a project script as its own process, forked from a warm interpreter (tests only).

Importing torch, Lightning, diffusers and transformers costs a fresh interpreter about 9 CPU seconds on these
machines, and the suite starts train.py, generate.py and `python -m textinv ...` dozens of times: most of those
runs' CPU went to imports. A "zygote" per test worker imports them once, then forks one child per request. The
child is a real separate process (its own pid, exit code, signals, stdout/stderr, files) that runs the script as
`__main__`, as `python script.py args` or `python -m module args` would; only the imports were done before the
fork. The zygote never runs torch code or starts a thread, so nothing is forked mid-flight.

What a fork cannot give, a fresh interpreter still does (conftest's `run_script` and `start_script` fall back to
one): an environment whose import-time variables differ from the zygote's (HF_HUB_OFFLINE, OMP_NUM_THREADS, ...:
read by the libraries as they load). DDP ranks are started by Lightning with sys.executable: always fresh.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# Variables read after import (per call) by the code under test, or by the test harness only: a child may change
# them. Lightning, tokenizers and inductor set some of them in the worker itself during in-process runs
# (PL_GLOBAL_SEED, TOKENIZERS_PARALLELISM, TORCHINDUCTOR_CACHE_DIR, ...). Any other difference from the zygote's
# environment means a fresh interpreter.
LATE_READ_ENV = ("WANDB_", "PYTHONUNBUFFERED", "COLUMNS", "LINES", "PYTEST_", "TEXTINV_TEST_", "PL_GLOBAL_SEED",
                 "PL_SEED_WORKERS", "TOKENIZERS_PARALLELISM", "TORCHINDUCTOR_CACHE_DIR",
                 "PYTORCH_NVML_BASED_CUDA_CHECK")  # prefixes

PRELOAD = ("torch", "lightning", "diffusers", "transformers", "hydra", "open_clip", "textinv.training.job",
           "textinv.models.generation")

_ZYGOTE_SOURCE = r"""
import atexit, importlib, io, json, os, runpy, select, signal, sys, traceback
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)


def child(req):
    os.setpgid(0, 0)  # its own process group: a timeout kills the child and whatever it started
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY),
                            (2, req["stderr"], os.O_WRONLY)):
        f = os.open(path, flags)
        os.dup2(f, fd)
        os.close(f)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True, line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True, line_buffering=True,
                                  errors="backslashreplace")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    code = 0
    try:
        if req["module"]:
            sys.argv = [req["module"], *req["args"]]
            sys.path[0] = req["cwd"]
            runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
        else:
            sys.argv = [req["script"], *req["args"]]
            sys.path[0] = os.path.dirname(req["script"])
            runpy.run_path(req["script"], run_name="__main__")
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    try:  # as the interpreter ends: threading's exit hooks and non-daemon threads first (pool managers), then atexit
        import threading
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        if code == -signal.SIGINT:  # as CPython ends on an uncaught KeyboardInterrupt: killed by SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code & 0xFF)


def reply(msg):
    os.write(1, (json.dumps(msg) + "\n").encode())


pending, running = b"", set()
while True:
    ready, _, _ = select.select([0], [], [], 0.05)
    if ready:
        data = os.read(0, 1 << 16)
        if not data:
            break
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            req = json.loads(line)
            pid = os.fork()
            if pid == 0:
                child(req)
            running.add(pid)
            reply({"id": req["id"], "pid": pid})
    while running:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        running.discard(pid)
        reply({"pid": pid, "code": os.waitstatus_to_exitcode(status)})
"""


class WarmProcess:
    """The part of subprocess.Popen the tests use, for a child of the zygote."""

    def __init__(self, zygote: "Zygote", argv: list[str], pid: int, folder: tempfile.TemporaryDirectory,
                 capture: bool) -> None:
        self.args, self.pid, self._zygote, self._folder, self._capture = argv, pid, zygote, folder, capture
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self._zygote.exited(self.pid, 0):
            self.returncode = self._zygote.codes.pop(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self._zygote.exited(self.pid, timeout):
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = self._zygote.codes.pop(self.pid)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        self.wait(timeout)
        if not self._capture:
            return None, None
        folder = Path(self._folder.name)
        out, err = ((folder / name).read_text(errors="replace") for name in ("stdout", "stderr"))
        self._folder.cleanup()
        return out, err

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        if self.returncode is None:
            os.killpg(self.pid, signal.SIGKILL)


class Zygote:
    """One warm interpreter; `start` forks a child from it for each call."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = dict(env)
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE_SOURCE, json.dumps(PRELOAD)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=self.env, cwd=Path(__file__).parents[1])
        self.codes: dict[int, int] = {}
        self._pids: dict[int, int] = {}
        self._next_id = 0
        self._changed = threading.Condition()
        threading.Thread(target=self._read_replies, daemon=True).start()

    def _read_replies(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self._changed:
                if "id" in msg:
                    self._pids[msg["id"]] = msg["pid"]
                else:
                    self.codes[msg["pid"]] = msg["code"]
                self._changed.notify_all()

    def exited(self, pid: int, timeout: float | None) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: pid in self.codes, timeout)

    def can_run(self, env: dict[str, str]) -> bool:
        if self.proc.poll() is not None:
            return False
        keys = {k for k in set(env) | set(self.env) if not k.startswith(LATE_READ_ENV)}
        return all(env.get(k) == self.env.get(k) for k in keys)

    def start(self, argv: list[str], env: dict[str, str], cwd: str | Path, capture: bool = True) -> WarmProcess:
        """argv as for subprocess: sys.executable, then a script path or -m and a module, then the arguments."""
        module = argv[2] if argv[1] == "-m" else None
        script, args = (None, argv[3:]) if module else (str(argv[1]), argv[2:])
        folder = tempfile.TemporaryDirectory(prefix="zygote-")
        out, err = (Path(folder.name) / name for name in ("stdout", "stderr"))
        out.touch()
        err.touch()
        with self._changed:
            self._next_id += 1
            request_id = self._next_id
            request = {"id": request_id, "module": module, "script": script, "args": [str(a) for a in args],
                       "env": env, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            self._changed.wait_for(lambda: request_id in self._pids)
            pid = self._pids.pop(request_id)
        return WarmProcess(self, argv, pid, folder, capture)

    def run(self, argv: list[str], env: dict[str, str], cwd: str | Path, timeout: float) -> subprocess.CompletedProcess:
        proc = self.start(argv, env, cwd)
        try:
            out, err = proc.communicate(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
