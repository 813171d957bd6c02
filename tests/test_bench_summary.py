"""make bench's summary over alternating repeats: paired ratios, compile time, the 50-step projection."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def generation_run(seconds: float, decode: float, warmup: float) -> dict:
    return {"seconds": {"batched": seconds}, "images": 2, "gen_steps": 5, "gen_batch": 2,
            "decode_s_per_image": {"batched": decode}, "warmup_s": warmup}


def test_compiled_generation_is_paired_per_repeat_and_projected_to_50_steps(capsys):
    from textinv.bench.main import repeat_summary

    runs = {"generate": [generation_run(10.0, 1.0, 1.0), generation_run(12.0, 1.0, 1.5)],
            "generate_compiled": [generation_run(8.0, 0.5, 3.0), generation_run(8.0, 0.5, 2.5)]}
    out = repeat_summary(runs, SimpleNamespace(repeats=2), [])
    # s per image: eager 5 and 6, compiled 4 and 4 -> 1.25x and 1.5x
    assert out["gen_compile_speedup"] == {"median": 1.375, "min": 1.25, "max": 1.5, "n": 2}
    # 50 steps: eager (5 - 1) / 5 x 50 + 1 = 41 and (6 - 1) / 5 x 50 + 1 = 51; compiled (4 - 0.5) / 5 x 50 + 0.5 = 35.5
    assert out["gen_compile_speedup_at_50_steps"]["min"] == pytest.approx(41 / 35.5, abs=1e-3)
    assert out["gen_compile_speedup_at_50_steps"]["max"] == pytest.approx(51 / 35.5, abs=1e-3)
    assert out["gen_compile_s"] == {"median": 1.5, "min": 1.0, "max": 2.0, "n": 2}
    text = capsys.readouterr().out
    assert "target >= 1.30: met" in text and "projected to 50 sampler steps" in text


def test_a_generation_report_of_batched_calls_only_has_no_single_figures():
    from textinv.bench.main import generation_report

    g = {**generation_run(10.0, 1.0, 1.0), "max_pixel_diff": None}
    rep = generation_report(g)
    assert rep["gen_batched_s_per_image"] == 5.0 and rep["gen_batched_s_per_image_step"] == 0.8
    assert rep["gen_batched_images_per_s_at_50_steps"] == pytest.approx(1 / 41, abs=1e-4)
    assert "gen_single_s_per_image" not in rep and "gen_speedup" not in rep


def test_each_part_process_gets_every_option_that_shapes_it(monkeypatch):
    """run_part starts `python -m textinv.bench --part P ...`: options left off would run a different part."""
    import subprocess

    from textinv.bench import main as bench

    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 0, stdout='{"seconds": [1.0]}\n', stderr="")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    args = SimpleNamespace(model="sd15_arch", resolution=256, steps=4, device="cpu", gen_steps=5, gen_images=2,
                           gen_batch=2, compile_backend="inductor", gen_modes="batched", precision="bf16-mixed",
                           gen_dtype="bfloat16", peer_script=None)
    assert bench.run_part("generate", args) == {"seconds": [1.0]}
    cmd = seen["cmd"]
    for flag, value in (("--part", "generate"), ("--gen-modes", "batched"), ("--precision", "bf16-mixed"),
                        ("--gen-dtype", "bfloat16"), ("--gen-steps", "5"), ("--compile-backend", "inductor")):
        assert cmd[cmd.index(flag) + 1] == value


def test_projections_aim_at_the_full_protocols_sampler_steps():
    from textinv.bench.main import EVAL_STEPS
    from textinv.evaluation.evaluator import EvalConfig

    assert EVAL_STEPS == EvalConfig().sampler_steps
