"""End to end through Hydra on the tiny model: outputs, frozen weights, resume, local model folders."""

import csv
import json
import shutil
import signal
import time

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from conftest import SMALL_CLIP, compose, embedding, run_script, start_script, tiny_overrides
from textinv.training.job import train


def test_train_py_writes_every_output(reference_run):
    run = reference_run
    for name in ("demo-toy.pt", "diffusers/learned_embeds.safetensors", "safetensors/demo-toy.safetensors",
                 "config.yaml", "metrics.csv", "run.json", "checkpoints/last.ckpt", "snapshots/demo-toy-step000004.pt",
                 "snapshots/diffusers/learned_embeds-step000004.safetensors",
                 "snapshots/safetensors/demo-toy-step000004.safetensors"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "run.json").read_text())
    assert summary["finished"] and summary["step"] == 6 and summary["placeholder"] == "<demo-toy>"
    assert summary["files"] == ["demo-toy.pt", "diffusers/learned_embeds.safetensors",
                                "safetensors/demo-toy.safetensors"]
    # one embedding file in the root: tools scan the whole folder (run_files.py)
    assert sorted(p.name for p in run.glob("*") if p.suffix in (".pt", ".safetensors", ".bin")) == ["demo-toy.pt"]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert {"loss", "lr", "step"} <= set(rows[0]) and all(float(r["loss"]) > 0 for r in rows if r["loss"])
    # checkpoints hold the vectors + optimizer, not the frozen model: KBs, not MBs
    assert (run / "checkpoints/last.ckpt").stat().st_size < 100_000
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    (key, vectors), = ckpt["state_dict"].items()
    assert key.endswith("token_embedding.vectors") and tuple(vectors.shape) == (1, 32)
    assert ckpt["global_step"] == 6
    state = ckpt["optimizer_states"][0]["state"]
    assert [tuple(s["exp_avg"].shape) for s in state.values()] == [(1, 32)]
    # the learned vector moved away from its initializer
    snap = load_file(str(run / "snapshots/diffusers/learned_embeds-step000002.safetensors"))["<demo-toy>"]
    assert not torch.equal(snap, embedding(run))


def test_run_files_load_in_diffusers_and_match(reference_run, tiny_source):
    frozen = tiny_source.load()
    pipe = StableDiffusionPipeline(vae=frozen.vae, text_encoder=frozen.text_encoder, tokenizer=frozen.tokenizer,
                                   unet=frozen.unet, scheduler=frozen.noise_scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(reference_run / "demo-toy.pt"))  # registers its name: the token
    pipe.load_textual_inversion(str(reference_run / "diffusers"), token="<demo-toy-diffusers>")  # the folder
    pipe.load_textual_inversion(str(reference_run / "safetensors/demo-toy.safetensors"), token="<demo-toy-st>")
    weight = pipe.text_encoder.get_input_embeddings().weight
    ids = pipe.tokenizer.convert_tokens_to_ids(["<demo-toy>", "<demo-toy-diffusers>", "<demo-toy-st>"])
    for i in ids:
        assert torch.equal(weight[i], embedding(reference_run)[0])


def test_frozen_weights_bitwise_unchanged_and_optimizer_holds_only_vectors(tmp_path, demo_images, monkeypatch):
    from textinv.training import job as run_module

    seen = {}
    real_fit = run_module.L.Trainer.fit

    def spy_fit(trainer, module, *a, **kw):
        seen["before"] = {k: v.clone() for k, v in module.state_dict().items() if not k.endswith("vectors")}
        seen["vectors"] = module.method.vectors.detach().clone()
        real_fit(trainer, module, *a, **kw)
        seen["module"], seen["trainer"] = module, trainer

    monkeypatch.setattr(run_module.L.Trainer, "fit", spy_fit)
    train(compose(*tiny_overrides(tmp_path / "run", demo_images, steps=3)))
    module, trainer = seen["module"], seen["trainer"]
    after = {k: v for k, v in module.state_dict().items() if not k.endswith("vectors")}
    assert after.keys() == seen["before"].keys()
    assert all(torch.equal(after[k], seen["before"][k]) for k in after)
    assert not torch.equal(module.method.vectors.detach(), seen["vectors"])
    params = [p for g in trainer.optimizers[0].param_groups for p in g["params"]]
    assert len(params) == 1 and params[0] is module.method.vectors


