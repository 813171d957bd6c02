"""method=hypernetwork through the real job: only the hypernetwork trains, its files load in both tools' rules,
resume checks its options, generate.py applies it with AUTOMATIC1111's prompt tags, bad options are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import CONF, ROOT, compose, tiny_overrides
from textinv.errors import UserError
from textinv.methods.hypernetwork.files import read_hypernetwork
from textinv.training.job import prepare, train
from tool_rules import a1111_hypernetwork, comfyui_hypernetwork

HN = ["method=hypernetwork", "lr=1e-3"]


@pytest.fixture(scope="module")
def hn_run(tmp_path_factory, demo_images):
    run_dir = tmp_path_factory.mktemp("hn") / "run"
    train(compose(*tiny_overrides(run_dir, demo_images, 4), *HN))
    return run_dir


def test_only_the_hypernetwork_trains_and_its_files_are_the_trained_weights(hn_run, tiny_source):
    summary = json.loads((hn_run / "run.json").read_text())
    assert summary["finished"] and summary["files"] == ["demo-toy.pt", "safetensors/demo-toy.safetensors"]
    ckpt = torch.load(hn_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    assert state and all(k.startswith("network.") for k in state)  # never the frozen model
    loaded = read_hypernetwork(hn_run / "demo-toy.pt")
    copy = read_hypernetwork(hn_run / "safetensors" / "demo-toy.safetensors")
    assert loaded.step == 4 and loaded.name == "demo-toy"
    trained = {k[len("network."):]: v for k, v in state.items()}
    for ours in (loaded, copy):
        for k, v in ours.hypernetwork.state_dict().items():
            assert torch.equal(v, trained[k]), k  # bitwise the trained weights
    init = type(loaded.hypernetwork)(loaded.hypernetwork.widths, loaded.hypernetwork.spec, seed=0)
    moved = [k for k, v in init.state_dict().items() if not torch.equal(v, trained[k])]
    assert moved  # training changed the network
    frozen = tiny_source.load()
    assert sorted(loaded.hypernetwork.widths) == sorted(
        {m.to_k.in_features for n, m in frozen.unet.named_modules() if n.endswith("attn1") or n.endswith("attn2")})
    for tool in (a1111_hypernetwork, comfyui_hypernetwork):
        rebuilt = tool(hn_run / "demo-toy.pt")
        x = torch.randn(2, 5, loaded.hypernetwork.widths[0])
        with torch.no_grad():
            assert torch.allclose(rebuilt[loaded.hypernetwork.widths[0]][1](x), loaded.hypernetwork.transform(x, 1))


def test_frozen_weights_stay_bitwise_and_get_no_gradient(tmp_path, demo_images, tiny_source):
    from hydra.utils import instantiate

    cfg = compose(*tiny_overrides(tmp_path / "r", demo_images, 2), *HN)
    _, _, concept, source, datamodule, method = prepare(cfg)
    module = instantiate(cfg.module, _convert_="all")(frozen=source.load(), method=method, seed=0)
    before = {k: v.clone() for k, v in module.unet.state_dict().items()}
    batch = next(iter(datamodule.train_dataloader())) if hasattr(datamodule, "train_dataloader") else None
    datamodule.setup("fit")
    module.build_latent_cache(datamodule.pixel_tensor())
    batch = next(iter(datamodule.train_dataloader()))
    loss = module.loss(batch)
    loss.backward()
    assert all(p.grad is None for p in module.unet.parameters()) and all(
        p.grad is None for p in module.text_encoder.parameters())
    grads = [p.grad for p in method.network.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert all(torch.equal(v, module.unet.state_dict()[k]) for k, v in before.items())
    assert "heart" not in batch["prompt"][0] and method.prompt("a photo of <demo-toy>") == "a photo of toy"


def test_resume_refuses_changed_options(tmp_path, demo_images):
    run_dir = tmp_path / "run"
    cfg = compose(*tiny_overrides(run_dir, demo_images, 2), *HN)
    train(cfg)
    (run_dir / "run.json").unlink()  # as if it had stopped at step 2: the checkpoint stays
    with pytest.raises(UserError, match="activation"):
        prepare(compose(*tiny_overrides(run_dir, demo_images, 4), *HN, "method.activation=relu"))


@pytest.mark.parametrize("override, says", [
    ("method.layer_structure=[2,1]", "start and end with 1"),
    ("method.activation=gelu", "method.activation='gelu' is unknown"),
    ("init=''", "initializer word"),
])
def test_bad_options_are_one_line_before_weights_load(tmp_path, demo_images, override, says):
    with pytest.raises(UserError, match=says) as err:
        prepare(compose(*tiny_overrides(tmp_path / "r", demo_images, 2), *HN, override))
    assert "\n" not in str(err.value)


def test_a_width_the_model_lacks_exits_2_with_one_line(tmp_path, demo_images, monkeypatch, capsys):
    """The real entry point (Hydra + exit_on_user_error), run in this process to save an interpreter start-up."""
    import runpy
    import sys

    monkeypatch.delenv("TEXTINV_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py", *tiny_overrides(tmp_path / "r", demo_images, 2), *HN,
                                      "method.widths=[999]", f"hydra.run.dir={tmp_path / 'r'}",
                                      "hydra/job_logging=none", "hydra/hydra_logging=none"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "no attention input of width 999" in err, err[-2000:]
    assert err.strip().count("\n") == 0 and not (tmp_path / "r" / "checkpoints").exists()


def generate(out, *overrides: str) -> Path:
    """generate.py's job in this process (an interpreter start-up and model build per call was most of the cost;
    test_generation.py runs the script itself)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from textinv.models.generation import run_generate

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("generate", overrides=["model=tiny", "num_images=1", "steps=3", "height=32", "width=32",
                                                   f"out_dir='{out}'", *overrides])
    return run_generate(cfg)


