"""The suite's warm interpreter (tests/warm_python.py) behaves as a fresh `python script.py` would: exit codes,
stdout/stderr, argv, cwd, environment, signals, and a fresh interpreter where the environment needs one."""

from __future__ import annotations

import os
import signal
import time

import pytest

import conftest
from conftest import run_script, start_script

SCRIPT = """
import os, sys
print("argv", sys.argv[1:], "cwd", os.getcwd(), "name", __name__)
print("env", os.environ.get("WANDB_SILENT"), file=sys.stderr)
print("warm", "torch" in sys.modules, file=sys.stderr)  # a fresh interpreter has not imported torch yet
if sys.argv[1:] == ["sleep"]:
    import time
    open(sys.argv[0] + ".started", "w").close()
    time.sleep(60)
if sys.argv[1:] == ["boom"]:
    raise ValueError("boom")
sys.exit(int(sys.argv[1]) if sys.argv[1:] and sys.argv[1].isdigit() else 0)
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(SCRIPT)
    return path


@pytest.mark.skipif(os.environ.get("TEXTINV_TEST_FRESH") == "1", reason="TEXTINV_TEST_FRESH=1: no warm interpreter")
def test_a_warm_child_reports_like_a_fresh_process(script, monkeypatch):
    env = {"WANDB_SILENT": "x"}  # read when wandb loads, after the fork: the warm interpreter may change it
    results = {}
    for fresh in (False, True):
        monkeypatch.setenv("TEXTINV_TEST_FRESH", "1" if fresh else "0")
        results[fresh] = [run_script(str(script), *args, cwd=script.parent, env=env)
                          for args in (["3"], ["a b"], ["boom"])]
    assert conftest._ZYGOTE is not None and conftest._ZYGOTE.proc.poll() is None
    for warm, fresh in zip(results[False], results[True]):
        assert (warm.returncode, warm.stdout) == (fresh.returncode, fresh.stdout)
        assert warm.stderr.splitlines()[0] == fresh.stderr.splitlines()[0] == "env x"
        assert warm.stderr.splitlines()[1] == "warm True" and fresh.stderr.splitlines()[1] == "warm False"
    assert [r.returncode for r in results[False]] == [3, 0, 1]
    assert results[False][1].stdout == f"argv ['a b'] cwd {script.parent} name __main__\n"
    assert results[False][2].stderr.rstrip().endswith("ValueError: boom")


def test_a_signal_ends_a_warm_child_as_it_ends_a_process(script):
    proc = start_script(str(script), "sleep")
    deadline = time.time() + 60
    while not (script.parent / "probe.py.started").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM


def test_an_import_time_variable_gets_a_fresh_interpreter(script):
    assert run_script(str(script), "0").returncode == 0
    # read by huggingface_hub as it loads: a child forked after that import would not see the change
    proc = run_script(str(script), "5", env={"HF_HUB_OFFLINE": "0"})
    assert proc.returncode == 5 and "warm False" in proc.stderr
