"""Reconstruction and editability of a learned word (or of the plain initializer word: the baseline).

For each evaluation: N images per prompt with fixed seeds (image k of every prompt starts from seed+k),
then
- reconstruction (CLIP-I): all-pairs CLIP image similarity, training images x images of the
  reconstruction prompt ("a photo of S*", or the style template for styles);
- editability (CLIP-T): CLIP similarity of each editability prompt, concept's word removed, with its images;
- FID/KID against the training images (reconstruction images) and Inception Score (all images);
- optional DINO all-pairs similarity.
The baseline ("SD" row) uses the same prompts and seeds with the initializer word in place of S*;
its images do not depend on training, so they are cached on disk and reused across a sweep.

Two protocols (textinv.evaluation.schedule, with when each runs): `full` is the original one (N = 64
images per prompt, DDIM 50, eta 0, guidance 5.0); `light` (eval.light: fewer images per prompt, DDIM with
20 steps). Each evaluation record carries its protocol and settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from textinv.utils.atomic import atomic_write, atomic_write_text
from textinv.errors import UserError
from textinv.evaluation.schedule import FULL, LIGHT, Protocol, protocol_of
from textinv.evaluation.shared import broadcast, generate_shared, rank_and_world
from textinv.runs.layout import PROMPTS_FILE, image_name
from textinv.evaluation.metrics import (CLIP_T_TEXTS, ClipScorer, DinoScorer, clip_i, clip_t, dino_similarity, inception_features,
                      inception_scores, load_inception, placeholder_free_text)

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

    def scorer_arch(self) -> str:
        """What ClipScorer loads: `arch` (an open_clip name or local-dir:<folder>). A `_target_` subclass may
        load a folder of its own under a short recorded name (the miniature world's WorldClip)."""
        return self.arch


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
class LightConfig:
    """The light protocol of evaluations during training (chosen from experiments/light_protocol.py)."""

    enabled: bool = True
    num_images: int = 8  # per prompt: seeds seed + 0 .. seed + 7, the first images of the full protocol
    sampler_steps: int = 20
    scheduler: str = "ddim"  # measured closest to DDIM 50 among 20-step samplers (experiments/light_protocol.py)


def clip_t_text(template: str, mode: str = "original") -> str:
    """The CLIP-T text of a template ({} = the concept's word): see metrics.placeholder_free_text."""
    return placeholder_free_text(template, "{}", mode)


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
    light: LightConfig = field(default_factory=LightConfig)
    clip_t_text: str = "original"  # original: prompt.replace("{}", "") as the original code | drop_article

    def __post_init__(self):
        kinds = {"clip": ClipConfig, "fid": FidConfig, "dino": DinoConfig, "light": LightConfig}
        for name, kind in kinds.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, kind(**value))
        if self.num_images < 1 or self.sampler_steps < 1:
            raise UserError(f"eval.num_images={self.num_images} and eval.sampler_steps={self.sampler_steps} must be >= 1")
        if self.clip_t_text not in CLIP_T_TEXTS:
            raise UserError(f"eval.clip_t_text={self.clip_t_text!r} is unknown; use one of {', '.join(CLIP_T_TEXTS)}")

    @property
    def full(self) -> Protocol:
        return Protocol(FULL, self.num_images, self.sampler_steps, self.scheduler)

    @property
    def light_protocol(self) -> Protocol | None:
        """None when eval.light.enabled=false (every evaluation then uses the full protocol)."""
        lt = self.light
        return Protocol(LIGHT, lt.num_images, lt.sampler_steps, lt.scheduler) if lt.enabled else None


