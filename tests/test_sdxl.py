"""SDXL end to end on the tiny SDXL-shaped model (text encoders 32 and 48 wide, text_time conditioning):
the conditioning the UNet receives, training both halves, the files (and diffusers' StableDiffusionXLPipeline
loading them), generate.py, evaluation, the baseline row and the table."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import CONF, SMALL_CLIP, compose, load_script
from textinv.errors import UserError
from textinv.models.frozen_sd import ModelSource
from textinv.methods.textual_inversion.placeholder import install_placeholder

EVAL = ["eval.enabled=true", "eval.every_n_steps=0", "eval.at_steps=[]", "eval.num_images=1", "eval.sampler_steps=2",
        "eval.fid.enabled=false", "eval.prompts=['a photo of {} on the moon']", *SMALL_CLIP]
TOKEN = "<demo-toy>"


def sdxl_overrides(run_dir, data_dir, steps: int = 3, *extra: str) -> list[str]:
    return ["experiment=tiny_sdxl", "logger=csv", f"run_dir='{run_dir}'", f"concept.data_dir='{data_dir}'",
            f"steps={steps}", "callbacks.model_checkpoint.every_n_train_steps=2",
            "callbacks.embedding_writer.every_n_steps=2", "~callbacks.progress_bar", *EVAL, *extra]


@pytest.fixture(scope="module")
def sdxl_runs(tmp_path_factory, demo_images):
    """A 4-step TI run and the baseline (SD row) on the tiny SDXL model, evaluated with the same prompts and seeds."""
    from textinv.training.job import train

    root = tmp_path_factory.mktemp("sdxl")
    cache = root / "baseline_cache"
    ti, base = root / "runs" / "ti", root / "runs" / "baseline"
    train(compose(*sdxl_overrides(ti, demo_images, 4, f"eval.baseline_cache='{cache}'")))
    train(compose(*sdxl_overrides(base, demo_images, 4, f"eval.baseline_cache='{cache}'", "baseline=true")))
    return ti, base


@pytest.fixture
def sdxl_frozen():
    return ModelSource("sdxl_tiny").load()


def init_vectors(frozen, word: str = "toy") -> tuple[torch.Tensor, torch.Tensor]:
    ids = frozen.tokenizer(word, add_special_tokens=False).input_ids
    return tuple(e.get_input_embeddings().weight[ids].mean(0) for e in frozen.text_encoders)


def test_presets_resolution_and_family():
    assert compose("model=sdxl").data.resolution == 1024 and compose("model=sdxl").model.family == "sdxl"
    info = ModelSource("sdxl_arch").info()  # the real SDXL configuration, read without building it
    assert (info.family, info.widths, info.native_resolution, info.resolution_multiple) == (
        "sdxl", (768, 1280), 1024, 32)
    from textinv.training.job import check_resolution

    with pytest.raises(UserError, match=r"data.resolution=1000 .* multiple of 32; try data.resolution=992"):
        check_resolution(1000, info.resolution_multiple)


def test_resolution_the_model_cannot_take_is_one_line(tmp_path, demo_images):
    from textinv.training.job import prepare

    with pytest.raises(UserError, match=r"data.resolution=30 .* multiple of 4; try data.resolution=32"):
        prepare(compose(*sdxl_overrides(tmp_path / "run", demo_images, 2, "data.resolution=30")))


def test_size_conditioning_of_each_image(tmp_path):
    from textinv.data.datamodule import Concept, ConceptDataModule

    Image.new("RGB", (64, 48), "red").save(tmp_path / "wide.png")  # w 64, h 48
    Image.new("RGB", (40, 80), "blue").save(tmp_path / "tall.png")
    dm = ConceptDataModule(Concept("c", "<c-tok>", "toy", data_dir=str(tmp_path)), resolution=32)
    got = dm.size_conditioning().tolist()
    # 64x48 -> 42x32, crop x from 5; 40x80 -> 32x64, crop y from 16 (original h, w, top, left, target h, w)
    assert got == [[80, 40, 16, 0, 32, 32], [48, 64, 0, 5, 32, 32]]


def test_unet_gets_both_encoders_pooled_projection_and_time_ids(sdxl_frozen, tmp_path):
    """The training step's conditioning, recomputed independently from the frozen encoders."""
    from textinv.data.datamodule import Concept, ConceptDataModule
    from textinv.methods.textual_inversion.method import TextualInversion
    from textinv.training.module import ConceptModule, OptimConfig

    for k, size in enumerate([(64, 48), (48, 48)]):
        Image.new("RGB", size, (50 * k, 90, 200)).save(tmp_path / f"{k}.png")
    dm = ConceptDataModule(Concept("c", TOKEN, "toy", data_dir=str(tmp_path)), resolution=32, batch_size=2)
    init_l, init_g = init_vectors(sdxl_frozen)
    module = ConceptModule(sdxl_frozen, TextualInversion(TOKEN, "toy"), OptimConfig())
    assert tuple(module.method.vectors.shape) == (1, 80) and module.method.vectors.dtype == torch.float32
    assert torch.equal(module.method.vectors[0, :32], init_l) and torch.equal(module.method.vectors[0, 32:], init_g)
    module.size_conditioning = dm.size_conditioning()
    module.build_latent_cache(dm.pixel_tensor())
    seen = {}
    sdxl_frozen.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    batch = {"index": torch.tensor([0, 1]), "image": torch.tensor([1, 0]), "flip": torch.tensor([False, True]),
             "prompt": [f"a photo of a {TOKEN}", f"a rendering of a {TOKEN}"]}
    loss = module.loss(batch)
    loss.backward()

    te1, te2 = sdxl_frozen.text_encoders
    ids1 = sdxl_frozen.tokenizer(batch["prompt"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids2 = sdxl_frozen.tokenizer_2(batch["prompt"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids2[0, -1] == 0 and ids1[0, -1] == 49407  # the second tokenizer pads with "!"
    with torch.no_grad():
        out1, out2 = te1(ids1, output_hidden_states=True), te2(ids2, output_hidden_states=True)
    expected = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], -1)
    assert seen["encoder_hidden_states"].shape == (2, 77, 80)
    torch.testing.assert_close(seen["encoder_hidden_states"], expected)
    torch.testing.assert_close(seen["added_cond_kwargs"]["text_embeds"], out2.text_embeds)
    assert seen["added_cond_kwargs"]["text_embeds"].shape == (2, 48)
    assert seen["added_cond_kwargs"]["time_ids"].tolist() == [[48, 48, 0, 0, 32, 32], [48, 64, 0, 5, 32, 32]]
    assert abs(sdxl_frozen.vae.config.scaling_factor - 0.13025) < 1e-9
    grad = module.method.vectors.grad
    assert grad.abs()[0, :32].sum() > 0 and grad.abs()[0, 32:].sum() > 0  # both encoders' halves learn


def test_trainable_vectors_stay_fp32_under_half_precision_frozen_weights(sdxl_frozen):
    from textinv.methods.textual_inversion.method import TextualInversion
    from textinv.training.module import ConceptModule, OptimConfig

    module = ConceptModule(sdxl_frozen, TextualInversion(TOKEN, "toy"), OptimConfig())
    module.cast_frozen(torch.bfloat16)  # what a GPU run with trainer.precision=bf16-mixed does
    assert {p.dtype for e in sdxl_frozen.text_encoders for n, p in e.named_parameters() if "vectors" not in n} == {
        torch.bfloat16} and sdxl_frozen.unet.dtype == torch.bfloat16
    assert sdxl_frozen.vae.dtype == torch.float32  # SDXL's VAE overflows in fp16: it stays fp32
    ids = module.tokenize([f"a photo of a {TOKEN}"])
    cond = module.family.encode(sdxl_frozen.text_encoders, sdxl_frozen.tokenizers, ids)
    cond.embeds.float().sum().backward()
    assert cond.embeds.dtype == torch.bfloat16 and module.method.vectors.dtype == torch.float32
    assert module.method.vectors.grad.dtype == torch.float32 and torch.isfinite(module.method.vectors.grad).all()


def test_sdxl_run_trains_both_halves_and_writes_the_pair_layouts(sdxl_runs, sdxl_frozen):
    ti, _ = sdxl_runs
    summary = json.loads((ti / "run.json").read_text())
    assert summary["files"] == ["demo-toy.safetensors", "diffusers/learned_embeds.safetensors",
                                "diffusers/learned_embeds_2.safetensors"]
    root = load_file(str(ti / "demo-toy.safetensors"))
    assert {k: tuple(v.shape) for k, v in root.items()} == {"clip_l": (1, 32), "clip_g": (1, 48)}
    first = load_file(str(ti / "diffusers/learned_embeds.safetensors"))[TOKEN]
    second = load_file(str(ti / "diffusers/learned_embeds_2.safetensors"))[TOKEN]
    assert torch.equal(first, root["clip_l"]) and torch.equal(second, root["clip_g"])
    init_l, init_g = init_vectors(sdxl_frozen)
    assert not torch.equal(root["clip_l"][0], init_l) and not torch.equal(root["clip_g"][0], init_g)  # both trained
    snap = load_file(str(ti / "snapshots/demo-toy-step000002.safetensors"))
    assert not torch.equal(snap["clip_l"], root["clip_l"]) and not torch.equal(snap["clip_g"], root["clip_g"])
    ckpt = torch.load(ti / "checkpoints/last.ckpt", weights_only=False)
    (key, vectors), = ckpt["state_dict"].items()  # one Parameter [n, 32 + 48]: only the word's vectors
    assert tuple(vectors.shape) == (1, 80) and torch.equal(vectors[:, :32], root["clip_l"])
    state = ckpt["optimizer_states"][0]["state"]
    assert [tuple(s["exp_avg"].shape) for s in state.values()] == [(1, 80)]
    header = json.loads((ti / "eval/metrics.json").read_text())
    assert header["family"] == "sdxl" and header["final"]["step"] == 4 and header["final"]["num_images"] == 2


def test_diffusers_sdxl_pipeline_loads_both_files_bitwise(sdxl_runs):
    """diffusers' own loader: clip_l into text_encoder, clip_g into text_encoder_2 (two calls), both forms."""
    from diffusers import StableDiffusionXLPipeline

    ti, _ = sdxl_runs
    frozen = ModelSource("sdxl_tiny").load()
    pipe = StableDiffusionXLPipeline(vae=frozen.vae, text_encoder=frozen.text_encoder,
                                     text_encoder_2=frozen.text_encoder_2, tokenizer=frozen.tokenizer,
                                     tokenizer_2=frozen.tokenizer_2, unet=frozen.unet,
                                     scheduler=frozen.noise_scheduler, add_watermarker=False)
    # diffusers' pair: the first file with default arguments, the second into the second encoder
    pipe.load_textual_inversion(str(ti / "diffusers/learned_embeds.safetensors"))
    pipe.load_textual_inversion(str(ti / "diffusers/learned_embeds_2.safetensors"), text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    # the A1111/ComfyUI/kohya file: its halves, under the file's name
    state = load_file(str(ti / "demo-toy.safetensors"))
    pipe.load_textual_inversion(state["clip_l"], token="demo-toy", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token="demo-toy", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    for tokenizer, encoder, key in ((pipe.tokenizer, pipe.text_encoder, "clip_l"),
                                    (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")):
        ids = tokenizer.convert_tokens_to_ids([TOKEN, "demo-toy"])
        assert tokenizer.unk_token_id not in ids
        weight = encoder.get_input_embeddings().weight
        assert torch.equal(weight[ids[0]], state[key][0]) and torch.equal(weight[ids[1]], state[key][0])


def test_generate_reads_both_layouts_alike_and_refuses_sd_files(sdxl_runs, tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from textinv.models.generation import run_generate

    ti, _ = sdxl_runs
    outs = {}
    for name, emb in (("root", ti / "demo-toy.safetensors"), ("pair", ti / "diffusers")):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = hydra_compose("generate", overrides=[
                "model=sdxl_tiny", f"prompt='a photo of {TOKEN}'", f"embeddings=[{emb}]", "num_images=2", "steps=2",
                f"tokens=['{TOKEN}']", f"out_dir={tmp_path / name}"])
        outs[name] = run_generate(cfg)
    info = json.loads((outs["pair"] / "images.json").read_text())
    assert info["height"] == 32 and info["embeddings"][0]["layout"] == "sdxl"
    for k in range(2):
        a, b = (np.asarray(Image.open(outs[n] / f"{k:04d}.png")) for n in ("root", "pair"))
        assert a.shape == (32, 32, 3) and np.array_equal(a, b)
    from textinv.methods.textual_inversion.formats import save_diffusers
    from textinv.methods.textual_inversion.loading import load_embeddings
    from textinv.models.generation import ImageGenerator

    sd_file = save_diffusers(tmp_path / "sd" / "learned_embeds.safetensors", "<sd-tok>", torch.ones(1, 32))
    gen = ImageGenerator.from_frozen(ModelSource("sdxl_tiny").load())
    with pytest.raises(UserError, match="one text encoder's embedding .* SDXL has two"):
        load_embeddings(gen, [sd_file])
    with pytest.raises(UserError, match=r"is an SDXL embedding .*model=sdxl"):
        load_embeddings(ImageGenerator.from_frozen(ModelSource("tiny").load()), [ti / "demo-toy.safetensors"])


def test_table_over_sdxl_runs_and_never_mixes_families(sdxl_runs, tmp_path):
    from textinv.runs.results import aggregate, load_runs, row_key

    ti, base = sdxl_runs
    table = load_script("table")
    table.main([str(ti), str(base), "--out", str(tmp_path / "t"), "--no-wandb"])
    rows = {r["model"]: r for r in csv.DictReader(open(tmp_path / "t" / "table.csv"))}
    assert list(rows) == ["SD", "SD + TI"]
    final = json.loads((ti / "eval/metrics.json").read_text())["final"]
    assert float(rows["SD + TI"]["reconstruction_mean"]) == pytest.approx(final["reconstruction"], abs=1e-12)
    assert {r["family"] for r in csv.DictReader(open(tmp_path / "t" / "runs.csv"))} == {"sdxl"}
    # an SD 1.x run beside them (its header says so): rows per family, a warning, never one averaged row
    sd_run = tmp_path / "sd_run"
    shutil.copytree(ti, sd_run)
    data = json.loads((sd_run / "eval/metrics.json").read_text())
    data.update(family="sd", model="tiny", model_location=None)
    (sd_run / "eval/metrics.json").write_text(json.dumps(data))
    table.main([str(ti), str(base), str(sd_run), "--out", str(tmp_path / "mixed"), "--no-wandb"])
    labels = [r["model"] for r in csv.DictReader(open(tmp_path / "mixed" / "table.csv"))]
    assert sorted(labels) == ["SD + TI [SD 1.x/2.x: tiny]", "SD + TI [SDXL: sdxl_tiny]", "SD [SDXL: sdxl_tiny]"]
    assert "runs mix model families (SD 1.x/2.x, SDXL)" in (tmp_path / "mixed" / "table.md").read_text()
    with pytest.raises(UserError, match=r"row 'SD \+ TI' would mix SD 1.x/2.x and SDXL runs"):
        aggregate(load_runs([ti, sd_run]), key=row_key)
    # the SD vs SD + TI figure pairs the SDXL runs' images by prompt and seed
    figures = load_script("figures")
    summary = figures.main(["compare", "--baseline", str(base), "--ti", str(ti), "--out", str(tmp_path / "f"),
                            "--cell", "32"])
    assert summary["ti_step"] == 4 and [r["seeds"] for r in summary["prompts"]] == [[1000], [1000]]
    assert summary["prompts"][1]["ti_prompt"] == f"a photo of {TOKEN} on the moon"


def test_model_folder_is_detected_as_sdxl_and_pools_at_the_end_token(sdxl_frozen, tmp_path):
    """model.path= with an SDXL folder: family, widths and the released encoder's legacy eos_token_id 2."""
    from diffusers import StableDiffusionXLPipeline

    sdxl_frozen.text_encoder_2.config.eos_token_id = 2  # as in stabilityai/stable-diffusion-xl-base-1.0
    StableDiffusionXLPipeline(vae=sdxl_frozen.vae, text_encoder=sdxl_frozen.text_encoder,
                              text_encoder_2=sdxl_frozen.text_encoder_2, tokenizer=sdxl_frozen.tokenizer,
                              tokenizer_2=sdxl_frozen.tokenizer_2, unet=sdxl_frozen.unet,
                              scheduler=sdxl_frozen.noise_scheduler, add_watermarker=False).save_pretrained(tmp_path)
    source = ModelSource(path=str(tmp_path))
    info = source.info()
    assert (info.family, info.widths, info.native_resolution) == ("sdxl", (32, 48), 32)
    frozen = source.load()
    assert frozen.tokenizer_2.pad_token == "!" and frozen.text_encoder_2.text_model.eos_token_id == 49407
    install_placeholder(frozen.tokenizers, frozen.text_encoders, TOKEN, 1, "toy", "word", 0)
    ids = frozen.tokenizer_2([f"a {TOKEN}"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    out = frozen.text_encoder_2(ids, output_hidden_states=True)
    eos = int((ids[0] == 49407).nonzero()[0])
    assert ids[0].argmax() != eos  # the new word's id is the highest: the legacy rule would pool there
    expected = frozen.text_encoder_2.text_projection(out.last_hidden_state[0, eos])
    torch.testing.assert_close(out.text_embeds[0], expected)


def test_sdxl_ddp_sweep_point_matches_one_process(tmp_path, demo_images):
    """train.py -m (a one-point seed sweep) with 2 gloo ranks x batch 1 on the tiny SDXL model == 1 process x batch 2:
    the one Parameter holding both encoders' halves is synchronised like SD's."""
    from conftest import run_script
    from textinv.training.job import train

    sweep_dir = tmp_path / "ddp"
    proc = run_script("train.py", "-m", "seed=0", "experiment=tiny_sdxl", f"concept.data_dir='{demo_images}'",
                      f"hydra.sweep.dir='{sweep_dir}'", "hydra.sweep.subdir=point", "eval=off",
                      "~callbacks.progress_bar", "steps=2", "data.batch_size=1", "logger=csv", "trainer=ddp",
                      "trainer.accelerator=cpu", "trainer.precision=32", "trainer.devices=2",
                      "callbacks.data_parallel.every_n_steps=1", timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (sweep_dir / "point" / "train.log").read_text()
    assert "step 2: 2 ranks hold the same trained weights (max difference 0); samples [[2], [3]]" in log
    single = tmp_path / "single"
    train(compose(*sdxl_overrides(single, demo_images, 2, "eval.enabled=false", "data.batch_size=2")))
    ddp, one = (load_file(str(d / "demo-toy.safetensors")) for d in (sweep_dir / "point", single))
    for key in ("clip_l", "clip_g"):
        assert torch.allclose(ddp[key], one[key], rtol=0, atol=1e-6)
