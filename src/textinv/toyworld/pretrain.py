"""Pretrain the miniature world from scratch: VAE -> text encoder + UNet -> CLIP -> attribute classifier.

`python -m textinv.toyworld pretrain --work outputs/toyworld --out models/toyworld` (make toyworld).
Every stage resumes from its checkpoint in `--work`; `--minutes N` stops cleanly after N minutes so
the whole recipe can run in pieces. The exported folder holds the weights in the layouts real
weights use (a diffusers Stable Diffusion folder, an open_clip `local-dir:` model), the recipe,
the curves, `report.json` (what the models can do) and SHA256SUMS.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from textinv.utils.atomic import atomic_path, atomic_write_text
from textinv.toyworld.models import to_unit
from textinv.toyworld.stages import OutOfTime, Stage, load_ema, run_stage
from textinv.toyworld.world import caption_at, render, scene_at

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    seed: int = 0
    num_scenes: int = 40_000
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 1.5e-3
    vae_kl: float = 1e-4
    t2i_steps: int = 4000
    t2i_batch: int = 64
    t2i_lr: float = 8e-4
    uncond_p: float = 0.1  # captions dropped to "" so classifier-free guidance works
    # Offset noise: a per-image, per-channel constant added to the training noise. At 16x16 latents the
    # mean of pure noise is small (std 1/16), so at t = 999 the image's mean colour leaks through and,
    # without the offset, the model learns to keep it: backgrounds then follow the sampling seed, not the
    # caption. Measured on held-out captions (shape / colour / background / rendering): no offset, 3200
    # steps 0.80 / 0.57 / 0.25 / 0.50; offset 0.15, 3200 steps 0.31 / 0.53 / 1.00 / 0.29 (shapes not yet
    # formed); offset 0.15, 4000 steps (this recipe) 0.73 / 0.76 / 1.00 / 0.39.
    t2i_noise_offset: float = 0.15
    ema: float = 0.999
    clip_steps: int = 1000
    clip_batch: int = 128
    clip_lr: float = 5e-4
    cls_steps: int = 2500
    cls_batch: int = 64
    cls_lr: float = 2e-3
    report_images: int = 96  # held-out captions generated for report.json
    report_drawings: int = 512  # held-out drawings the classifier reads for report.json (also as VAE round trips)


# --------------------------------------------------------------------------------------------------
# The rendered training set (derived data, cached in the work folder)
# --------------------------------------------------------------------------------------------------

def _render_range(args: tuple[int, int, int]) -> np.ndarray:
    seed, lo, hi = args
    out = np.empty((hi - lo, 64, 64, 3), np.uint8)
    for i in range(lo, hi):
        img = np.asarray(render(scene_at(seed, i)))
        out[i - lo] = img[:, ::-1] if np.random.default_rng([seed, i, 7]).random() < 0.5 else img  # mirrors too
    return out


def rendered_set(work: Path, recipe: Recipe) -> torch.Tensor:
    """uint8 [N, 64, 64, 3]: scene i of the world (mirrored for half of them)."""
    path, meta = work / "images.npy", {"seed": recipe.seed, "n": recipe.num_scenes}
    if path.is_file() and (work / "images.json").is_file() and json.loads((work / "images.json").read_text()) == meta:
        return torch.from_numpy(np.load(path))
    log.info("rendering %d scenes", recipe.num_scenes)
    chunks = [(recipe.seed, lo, min(lo + 2000, recipe.num_scenes)) for lo in range(0, recipe.num_scenes, 2000)]
    if len(chunks) == 1:  # a small set: starting two interpreters would cost more than drawing it here
        images = _render_range(chunks[0])
    else:
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            images = np.concatenate(pool.map(_render_range, chunks))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, images)
    atomic_write_text(work / "images.json", json.dumps(meta))
    return torch.from_numpy(images)


def batch_indices(seed: int, stage: int, step: int, n: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, stage, step]).integers(0, n, size)


def torch_gen(seed: int, stage: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stage * 10_007 + step)


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------

def train_vae(work: Path, recipe: Recipe, images: torch.Tensor, deadline: float):
    from diffusers import AutoencoderKL

    from textinv.toyworld.models import VAE

    torch.manual_seed(recipe.seed + 1)
    vae = AutoencoderKL(**VAE)

    def step_fn(step: int) -> dict[str, float]:
        idx = batch_indices(recipe.seed, 1, step, len(images), recipe.vae_batch)
        x = to_unit(images[idx])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=torch_gen(recipe.seed, 1, step))
        recon = vae.decode(z).sample
        mse, l1, kl = F.mse_loss(recon, x), F.l1_loss(recon, x), post.kl().mean() / post.mean[0].numel()
        (mse + l1 + recipe.vae_kl * kl).backward()  # L1 keeps edges and thin lines sharper than MSE alone
        return {"mse": mse.item(), "l1": l1.item(), "kl": kl.item()}

    stage = Stage("vae", recipe.vae_steps, recipe.vae_lr, {"vae": vae}, step_fn)
    run_stage(stage, work, deadline)
    return vae


@torch.no_grad()
def encode_latents(work: Path, vae, images: torch.Tensor) -> dict:
    """Posterior moments of every scene and the scaling factor that gives latents unit variance."""
    path = work / "latents.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    vae.eval()
    means, stds = [], []
    for lo in range(0, len(images), 256):
        post = vae.encode(to_unit(images[lo:lo + 256])).latent_dist
        means.append(post.mean.half())
        stds.append(post.std.half())
    mean, std = torch.cat(means), torch.cat(stds)
    scale = float(1.0 / mean[:4096].float().std())
    data = {"mean": mean, "std": std, "scale": torch.tensor(scale)}
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return data


def train_text_to_image(work: Path, recipe: Recipe, latents: dict, deadline: float):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from textinv.models.clip_tokenizer import offline_clip_tokenizer
    from textinv.models.frozen_sd import SD_SCHEDULE
    from textinv.toyworld.models import TEXT, UNET

    torch.manual_seed(recipe.seed + 2)
    text_encoder, unet = CLIPTextModel(CLIPTextConfig(**TEXT)), UNet2DConditionModel(**UNET)
    tokenizer = offline_clip_tokenizer()
    schedule = DDPMScheduler(**SD_SCHEDULE)
    mean, std, scale = latents["mean"], latents["std"], float(latents["scale"])
    n = len(mean)

    def step_fn(step: int) -> dict[str, float]:
        idx = batch_indices(recipe.seed, 2, step, n, recipe.t2i_batch)
        g = torch_gen(recipe.seed, 2, step)
        drop = torch.rand(len(idx), generator=g) < recipe.uncond_p
        captions = ["" if d else caption_at(recipe.seed, int(i), step) for i, d in zip(idx, drop)]
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        z = (mean[idx].float() + std[idx].float() * torch.randn(mean[idx].shape, generator=g)) * scale
        noise = torch.randn(z.shape, generator=g)
        if recipe.t2i_noise_offset:  # drawn only when on, so the shipped recipe's random stream is unchanged
            noise = noise + recipe.t2i_noise_offset * torch.randn(*z.shape[:2], 1, 1, generator=g)
        t = torch.randint(0, schedule.config.num_train_timesteps, (len(idx),), generator=g)
        pred = unet(schedule.add_noise(z, noise, t), t, text_encoder(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        return {"loss": loss.item()}

    stage = Stage("t2i", recipe.t2i_steps, recipe.t2i_lr, {"text_encoder": text_encoder, "unet": unet}, step_fn,
                  warmup=100, ema_decay=recipe.ema)
    run_stage(stage, work, deadline)
    load_ema(stage)
    # A fast tokenizer that has padded remembers it in its tokenizer.json: export an unused one, so the
    # exported files do not depend on whether this piece of the run trained the stage or resumed it done.
    return offline_clip_tokenizer(), text_encoder, unet


def train_clip(work: Path, recipe: Recipe, images: torch.Tensor, deadline: float):
    import open_clip

    from textinv.toyworld.models import CLIP

    torch.manual_seed(recipe.seed + 3)
    model = open_clip.CLIP(**CLIP["model_cfg"])
    mean = torch.tensor(CLIP["preprocess_cfg"]["mean"]).view(1, 3, 1, 1)
    sd = torch.tensor(CLIP["preprocess_cfg"]["std"]).view(1, 3, 1, 1)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=77)

    def step_fn(step: int) -> dict[str, float]:
        idx = batch_indices(recipe.seed, 3, step, len(images), recipe.clip_batch)
        pixels = (images[idx].permute(0, 3, 1, 2).float() / 255 - mean) / sd
        texts = tokenizer([caption_at(recipe.seed, int(i), 10_000 + step) for i in idx])
        img = F.normalize(model.encode_image(pixels), dim=-1)
        txt = F.normalize(model.encode_text(texts), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        target = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        loss.backward()
        return {"loss": loss.item(), "acc": (logits.argmax(1) == target).float().mean().item()}

    stage = Stage("clip", recipe.clip_steps, recipe.clip_lr, {"clip": model}, step_fn, warmup=100, weight_decay=0.05)
    run_stage(stage, work, deadline)
    return model


def classifier_view(pixels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur and noise like a VAE round trip, so generated images are classified as well as drawn ones."""
    from torchvision.transforms.v2 import functional as TF

    sigma = float(torch.rand(1, generator=g)) * 1.2 + 0.05
    pixels = TF.gaussian_blur(pixels, kernel_size=5, sigma=sigma)
    return pixels + 0.04 * torch.randn(pixels.shape, generator=g)