def evaluation_prompts(cfg: EvalConfig, kind: str, concept_prompts: list[str]) -> tuple[str, list[str]]:
    """(reconstruction template, editability templates); `{}` marks the concept's word."""
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
                 device: str | torch.device = "cpu", scoring: bool = True):
        """scoring=False (DDP ranks 1..N-1): generation only, no metric network loads (rank 0 scores)."""
        self.cfg, self.device, self.scoring = cfg, device, scoring
        self.reconstruction, self.edits = evaluation_prompts(cfg, kind, concept_prompts)
        self.train_images = train_images
        self.clip = self.train_clip = self.inception = self.train_inception = self.dino = self.train_dino = None
        if not scoring:
            return
        weights = None if cfg.clip.weights == "random" else cfg.clip.weights
        if cfg.clip.weights == "random" or (weights is None and not cfg.clip.scorer_arch().startswith("local-dir:")):
            log.warning("eval.clip.weights=random: CLIP has random weights, CLIP-I/CLIP-T mean nothing")
        self.clip = ClipScorer(cfg.clip.scorer_arch(), weights, device=device)
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
            from textinv.models.random_weights import random_inception_weights

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

    def settings(self, protocol: Protocol | None = None) -> dict:
        """Everything an evaluation's numbers depend on (the full protocol's unless another is given)."""
        c, pr = self.cfg, protocol or self.cfg.full
        return {"protocol": pr.name, "num_images": pr.num_images, "sampler_steps": pr.sampler_steps,
                "guidance_scale": c.guidance_scale, "scheduler": pr.scheduler, "eta": 0.0, "seed": c.seed,
                "negative_prompt": c.negative_prompt, "resolution": c.resolution, "clip": asdict(c.clip),
                "clip_t_text": c.clip_t_text, "fid": asdict(c.fid), "dino": asdict(c.dino),
                "reconstruction_prompt": self.reconstruction, "editability_prompts": self.edits}

    def generate(self, generator, word: str, cache_key: str | None = None,
                 protocol: Protocol | None = None) -> list[list[Image.Image]]:
        """N images per template with `word` in place of {}; reused from disk when `cache_key` is given.
        `generator` samples with `protocol.scheduler` (the full protocol by default). Under DDP every rank calls
        it and generates its share (textinv.evaluation.shared); rank 0 gets all images, the others None."""
        c, pr = self.cfg, protocol or self.cfg.full
        prompts = [t.format(word) for t in self.templates]
        cache = Path(c.baseline_cache) / cache_key if cache_key and c.baseline_cache else None
        rank = rank_and_world()[0]
        if cache is not None:
            files = [[cache / image_name(p, k) for k in range(pr.num_images)] for p in range(len(prompts))]
            # rank 0 decides (the cache may be on its disk only); every rank follows
            if broadcast(all(f.is_file() for row in files for f in row) if rank == 0 else None):
                if rank != 0:
                    return None
                log.info("baseline images reused from %s", cache)
                return [[Image.open(f).convert("RGB") for f in row] for row in files]

        def generate(share):
            return generator.samples(prompts, pr.num_images, seed=c.seed, steps=pr.sampler_steps,
                                     guidance_scale=c.guidance_scale, negative_prompt=c.negative_prompt,
                                     height=c.resolution, width=c.resolution, batch_size=c.batch_size, share=share)

        images = generate_shared(generate, len(prompts), pr.num_images)  # every rank its share; rank 0 gets all
        if images is None:
            return None
        if cache is not None:
            for row, frow in zip(images, files):
                for img, f in zip(row, frow):
                    atomic_write(f, lambda p, img=img: img.save(p, format="PNG"))
        return images

    def score(self, images: list[list[Image.Image]], word: str, inception: bool = True) -> dict:
        """Every metric of images generated with `word` in the templates, per prompt and aggregated. inception=False (the light protocol): CLIP metrics only;
        FID/KID/IS on a handful of images mean little and cost an Inception pass."""
        per_prompt = []
        for template, row in zip(self.templates, images):
            gen = self.clip.image_embeddings(row)
            text = clip_t_text(template, self.cfg.clip_t_text)
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
        if self.inception is not None and inception:
            recon = inception_features(self.inception, images[0])
            every = inception_features(self.inception, [img for row in images for img in row])
            fid = inception_scores(self.train_inception, recon, feature=self.cfg.fid.feature, seed=self.cfg.seed)
            iscore = inception_scores(self.train_inception, every, feature=self.cfg.fid.feature, seed=self.cfg.seed)
            result.update(fid=fid["fid"], kid_mean=fid["kid_mean"], kid_std=fid["kid_std"], fid_biased=fid["biased"],
                          fid_feature=fid["feature"], is_mean=iscore["is_mean"], is_std=iscore["is_std"])
        return result


# settings that do not change the images (a cached image set serves every choice of them)
SCORING_ONLY = ("clip", "fid", "dino", "clip_t_text", "protocol")


def baseline_cache_key(model: str, word: str, evaluator: Evaluator, protocol: Protocol | None = None) -> str:
    """Everything the baseline images depend on: the model's weights (`ModelSource.fingerprint`), word,
    prompts, seeds and the protocol's sampler."""
    blob = json.dumps({"model": model, "word": word, "templates": evaluator.templates,
                       **{k: v for k, v in evaluator.settings(protocol).items() if k not in SCORING_ONLY}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_images(folder: Path, templates: list[str], images: list[list[Image.Image]]) -> None:
    for p, row in enumerate(images):
        for k, img in enumerate(row):
            atomic_write(folder / image_name(p, k), lambda path, img=img: img.save(path, format="PNG"))
    atomic_write_text(folder / PROMPTS_FILE, json.dumps(templates, indent=2))


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
    """`final`: the last full-protocol evaluation (what tables read), None until there is one."""
    full = [e for e in evaluations if protocol_of(e) == FULL]
    atomic_write_text(path, json.dumps({**header, "evaluations": evaluations,
                                        "final": full[-1] if full else None}, indent=2))
