"""Reconstruction and editability of a learned word (or of the plain initializer word: the baseline).

For each evaluation: N images per prompt with fixed seeds (image k of every prompt starts from seed+k),
then
- reconstruction (CLIP-I): all-pairs CLIP image similarity, training images x images of the
  reconstruction prompt ("a photo of S*", or the style template for styles);
- editability (CLIP-T): CLIP similarity of each editability prompt, placeholder removed, with its images;
- FID/KID against the training images (reconstruction images) and Inception Score (all images);
- optional DINO all-pairs similarity.
The baseline ("SD" row) uses the same prompts and seeds with the initializer word in place of S*;
its images do not depend on training, so they are cached on disk and reused across a sweep.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .atomic import atomic_write, atomic_write_text
from .errors import UserError
from .metrics import (ClipScorer, DinoScorer, clip_i, clip_t, dino_similarity, inception_features,
                      inception_scores, load_inception, strip_placeholder)

log = logging.getLogger(__name__)

RECONSTRUCTION = {"object": "a photo of {}", "style": "a painting in the style of {}"}
# The original work's editability prompts, of increasing difficulty.
ORIGINAL_EDIT_PROMPTS = {
    "object": ["a photo of {} on the moon", "an oil painting of {}", "Elmo holding a {}"],
    "style": ["a portrait of a woman in the style of {}", "a lake in the style of {}", "a city in the style of {}"],
}


@dataclass
class ClipConfig:
    arch: str = "ViT-B-32"
    weights: str = "openai"  # open_clip tag (from its cache), a local file, or "random" (tests/demo only)


@dataclass
class FidConfig:
    enabled: bool = True
    weights: str | None = None  # torch-fidelity Inception file; None: torch hub cache; "random": tests/demo only
    feature: int = 64  # few-shot sets are far below 2048 samples: a small layer keeps FID defined
    optional: bool = True  # missing weights: skip FID/KID/IS with a warning (never a silent zero)


@dataclass
class DinoConfig:
    enabled: bool = False
    weights: str | None = None  # a local ViT-S/16 DINO file, or "hub" for timm's cache


@dataclass
class EvalConfig:
    enabled: bool = True
    every_n_steps: int = 500
    at_steps: list[int] = field(default_factory=list)
    at_end: bool = True
    num_images: int = 64  # per prompt (the original protocol)
    sampler_steps: int = 50
    guidance_scale: float = 5.0
    scheduler: str = "ddim"  # eta 0
    negative_prompt: str = ""
    seed: int = 1000
    batch_size: int = 8
    resolution: int | None = None  # None: the model's default size
    prompts: list[str] | None = None  # None: the concept's prompts + the original work's
    clip: ClipConfig = field(default_factory=ClipConfig)
    fid: FidConfig = field(default_factory=FidConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    baseline_cache: str | None = "outputs/.baseline_cache"

    def __post_init__(self):
        for name in ("clip", "fid", "dino"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, {"clip": ClipConfig, "fid": FidConfig, "dino": DinoConfig}[name](**value))
        if self.num_images < 1 or self.sampler_steps < 1:
            raise UserError(f"eval.num_images={self.num_images} and eval.sampler_steps={self.sampler_steps} must be >= 1")

    def due(self, step: int) -> bool:
        return step in self.at_steps or (self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0)


def evaluation_prompts(cfg: EvalConfig, kind: str, concept_prompts: list[str]) -> tuple[str, list[str]]:
    """(reconstruction template, editability templates); `{}` marks the placeholder."""
    edits = list(cfg.prompts) if cfg.prompts else list(concept_prompts) + ORIGINAL_EDIT_PROMPTS[kind]
    seen: set[str] = set()
    edits = [p for p in edits if not (p.lower() in seen or seen.add(p.lower()))]
    bad = [p for p in edits if "{}" not in p]
    if bad:
        raise UserError(f"evaluation prompt {bad[0]!r} has no {{}} marking where the new word goes")
    return RECONSTRUCTION[kind], edits


class Evaluator:
    """Scorers and the training images' features, built once per run; `evaluate` per step."""

    def __init__(self, cfg: EvalConfig, kind: str, concept_prompts: list[str], train_images: list[Image.Image],
                 device: str | torch.device = "cpu"):
        self.cfg, self.device = cfg, device
        self.reconstruction, self.edits = evaluation_prompts(cfg, kind, concept_prompts)
        self.train_images = train_images
        weights = None if cfg.clip.weights == "random" else cfg.clip.weights
        if weights is None:
            log.warning("eval.clip.weights=random: CLIP has random weights, CLIP-I/CLIP-T mean nothing")
        self.clip = ClipScorer(cfg.clip.arch, weights, device=device)
        self.train_clip = self.clip.image_embeddings(train_images)
        self.inception = self.train_inception = None
        if cfg.fid.enabled:
            self.inception = self._load_inception()
            if self.inception is not None:
                self.train_inception = inception_features(self.inception, train_images)
        self.dino = self.train_dino = None
        if cfg.dino.enabled:
            self.dino = DinoScorer(None if cfg.dino.weights == "random" else cfg.dino.weights, device=device)
            self.train_dino = self.dino.image_embeddings(train_images)

    def _load_inception(self):
        weights = self.cfg.fid.weights
        if weights == "random":
            from .random_weights import random_inception_weights

            log.warning("eval.fid.weights=random: Inception has random weights, FID/KID/IS mean nothing")
            weights = random_inception_weights()
        try:
            return load_inception(weights, device=self.device)
        except UserError as err:
            if not self.cfg.fid.optional:
                raise
            log.warning("skipping FID/KID/IS: %s", err)
            return None

    @property
    def templates(self) -> list[str]:
        return [self.reconstruction] + self.edits

    def settings(self) -> dict:
        c = self.cfg
        return {"num_images": c.num_images, "sampler_steps": c.sampler_steps, "guidance_scale": c.guidance_scale,
                "scheduler": c.scheduler, "eta": 0.0, "seed": c.seed, "negative_prompt": c.negative_prompt,
                "resolution": c.resolution, "clip": asdict(c.clip), "fid": asdict(c.fid), "dino": asdict(c.dino),
                "reconstruction_prompt": self.reconstruction, "editability_prompts": self.edits}

    def generate(self, generator, word: str, cache_key: str | None = None) -> list[list[Image.Image]]:
        """N images per template with `word` in place of {}; reused from disk when `cache_key` is given."""
        c = self.cfg
        prompts = [t.format(word) for t in self.templates]
        cache = Path(c.baseline_cache) / cache_key if cache_key and c.baseline_cache else None
        if cache is not None:
            files = [[cache / f"p{p:02d}-{k:03d}.png" for k in range(c.num_images)] for p in range(len(prompts))]
            if all(f.is_file() for row in files for f in row):
                log.info("baseline images reused from %s", cache)
                return [[Image.open(f).convert("RGB") for f in row] for row in files]
        images = generator.generate(prompts, c.num_images, seed=c.seed, steps=c.sampler_steps,
                                    guidance_scale=c.guidance_scale, negative_prompt=c.negative_prompt,
                                    height=c.resolution, width=c.resolution, batch_size=c.batch_size)
        if cache is not None:
            for row, frow in zip(images, files):
                for img, f in zip(row, frow):
                    atomic_write(f, lambda p, img=img: img.save(p, format="PNG"))
        return images

    def score(self, images: list[list[Image.Image]], placeholder: str, word: str) -> dict:
        """Every metric, per prompt and aggregated."""
        per_prompt = []
        for template, row in zip(self.templates, images):
            gen = self.clip.image_embeddings(row)
            text = strip_placeholder(template, "{}")
            entry = {"template": template, "prompt": template.format(word), "clip_t_text": text,
                     "clip_i": clip_i(self.train_clip, gen), "clip_t": clip_t(self.clip.text_embeddings([text]), gen)}
            if self.dino is not None:
                entry["dino"] = dino_similarity(self.train_dino, self.dino.image_embeddings(row))
            per_prompt.append(entry)
        edit = per_prompt[1:]
        result = {
            "reconstruction": per_prompt[0]["clip_i"],
            "editability": sum(e["clip_t"] for e in edit) / len(edit),
            "clip_i_all": sum(e["clip_i"] for e in per_prompt) / len(per_prompt),
            "clip_t_all": sum(e["clip_t"] for e in per_prompt) / len(per_prompt),
            "num_images": sum(len(r) for r in images),
            "per_prompt": per_prompt,
        }
        if self.dino is not None:
            result["dino"] = per_prompt[0]["dino"]
        if self.inception is not None:
            recon = inception_features(self.inception, images[0])
            every = inception_features(self.inception, [img for row in images for img in row])
            fid = inception_scores(self.train_inception, recon, feature=self.cfg.fid.feature, seed=self.cfg.seed)
            iscore = inception_scores(self.train_inception, every, feature=self.cfg.fid.feature, seed=self.cfg.seed)
            result.update(fid=fid["fid"], kid_mean=fid["kid_mean"], kid_std=fid["kid_std"], fid_biased=fid["biased"],
                          fid_feature=fid["feature"], is_mean=iscore["is_mean"], is_std=iscore["is_std"])
        return result


