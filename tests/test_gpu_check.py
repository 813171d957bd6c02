"""`make gpu-check` without a GPU: the same script on the tiny models on the CPU, saying so (textinv.bench.gpu_check)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_script


@pytest.mark.timeout(1800)
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, make gpu-check measures the real architectures")
def test_gpu_check_runs_on_the_cpu_with_tiny_models_and_says_so(tmp_path):
    out = tmp_path / "gpu-check.json"
    # --no-compile: the compile=true part is the bench's train_compiled (tests/test_speed.py checks compile=true);
    # dynamo tracing the tiny UNet took minutes on a loaded 2-core machine
    proc = run_script("-m textinv.bench.gpu_check", "--steps", "2", "--sweeps", "seed", "--no-compile", "--json", out,
                      timeout=1700)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "NO GPU here" in text and "NOT GPU figures" in text and "NOT GPU-hours" in text
    assert "gpu-check passed" in text and "(CPU, tiny models)" in text
    report = json.loads(out.read_text())
    assert report["gpu"] is False and report["failed"] == []
    for model in ("tiny", "sdxl_tiny"):
        assert len(report[model]["train"]["seconds"]) == 2 and report[model]["train"]["peak_memory_gb"] > 0
        assert report[model]["generate_rates"]["images_per_s"] > 0
    assert "2-rank DDP: skipped (no GPU" in text
    hours = report["study_gpu_hours"]
    assert hours["seed"]["points"] == 4 and hours["all"]["total_h"] > 0  # sweep=seed: seeds 0-3
    assert "diffusers' textual_inversion.py: not given" in text
