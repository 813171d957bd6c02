"""Shared fixtures. Everything runs offline on the tiny random model and the project's own images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# `make test` runs one pytest-xdist worker per core: each worker and the train.py/generate.py it starts then uses
# one torch thread (on these tiny models a second thread mostly waits, and two workers already fill two cores).
# Set before torch loads; the same in a worker and its subprocesses keeps their results bitwise comparable.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DREAMBOOTH = ROOT.parent / "shared" / "data" / "dreambooth"


@pytest.fixture(scope="session")
def tiny_source():
    from textinv.models.frozen_sd import ModelSource

    return ModelSource("tiny")


@pytest.fixture
def tiny_frozen(tiny_source):
    return tiny_source.load()


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory) -> Path:
    from textinv.data.demo_concept import synthesize_demo_concept

    folder = tmp_path_factory.mktemp("demo_concept")
    synthesize_demo_concept(folder, num_images=4, size=64)
    return folder


def compose(*overrides: str):
    """The train config as `python train.py <overrides>` would see it (no Hydra run needed)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def tiny_overrides(run_dir: Path, data_dir: Path, steps: int = 6, *extra: str) -> list[str]:
    return [
        "experiment=tiny", "logger=csv", f"run_dir='{run_dir}'", f"concept.data_dir='{data_dir}'",
        f"steps={steps}", "callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.embedding_writer.every_n_steps=2", "~callbacks.progress_bar", "eval=off", *extra,
    ]


# The miniature world's CLIP (64 px, 4 layers, shipped with the project) in place of experiment=tiny's random
# ViT-B-32, for tests whose assertions do not depend on which CLIP scores: the same Evaluator code path, while
# building and running a ViT-B-32 was most of an evaluated tiny run's CPU. test_metrics.py covers ViT-B-32 itself;
# test_table.py and test_sweep_report.py keep it (they assert its numbers and its "mean nothing" note).
SMALL_CLIP = ("+eval.clip._target_=textinv.toyworld.plugins.WorldClip", "eval.clip.arch=toyworld",
              "eval.clip.weights=null")


_ZYGOTE = None


def script_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


_SESSION_ENV = script_env()


def _zygote(env: dict[str, str]):
    """The worker's warm interpreter (tests/warm_python.py), or None where a fresh one is needed."""
    global _ZYGOTE
    if os.environ.get("TEXTINV_TEST_FRESH") == "1":
        return None
    if _ZYGOTE is None:
        from warm_python import Zygote

        _ZYGOTE = Zygote(_SESSION_ENV)  # the session's environment, not that of the test that happens to start it
    return _ZYGOTE if _ZYGOTE.can_run(env) else None


def _argv(script: str, args) -> list[str]:
    """`script` is a file relative to the project root, or "-m module"."""
    head = ["-m", script[3:]] if script.startswith("-m ") else [str(ROOT / script)]
    return [sys.executable, *head, *map(str, args)]


def run_script(script: str, *args: str, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    """`python <script> args` (or `python -m module args`: script="-m module") in its own process: stdout, stderr,
    exit code. Forked from a warm interpreter where the environment allows (tests/warm_python.py)."""
    env = {**script_env(), **kw.pop("env", {})}
    cwd = kw.pop("cwd", ROOT)
    zygote = None if kw else _zygote(env)
    if zygote is not None:
        return zygote.run(_argv(script, args), env, cwd, timeout)
    return subprocess.run(_argv(script, args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def start_script(script: str, *args: str, capture: bool = True, env: dict[str, str] | None = None):
    """Like run_script, without waiting: a Popen-like process (pid, send_signal, wait, communicate -> text)."""
    env = {**script_env(), **(env or {})}
    zygote = _zygote(env)
    if zygote is not None:
        return zygote.start(_argv(script, args), env, ROOT, capture)
    pipe = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(_argv(script, args), cwd=ROOT, env=env, stdout=pipe, stderr=pipe, text=True)


def pytest_sessionfinish(session, exitstatus):
    if _ZYGOTE is not None:
        _ZYGOTE.close()


def load_script(name: str):
    """experiments/<name>.py as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"experiments_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def embedding(run_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "diffusers/learned_embeds.safetensors"))["<demo-toy>"]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, demo_images) -> Path:
    """One uninterrupted 6-step run through the real train.py entry point (seed 0)."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    proc = run_script("train.py", *tiny_overrides(run_dir, demo_images), f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


# --- the web page (tests/test_app*.py) ------------------------------------------------------------
APP_RUN_ARGS = ["experiment=toyworld", "concept=toy_heart", "logger=csv", "~callbacks.progress_bar",
                "trainer.log_every_n_steps=1", "eval.every_n_steps=2", "eval.num_images=1", "eval.sampler_steps=2",
                "eval.light.num_images=1", "eval.light.sampler_steps=1",
                "callbacks.model_checkpoint.every_n_train_steps=2", "callbacks.embedding_writer.every_n_steps=2",
                "callbacks.validation_loss.every_n_steps=2"]


@pytest.fixture(scope="session")
def app_runs(tmp_path_factory) -> Path:
    """A runs folder as `make demo` leaves it, in miniature: demo/baseline (the SD row) and demo/ti (2 steps of
    textual inversion on the toy world), evaluated at steps 0 and 2 with one image per prompt."""
    from textinv.training.job import train

    root = tmp_path_factory.mktemp("app") / "outputs"
    cache = root.parent / "baseline_cache"
    common = [*APP_RUN_ARGS, f"eval.baseline_cache='{cache}'", "steps=2"]
    train(compose(*common, f"run_dir='{root / 'demo' / 'baseline'}'", "baseline=true"))
    train(compose(*common, f"run_dir='{root / 'demo' / 'ti'}'", "eval.at_steps=[0]"))
    return root


# TEXTINV_TEST_CPU=1: per test (setup + call + teardown), this process's CPU time plus its children's (tests
# that start train.py/generate.py spend theirs in children); the 40 costliest are printed at the end. CPU, not
# wall time, because the machines this suite runs on are shared.
_CPU_COST: dict[str, float] = {}


def _cpu_now() -> float:
    import resource
    import time

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


if os.environ.get("TEXTINV_TEST_CPU") == "1":
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        start = _cpu_now()
        yield
        _CPU_COST[item.nodeid] = _CPU_COST.get(item.nodeid, 0.0) + _cpu_now() - start

    def pytest_terminal_summary(terminalreporter):
        costs = sorted(_CPU_COST.items(), key=lambda kv: -kv[1])
        terminalreporter.write_sep("=", f"CPU seconds per test (total {sum(_CPU_COST.values()):.1f} s)")
        for nodeid, seconds in costs[:40]:
            terminalreporter.write_line(f"{seconds:8.1f}  {nodeid}")


# Under pytest-xdist (`make test`) each worker takes whole files, in collection order: the longest files start
# first, so none is left running alone at the end (ordered by the CPU seconds TEXTINV_TEST_CPU=1 reported).
LONGEST_FIRST = ("test_learning.py", "test_eval_cost.py", "test_table.py", "test_sdxl.py", "test_reliability.py",
                 "test_train.py", "test_sweeps.py", "test_bad_input.py", "test_generation.py",
                 "test_hypernetwork_training.py", "test_sweep_report.py", "test_metrics.py", "test_app.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: order within a file kept