def baseline_cache_key(model_name: str, word: str, evaluator: Evaluator) -> str:
    """Everything the baseline images depend on: model, word, prompts, seeds and sampler settings."""
    blob = json.dumps({"model": model_name, "word": word, "templates": evaluator.templates,
                       **{k: v for k, v in evaluator.settings().items() if k not in ("clip", "fid", "dino")}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_images(folder: Path, templates: list[str], images: list[list[Image.Image]]) -> None:
    for p, row in enumerate(images):
        for k, img in enumerate(row):
            atomic_write(folder / f"p{p:02d}-{k:03d}.png", lambda path, img=img: img.save(path, format="PNG"))
    atomic_write_text(folder / "prompts.json", json.dumps(templates, indent=2))


def image_grid(images: list[list[Image.Image]], max_cols: int = 8) -> Image.Image:
    """One row per prompt, up to `max_cols` images each."""
    w, h = images[0][0].size
    cols = min(max_cols, max(len(r) for r in images))
    grid = Image.new("RGB", (cols * w, len(images) * h), "white")
    for r, row in enumerate(images):
        for c, img in enumerate(row[:cols]):
            grid.paste(img.convert("RGB"), (c * w, r * h))
    return grid


def write_metrics(path: Path, header: dict, evaluations: list[dict]) -> None:
    atomic_write_text(path, json.dumps({**header, "evaluations": evaluations,
                                        "final": evaluations[-1] if evaluations else None}, indent=2))