def test_generate_applies_it_with_prompt_tags_and_multiplier_zero_is_the_plain_model(hn_run, tmp_path):
    runs = {}
    for name, prompt, extra in [("tagged", "a toy <hypernet:demo-toy:0.5>", []),
                                ("zero", "a toy <hypernet:demo-toy:0>", []),
                                ("plain", "a toy", ["method=textual_inversion"]),
                                ("untagged", "a toy", [])]:
        hn = [] if extra else ["method=hypernetwork", f"hypernetworks=['{hn_run / 'demo-toy.pt'}']"]
        runs[name] = generate(tmp_path / name, *hn, *extra, f"prompt='{prompt}'")
    index = json.loads((runs["tagged"] / "images.json").read_text())
    assert index["hypernetworks"][0]["multiplier"] == 0.5 and index["images"][0]["prompt"] == "a toy"
    assert json.loads((runs["untagged"] / "images.json").read_text())["hypernetworks"][0]["multiplier"] == 1.0
    from PIL import Image
    import numpy as np

    px = {k: np.asarray(Image.open(v / "0000.png")) for k, v in runs.items()}
    assert np.array_equal(px["zero"], px["plain"])  # multiplier 0: x + mlp(x) * 0 is the untouched model
    assert not np.array_equal(px["untagged"], px["plain"])
    with pytest.raises(UserError, match="names no loaded file"):
        generate(tmp_path / "bad", "method=hypernetwork", f"hypernetworks=['{hn_run / 'demo-toy.pt'}']",
                 "prompt='a toy <hypernet:other:1>'")


def test_sdxl_trains_a_hypernetwork_at_its_own_widths(tmp_path, demo_images):
    from textinv.methods.hypernetwork.attach import attention_widths_from_config
    from textinv.models.frozen_sd import ModelSource

    run_dir = tmp_path / "xl"
    train(compose(*tiny_overrides(run_dir, demo_images, 2), "experiment=tiny_sdxl", *HN))
    loaded = read_hypernetwork(run_dir / "demo-toy.pt")
    source = instantiate_model("sdxl_tiny")
    assert loaded.hypernetwork.widths == attention_widths_from_config(source.unet_config())
    assert source.family.name == "sdxl" and isinstance(source, ModelSource)


def instantiate_model(name: str):
    from hydra.utils import instantiate

    return instantiate(compose(f"model={name}").model)
