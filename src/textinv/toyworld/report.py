"""What the pretrained world can do, measured on scenes it never saw (report.json).

- text-to-image: images from full held-out captions (diffusers' own StableDiffusionPipeline on the
  exported folder, DDIM 50 steps, guidance 5), each attribute read back by the classifier;
- classifier: accuracy on held-out drawings, and on their VAE round trips (what generated images
  look like);
- CLIP: zero-shot colour and shape accuracy on held-out drawings; VAE: reconstruction error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from textinv.toyworld.models import load_classifier, pil_to_unit
from textinv.toyworld.world import CAPTIONED_STYLES, COLORS, SHAPES, full_caption, render, scene_at

HELD_OUT = 1_000_003  # scene seed offset of the held-out set
CHANCE = {"shape": 1 / len(SHAPES), "color": 1 / len(COLORS), "background": 1 / 4, "style": 1 / 3}


def attribute_hits(classifier, images, scenes, keys=("shape", "color", "background", "style")) -> dict[str, list[bool]]:
    """Per attribute, whether the classifier reads the scene's value back from each image."""
    pred = classifier.predict(pil_to_unit(images))
    hits = {}
    for k in keys:
        pairs = [(p, getattr(s, k)) for p, s in zip(pred[k], scenes) if k != "style" or s.style in CAPTIONED_STYLES]
        hits[k] = [p == t for p, t in pairs]
    return hits


def _rate(hits: dict[str, list[bool]]) -> dict[str, float]:
    return {k: round(float(np.mean(v)), 4) for k, v in hits.items() if v}


@torch.no_grad()
def text_to_image_accuracy(out: Path, classifier, seed: int, n: int = 96) -> tuple:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out / "sd", safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    scenes = [scene_at(seed + HELD_OUT, i) for i in range(n)]
    captions = [full_caption(s) for s in scenes]
    images = []
    for lo in range(0, n, 32):
        g = [torch.Generator().manual_seed(seed + i) for i in range(lo, min(lo + 32, n))]
        images += pipe(captions[lo:lo + 32], height=64, width=64, num_inference_steps=50, guidance_scale=5.0,
                       generator=g).images
    return {"captions": n, "sampler": "DDIM 50, guidance 5", "accuracy": _rate(attribute_hits(classifier, images, scenes)),
            "chance": CHANCE, "examples": captions[:4]}, images


@torch.no_grad()
def classifier_accuracy(out: Path, classifier, seed: int, n: int = 512) -> tuple:
    from diffusers import AutoencoderKL

    scenes = [scene_at(seed + HELD_OUT, 10_000 + i) for i in range(n)]
    drawn = [render(s) for s in scenes]
    vae = AutoencoderKL.from_pretrained(out / "sd", subfolder="vae").eval()
    x = pil_to_unit(drawn)
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    from PIL import Image

    round_trip = [Image.fromarray(((r.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()) for r in recon]
    return {"drawn": _rate(attribute_hits(classifier, drawn, scenes)),
            "vae_round_trip": _rate(attribute_hits(classifier, round_trip, scenes)),
            "vae_mse": round(float(torch.nn.functional.mse_loss(recon, x)), 5)}, drawn, scenes


@torch.no_grad()
def clip_zero_shot(out: Path, drawn, scenes) -> dict:
    from textinv.evaluation.metrics import ClipScorer

    scorer = ClipScorer(f"local-dir:{out / 'clip'}", None)
    img = scorer.image_embeddings(drawn)
    result = {}
    for key, values in (("color", list(COLORS)), ("shape", list(SHAPES))):
        texts = [f"a photo of a {v} shape" if key == "color" else f"a photo of a {v}" for v in values]
        pred = (img @ scorer.text_embeddings(texts).T).argmax(1)
        result[key] = round(float(np.mean([values[p] == getattr(s, key) for p, s in zip(pred.tolist(), scenes)])), 4)
    return result


def world_report(out: Path, recipe) -> dict:

    classifier = load_classifier(out / "classifier")
    cls, drawn, scenes = classifier_accuracy(out, classifier, recipe.seed, recipe.report_drawings)
    t2i, _ = text_to_image_accuracy(out, classifier, recipe.seed, recipe.report_images)
    return {"text_to_image": t2i, "classifier": cls, "clip_zero_shot": clip_zero_shot(out, drawn, scenes)}
