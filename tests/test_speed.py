"""compile=true (textinv.models.speed): the compiled, channels-last, SDPA frozen model against eager.

Stated tolerances (fp32, CPU):
- training forward (loss) relative 1e-4, gradient of the trained vector absolute 1e-5 x its scale (inductor
  reorders float sums; aot_eager runs the same aten ops and is held to the same bounds);
- a trained embedding after a few steps, absolute 1e-5;
- sampled images (0-1 pixels) absolute 1e-4;
- determinism: the same setting twice gives bitwise the same images (CPU).
The default suite checks the plumbing with the aot_eager backend (dynamo and AOT autograd trace the same graphs,
in seconds); `make test-slow` checks inductor's generated code (minutes of C++ compile on a CPU).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from conftest import compose, embedding, tiny_overrides
from textinv.errors import UserError
from textinv.validation import check_value


def test_compile_is_a_validated_config_value():
    cfg = compose("experiment=tiny", "compile=true")
    assert cfg.compile is True and cfg.module.compile is True
    assert compose("experiment=tiny").module.compile is False
    with pytest.raises(UserError, match="compile='yes' must be true or false"):
        check_value("compile", "yes")
    with pytest.raises(UserError, match="module.compile_backend='tvm' is unknown"):
        check_value("module.compile_backend", "tvm")


def step_and_images(backend: str | None):
    """One training forward/backward through the placeholder (loss, gradient of the vector) and a few sampled
    images, on the tiny model, eager (backend None) or compile=true with `backend`."""
    from textinv.methods.textual_inversion.method import TextualInversion
    from textinv.models.frozen_sd import ModelSource
    from textinv.models.generation import ImageGenerator
    from textinv.models.speed import SpeedSettings, apply_speed

    frozen = ModelSource("tiny").load()
    method = TextualInversion("<demo-toy>", "toy", seed=0)
    method.attach(frozen)
    settings = apply_speed(frozen, SpeedSettings(backend is not None, backend or "inductor"))
    ids = frozen.family.tokenize(frozen.tokenizers, [method.prompt("a photo of a <demo-toy>")] * 2)
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    t = torch.tensor([10, 700])
    cond = frozen.family.encode(frozen.text_encoders, frozen.tokenizers, ids)
    pred = frozen.unet(frozen.noise_scheduler.add_noise(latents, noise, t), t,
                       **frozen.family.unet_kwargs(cond, None, torch.float32)).sample
    loss = torch.nn.functional.mse_loss(pred, noise)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in method.parameters()])
    gen = ImageGenerator.from_frozen(frozen, scheduler="ddim")
    method.use_in(gen)
    images = gen.generate(["a photo of a <demo-toy>", "a toy"], 2, seed=5, steps=3, batch_size=2, output_type="np")
    return float(loss), grad, np.stack([im for row in images for im in row]), settings


@pytest.fixture(scope="module")
def eager():
    return step_and_images(None)


@pytest.mark.timeout(1800)
def test_compiled_matches_eager_and_is_deterministic_aot_eager(eager):
    loss, grad, images, _ = eager
    c_loss, c_grad, c_images, settings = step_and_images("aot_eager")
    assert settings.applied[:2] == ["attention=sdpa", "channels_last"] and "torch.compile" in settings.applied[2]
    assert c_loss == pytest.approx(loss, rel=1e-4)
    assert torch.allclose(c_grad, grad, rtol=0, atol=1e-5 * float(grad.abs().max()))
    assert np.abs(c_images - images).max() <= 1e-4
    again = step_and_images("aot_eager")[2]
    assert np.array_equal(again, c_images)  # a given setting is deterministic


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_compiled_matches_eager_and_is_deterministic_inductor(eager):
    loss, grad, images, _ = eager
    c_loss, c_grad, c_images, _ = step_and_images("inductor")
    assert c_loss == pytest.approx(loss, rel=1e-4)
    assert torch.allclose(c_grad, grad, rtol=0, atol=1e-5 * float(grad.abs().max()))
    assert np.abs(c_images - images).max() <= 1e-4
    assert np.array_equal(step_and_images("inductor")[2], c_images)  # the cached generated code, same numbers


@pytest.mark.slow  # ~85 CPU-seconds: two tiny runs, one traced by dynamo
@pytest.mark.timeout(1800)
def test_a_compiled_run_trains_like_eager_and_reports_compile_time(tmp_path, demo_images, caplog):
    from textinv.training.job import train

    caplog.set_level(logging.INFO, logger="textinv")
    eager_run, compiled_run = tmp_path / "eager", tmp_path / "compiled"
    train(compose(*tiny_overrides(eager_run, demo_images, 3)))
    train(compose(*tiny_overrides(compiled_run, demo_images, 3), "compile=true", "module.compile_backend=aot_eager"))
    assert torch.allclose(embedding(compiled_run), embedding(eager_run), rtol=0, atol=1e-5)
    report = json.loads((compiled_run / "run.json").read_text())["compile"]
    assert report["applied"][1] == "channels_last"
    assert report["compile_s"] >= 0 and report["eager_step_s"] > 0 and report["compiled_step_s"] > 0
    assert "break_even_micro_step" in report
    log = caplog.text
    assert "compile=true: compile took" in log and ("pays off after micro-step" in log or "never pays off" in log)
    assert "compile" not in json.loads((eager_run / "run.json").read_text())


def test_sampling_graphs_fold_only_the_weights_no_method_trains():
    from textinv.methods.hypernetwork.method import Hypernetwork
    from textinv.methods.textual_inversion.method import TextualInversion
    from textinv.models.speed import SpeedSettings, frozen_parts

    inductor = SpeedSettings(True, "inductor")
    assert frozen_parts(inductor) == ["unet", "text_encoders", "vae"]  # the baseline row: nothing trains
    assert frozen_parts(inductor, TextualInversion.trains_inside) == ["unet", "vae"]  # its rows live in the encoders
    assert frozen_parts(inductor, Hypernetwork.trains_inside) == ["text_encoders", "vae"]  # its modules run in the UNet
    assert frozen_parts(SpeedSettings(True, "inductor", freeze=False)) == []
    assert frozen_parts(SpeedSettings(True, "aot_eager")) == []  # freezing is inductor's
    assert compose("experiment=tiny").module.compile_freeze is True
    with pytest.raises(UserError, match="module.compile_freeze='no' must be true or false"):
        check_value("module.compile_freeze", "no")


@pytest.mark.slow  # inductor compiles the tiny UNet's and text encoder's sampling graphs (minutes on a CPU)
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("method_name", ["textual_inversion", "hypernetwork"])
def test_compiled_sampling_follows_the_trained_state(method_name):
    """A sampling graph compiled before a training step must not keep the trained tensors of its first call."""
    from hydra.utils import instantiate

    from textinv.models.frozen_sd import ModelSource
    from textinv.models.generation import ImageGenerator
    from textinv.models.speed import SpeedSettings, apply_speed

    def images(backend):
        frozen = ModelSource("tiny").load()
        method = instantiate(compose("experiment=tiny", f"method={method_name}").method, _convert_="all")(
            word="<demo-toy>", initializer="toy")
        method.attach(frozen)
        apply_speed(frozen, SpeedSettings(backend is not None, backend or "inductor"), method.trains_inside)
        gen = ImageGenerator.from_frozen(frozen, scheduler="ddim")
        method.use_in(gen)
        sample = lambda: np.stack(gen.generate(["a photo of a <demo-toy>"], 1, seed=3, steps=2, output_type="np")[0])
        before = sample()
        with torch.no_grad():  # a training step's worth of change in every trained tensor
            for p in method.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
        return before, sample()

    eager_before, eager_after = images(None)
    assert np.abs(eager_after - eager_before).max() > 1e-2  # the change shows in eager sampling
    compiled_before, compiled_after = images("inductor")
    assert np.abs(compiled_before - eager_before).max() <= 1e-4
    assert np.abs(compiled_after - eager_after).max() <= 1e-4
