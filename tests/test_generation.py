"""Generation: fixed seeds, batch invariance, embedding files, the prompt cache, generate.py (tiny model)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import start_script
from textinv.errors import UserError
from textinv.methods.textual_inversion.formats import save_a1111, save_diffusers
from textinv.models.frozen_sd import ModelSource
from textinv.models.generation import ImageGenerator, check_sampling, make_scheduler, quote_text_overrides
from textinv.methods.textual_inversion.loading import load_embeddings, spell_out_words
from textinv.methods.textual_inversion.placeholder import add_placeholder

ROOT = Path(__file__).resolve().parents[1]
STEPS, SIZE, DIM = 3, 32, 32
FAST = dict(steps=STEPS, height=SIZE, width=SIZE, output_type="np")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model gains nothing from threads, and loses a lot when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def frozen():
    return ModelSource("tiny").load()


@pytest.fixture
def fresh(frozen):
    """The shared tiny model with its own tokenizer and text encoder (loading embeddings changes those)."""
    return dataclasses.replace(frozen, tokenizer=copy.deepcopy(frozen.tokenizer),
                               text_encoder=copy.deepcopy(frozen.text_encoder))


@pytest.fixture(scope="module")
def gen(frozen):
    return ImageGenerator.from_frozen(frozen)


def vectors(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.abs(a - b).max()) > 1e-3


def test_same_seed_same_images_and_pil_output(gen):
    a = gen.generate("a photo of a dog", 2, seed=7, **FAST)[0]
    b = gen.generate("a photo of a dog", 2, seed=7, **FAST)[0]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    pil = gen.generate("a photo of a dog", 1, seed=7, steps=STEPS)[0][0]  # default: PIL at the model's size
    assert isinstance(pil, Image.Image) and pil.size == (SIZE, SIZE)


def test_batching_does_not_change_images(gen):
    prompts = ["a photo of a dog", "a red house"]
    one_batch = gen.generate(prompts, 3, seed=3, batch_size=6, **FAST)  # 6 images, one pipeline call
    for batch_size in (1, 4):  # one per call; uneven chunks that mix prompts
        other = gen.generate(prompts, 4, seed=3, batch_size=batch_size, **FAST)
        for row_a, row_b in zip(one_batch, other):
            for x, y in zip(row_a, row_b):
                np.testing.assert_allclose(x, y, atol=1e-4)
    # image k of a prompt is the same whether asked for alone (seed + k) or inside a larger request
    alone = gen.generate(prompts[1], 1, seed=3 + 2, **FAST)[0][0]
    np.testing.assert_allclose(alone, one_batch[1][2], atol=1e-4)


def test_different_seeds_differ(gen):
    images = gen.generate("a photo of a dog", 3, seed=0, **FAST)[0]
    assert differ(images[0], images[1]) and differ(images[1], images[2])
    other = gen.generate("a photo of a dog", 1, seed=100, **FAST)[0][0]
    assert all(differ(other, x) for x in images)


def test_dpm_scheduler_and_unknown_scheduler(frozen):
    dpm = ImageGenerator.from_frozen(frozen, scheduler="dpm")
    assert type(dpm.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    ddim = make_scheduler(frozen.noise_scheduler, "ddim")
    assert ddim.config.set_alpha_to_one is False and ddim.config.beta_schedule == "scaled_linear"
    assert dpm.generate("a dog", 1, **FAST)[0][0].shape == (SIZE, SIZE, 3)
    with pytest.raises(UserError, match="scheduler='euler' is unknown"):
        ImageGenerator.from_frozen(frozen, scheduler="euler")


def test_two_embedding_files_compose_in_one_prompt(fresh, tmp_path):
    a_vec, b_vec = vectors(1, 1), vectors(2, 2)
    a = save_diffusers(tmp_path / "learned_embeds.safetensors", "<a-tok>", a_vec)
    b = save_a1111(tmp_path / "b-tok.pt", "b-tok", b_vec)  # two vectors: b-tok, b-tok_1
    g = ImageGenerator.from_frozen(fresh)
    assert load_embeddings(g, [a, b]) == ["<a-tok>", "b-tok"]
    weight = fresh.text_encoder.get_input_embeddings().weight
    ids = fresh.tokenizer.convert_tokens_to_ids(["<a-tok>", "b-tok", "b-tok_1"])
    torch.testing.assert_close(weight[ids], torch.cat([a_vec, b_vec]))
    # multi-vector tokens are spelled out (case-insensitively, as the tokenizer matches them)
    row = g.token_ids(["a <A-TOK> with b-tok"])[0].tolist()
    assert all(i in row for i in ids)

    prompts = ["a photo of <a-tok> with b-tok", "a photo of <a-tok> with a dog",
               "a photo of a dog with b-tok", "a photo of a dog with a dog"]
    both, only_a, only_b, plain = [r[0] for r in g.generate(prompts, 1, seed=0, **FAST)]
    assert differ(both, only_a) and differ(both, only_b)  # each file's token changes the image
    assert differ(only_a, plain) and differ(only_b, plain)


def test_embedding_file_errors(fresh, tmp_path):
    g = ImageGenerator.from_frozen(fresh)
    wrong_dim = save_diffusers(tmp_path / "wide.safetensors", "<wide>", torch.randn(1, 768))
    with pytest.raises(UserError, match="dimension 768 does not match"):
        load_embeddings(g, [wrong_dim])
    word = save_a1111(tmp_path / "cat.pt", "cat", vectors(1, 0))  # "cat" is a word: it would hijack it
    with pytest.raises(UserError, match="existing word"):
        load_embeddings(g, [word])
    load_embeddings(g, [word], tokens=["<my-cat>"])  # renamed, it loads
    again = save_diffusers(tmp_path / "again.safetensors", "<my-cat>", vectors(1, 1))
    with pytest.raises(UserError, match="already loaded"):
        load_embeddings(g, [again])
    one, two = (save_diffusers(tmp_path / f"{n}.safetensors", "<same>", vectors(1, n)) for n in (1, 2))
    with pytest.raises(UserError, match="both use the token"):
        load_embeddings(g, [one, two])
    with pytest.raises(UserError, match="does not exist"):
        load_embeddings(g, [tmp_path / "missing.safetensors"])
    for bad in (dict(num_images=0), dict(steps=0), dict(batch_size=-1), dict(height=30)):
        args = dict(num_images=1, steps=1, batch_size=1, height=32, width=32) | bad
        with pytest.raises(UserError):
            check_sampling(**args)


def test_prompt_cache_and_live_placeholder(fresh):
    placeholder = add_placeholder(fresh.tokenizer, fresh.text_encoder, "<ph>", num_vectors=2, initializer="dog")
    g = ImageGenerator.from_frozen(fresh)
    spell_out_words(g)  # what the training method does for evaluation (TextualInversion.use_in)
    calls = []
    fresh.text_encoder.register_forward_pre_hook(lambda module, args: calls.append(1))

    g.generate("a photo of a dog", 2, **FAST)
    assert len(calls) == 2  # the prompt and the (empty) negative prompt, each encoded once
    plain = g.generate("a photo of a dog", 2, **FAST)[0]
    assert len(calls) == 2  # both come from the cache now

    first = g.generate("a photo of <ph>", 1, **FAST)[0][0]
    assert len(calls) == 3  # the learned prompt is encoded; the negative prompt is still cached
    with torch.no_grad():  # a training step moves the vectors: evaluation must see it
        placeholder_vectors = fresh.text_encoder.get_input_embeddings().vectors
        placeholder_vectors.add_(torch.randn_like(placeholder_vectors))
    second = g.generate("a photo of <ph>", 1, **FAST)[0][0]
    assert len(calls) == 4 and differ(first, second)
    assert all(np.array_equal(x, y) for x, y in zip(plain, g.generate("a photo of a dog", 2, **FAST)[0]))
    # the placeholder is spelled out as <ph> <ph>_1, like in training
    assert placeholder.token_ids[1] in g.token_ids(["a photo of <ph>"])[0].tolist()
    with pytest.raises(RuntimeError, match="training placeholder"):
        load_embeddings(g, [Path("unused.safetensors")])


def test_run_generate_in_process_warns_when_no_token_used(tmp_path, caplog):
    from hydra import compose, initialize_config_dir

    from textinv.models.generation import run_generate

    emb = save_diffusers(tmp_path / "learned_embeds.safetensors", "<demo-toy>", vectors(1, 0))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=[
            "model=tiny", "prompt='a photo of a dog'", f"embeddings=[{emb}]", "num_images=2", f"steps={STEPS}",
            f"out_dir={tmp_path / 'out'}"])
    with caplog.at_level(logging.WARNING, logger="textinv.models.generation"):
        out = run_generate(cfg)
    assert "uses none of the loaded tokens" in caplog.text
    info = json.loads((out / "images.json").read_text())
    assert info["height"] == SIZE and [r["file"] for r in info["images"]] == ["0000.png", "0001.png"]


def test_quote_text_overrides():
    argv = ["generate.py", "prompt=A <t> in the forest, it's late", "negative_prompt=blurry\\", "prompt=[a,b]",
            "num_images=2", "prompt='already quoted'"]
    assert quote_text_overrides(argv) == [
        "generate.py", "prompt='A <t> in the forest, it\\'s late'", "negative_prompt='blurry\\\\'", "prompt=[a,b]",
        "num_images=2", "prompt='already quoted'"]


def _script(*args: str):
    return start_script("generate.py", *args, env={"OMP_NUM_THREADS": "1"})


def test_generate_script_writes_pngs_and_missing_file_exits_2(tmp_path):
    emb = save_diffusers(tmp_path / "learned_embeds.safetensors", "<demo-toy>", vectors(2, 0))
    common = ["model=tiny", "prompt=A <demo-toy> in the forest, at dusk", f"steps={STEPS}"]
    run_dir = tmp_path / "run"
    # both at once: each process costs mostly its imports
    ok = _script(*common, f"embeddings=[{emb}]", "num_images=4", f"height={SIZE}", f"width={SIZE}",
                 "batch_size=3", f"hydra.run.dir={run_dir}")
    missing = _script(*common, f"embeddings=[{tmp_path / 'nope.safetensors'}]", f"hydra.run.dir={tmp_path / 'bad'}")
    out, err = ok.communicate(timeout=240)
    assert ok.returncode == 0, err[-3000:]
    pngs = sorted(p.name for p in run_dir.glob("*.png"))
    assert pngs == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert Image.open(run_dir / "0003.png").size == (SIZE, SIZE)
    assert not list(run_dir.glob(".*.tmp"))
    info = json.loads((run_dir / "images.json").read_text())
    assert [r["seed"] for r in info["images"]] == [0, 1, 2, 3]
    assert info["images"][0]["prompt"] == "A <demo-toy> in the forest, at dusk"
    assert info["embeddings"][0]["token"] == "<demo-toy>" and info["embeddings"][0]["num_vectors"] == 2

    _, err = missing.communicate(timeout=240)
    assert missing.returncode == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope.safetensors does not exist" in lines[0], err


@pytest.mark.parametrize("override, message", [
    ("scheduler=euler", "scheduler='euler' is unknown"),
    ("num_images=0", "num_images=0 must be a positive"),
    ("steps=0", "steps=0 must be a positive"),
    ("height=30", "height=30 must be a multiple of 8"),
])
def test_generate_script_user_errors_exit_2(override, message, tmp_path, monkeypatch, capsys):
    """The real entry point (Hydra + exit_on_user_error), run in this process to save interpreter start-ups."""
    import runpy

    monkeypatch.delenv("TEXTINV_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "argv", ["generate.py", "model=tiny", "prompt=A <x>, at dusk", override,
                                      f"hydra.run.dir={tmp_path}", "hydra/job_logging=none",
                                      "hydra/hydra_logging=none"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "generate.py"), run_name="__main__")
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