def train_classifier(work: Path, recipe: Recipe, images: torch.Tensor, deadline: float):
    from textinv.toyworld.models import HEADS, AttributeClassifier

    torch.manual_seed(recipe.seed + 4)
    model = AttributeClassifier()
    labels = {k: torch.tensor([v.index(getattr(scene_at(recipe.seed, i), k)) for i in range(len(images))])
              for k, v in HEADS.items()}

    def step_fn(step: int) -> dict[str, float]:
        idx = batch_indices(recipe.seed, 4, step, len(images), recipe.cls_batch)
        logits = model(classifier_view(to_unit(images[idx]), torch_gen(recipe.seed, 4, step)))
        losses = {k: F.cross_entropy(v, labels[k][idx]) for k, v in logits.items()}
        sum(losses.values()).backward()
        return {k: v.item() for k, v in losses.items()}

    run_stage(Stage("classifier", recipe.cls_steps, recipe.cls_lr, {"classifier": model}, step_fn), work, deadline)
    return model


# --------------------------------------------------------------------------------------------------
# The whole recipe
# --------------------------------------------------------------------------------------------------

def pretrain(work: Path, out: Path, recipe: Recipe, minutes: float | None = None) -> Path:
    from textinv.toyworld.export import export_all

    work.mkdir(parents=True, exist_ok=True)
    recipe_file = work / "recipe.json"
    # a key added to Recipe later reads as its default in an older work folder (the value that folder was made with)
    if recipe_file.is_file() and {**asdict(Recipe()), **json.loads(recipe_file.read_text())} != asdict(recipe):
        raise SystemExit(f"error: {work} holds a run of another recipe ({recipe_file}); use a new --work folder")
    atomic_write_text(recipe_file, json.dumps(asdict(recipe), indent=2))
    deadline = time.time() + 60 * minutes if minutes else float("inf")
    t0 = time.time()
    try:
        images = rendered_set(work, recipe)
        vae = train_vae(work, recipe, images, deadline)
        latents = encode_latents(work, vae, images)
        vae.register_to_config(scaling_factor=float(latents["scale"]))
        tokenizer, text_encoder, unet = train_text_to_image(work, recipe, latents, deadline)
        clip = train_clip(work, recipe, images, deadline)
        classifier = train_classifier(work, recipe, images, deadline)
    except OutOfTime as stop:
        log.warning("%s after %.1f min; run the same command again to continue", stop, (time.time() - t0) / 60)
        raise SystemExit(75)  # EX_TEMPFAIL: unfinished, resumable
    export_all(out, work, recipe, vae, tokenizer, text_encoder, unet, clip, classifier)
    log.info("pretraining finished in %.1f min (this piece); weights in %s", (time.time() - t0) / 60, out)
    return out