def test_sigkill_and_rerun_same_command_gives_identical_embedding(tmp_path, demo_images, reference_run):
    run_dir = tmp_path / "killed"
    args = [*tiny_overrides(run_dir, demo_images)[1:], "experiment=tiny", f"hydra.run.dir={run_dir}"]
    proc = start_script("train.py", *args, capture=False)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints/last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "run.json").exists()
    again = run_script("train.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr + again.stdout
    assert torch.equal(embedding(run_dir), embedding(reference_run))
    steps = [int(r["step"]) for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("loss")]
    assert steps == sorted(set(steps))  # no duplicated rows from the redone steps


def test_ckpt_path_continues_from_its_step(tmp_path, demo_images, reference_run):
    ckpt = reference_run / "checkpoints/step000004.ckpt"
    run_dir = tmp_path / "from4"
    train(compose(*tiny_overrides(run_dir, demo_images), f"ckpt_path={ckpt}"))
    assert torch.equal(embedding(run_dir), embedding(reference_run))
    assert json.loads((run_dir / "run.json").read_text())["step"] == 6


def test_rerun_after_the_last_step_finishes_the_run(tmp_path, demo_images, reference_run):
    """Stopped after its last training step (during the final evaluation, say): the re-run trains nothing, and does
    the final evaluation, writes the method's files and run.json (Lightning skips on_train_end when no step is
    left; it once ended in silence with none of them)."""
    run_dir = tmp_path / "stopped_at_the_end"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(reference_run / "checkpoints/last.ckpt", run_dir / "checkpoints/last.ckpt")
    train(compose(*tiny_overrides(run_dir, demo_images), "eval.enabled=true", "eval.num_images=1",
                  "eval.sampler_steps=2", "eval.light.enabled=false", "eval.fid.enabled=false", *SMALL_CLIP,
                  f"eval.baseline_cache='{tmp_path / 'cache'}'"))
    assert json.loads((run_dir / "run.json").read_text())["step"] == 6
    assert torch.equal(embedding(run_dir), embedding(reference_run))
    metrics = json.loads((run_dir / "eval/metrics.json").read_text())
    assert [(e["step"], e["protocol"]) for e in metrics["evaluations"]] == [(6, "full")]
    assert not list((run_dir / "metrics.csv").read_text().splitlines()[1:2]) or all(
        not r.get("loss") for r in csv.DictReader(open(run_dir / "metrics.csv")))  # no step trained again


def test_local_diffusers_folder_and_v_prediction(tmp_path, demo_images, tiny_source):
    """The path users with downloaded weights take: model=sd15 model.path=<folder>."""
    frozen = tiny_source.load()
    frozen.noise_scheduler.register_to_config(prediction_type="v_prediction")
    pipe = StableDiffusionPipeline(vae=frozen.vae, text_encoder=frozen.text_encoder, tokenizer=frozen.tokenizer,
                                   unet=frozen.unet, scheduler=frozen.noise_scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp_path / "model")
    run_dir = tmp_path / "run"
    train(compose(*tiny_overrides(run_dir, demo_images, 2), "model=sd15", f"model.path={tmp_path / 'model'}"))
    assert (run_dir / "run.json").is_file()
    from textinv.models.frozen_sd import ModelSource
    assert ModelSource(path=str(tmp_path / "model")).info().prediction_type == "v_prediction"


@pytest.mark.parametrize("precision", ["bf16-mixed"])
def test_mixed_precision_keeps_vectors_fp32(tmp_path, demo_images, precision):
    run_dir = tmp_path / "run"
    train(compose(*tiny_overrides(run_dir, demo_images, 2), f"trainer.precision={precision}"))
    assert embedding(run_dir).dtype == torch.float32 and torch.isfinite(embedding(run_dir)).all()
