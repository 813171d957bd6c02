"""Image generation from the frozen model: batched classifier-free guidance with one fixed seed per image.

Shared by evaluation during training (over the live frozen model, with the training method attached) and
by `generate.py` (which loads a training method's files: Method.load_files).

- Seeds: image k of every prompt starts from the noise of `torch.Generator().manual_seed(seed + k)`,
  so images do not depend on the batch size, and the plain-word baseline sees the same noise as the
  learned token.
- One UNet forward per step: diffusers concatenates the unconditional and conditional halves.
- Prompt encodings without a learned token are cached (keyed by their token ids); prompts holding a
  learned token (one the tokenizer has added) are encoded again on every call: it changes during training.
- A method may rewrite prompts before they are tokenized (`prompt_rewrites`, in order).
- The model family (textinv.models.family) turns prompts into the UNet's conditioning and picks the pipeline
  (StableDiffusionPipeline, StableDiffusionXLPipeline); the pipeline samples latents, which are decoded
  here in the VAE's own dtype (SDXL keeps its VAE in fp32 while the UNet may run in half precision).
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from PIL import Image
from transformers.utils import logging as transformers_logging

from textinv.errors import UserError
from textinv.models.family import PromptEncoding, get_family

log = logging.getLogger(__name__)

SCHEDULERS = ("ddim", "dpm", "unipc")  # dpm: DPM-Solver++(2M); unipc: UniPC (bh2): few-step solvers


def make_scheduler(noise_scheduler, name: str = "ddim"):
    """The sampler, built from the training noise schedule (betas, prediction type, offsets carry over)."""
    config = dict(noise_scheduler.config)
    if name == "ddim":
        # SD's own scheduler configs (and the LDM DDIM sampler) use alphas_cumprod[0] for the last step.
        extra = {} if "set_alpha_to_one" in config else {"set_alpha_to_one": False}
        return DDIMScheduler.from_config(config, **extra)
    if name == "dpm":
        return DPMSolverMultistepScheduler.from_config(config)
    if name == "unipc":
        return UniPCMultistepScheduler.from_config(config)
    raise UserError(f"scheduler={name!r} is unknown; use one of {', '.join(SCHEDULERS)}")


@dataclass
class GeneratedImage:
    image: Image.Image | np.ndarray
    prompt: str
    index: int  # k: the image's number within its prompt
    seed: int  # the generator seed of its starting noise (seed + k)


class ImageGenerator:
    """Batched, seeded text-to-image sampling over a frozen model (or the live training modules).

    A method's files load into it in place (textual inversion adds tokens to `tokenizer` and rows to
    `text_encoder`, as diffusers does): give it its own copies when the originals must stay untouched.
    """

    def __init__(self, tokenizer, text_encoder, vae, unet, noise_scheduler, scheduler: str = "ddim",
                 progress: bool = False, cache_size: int = 256, family: str = "sd", tokenizer_2=None,
                 text_encoder_2=None):
        self.family = get_family(family)
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.tokenizers = [t for t in (tokenizer, tokenizer_2) if t is not None]
        self.text_encoders = [e for e in (text_encoder, text_encoder_2) if e is not None]
        self.pipe = self.family.pipeline(self.tokenizers, vae, unet, make_scheduler(noise_scheduler, scheduler))
        self.pipe.set_progress_bar_config(disable=not progress)
        self.scheduler_name = scheduler
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, ...], PromptEncoding] = OrderedDict()
        self.prompt_rewrites: list = []  # str -> str, applied in order before tokenizing (a method's words)

    @classmethod
    def from_frozen(cls, frozen, scheduler: str = "ddim", **kw) -> "ImageGenerator":
        return cls(frozen.tokenizer, frozen.text_encoder, frozen.vae, frozen.unet, frozen.noise_scheduler,
                   scheduler, family=frozen.family_name, tokenizer_2=frozen.tokenizer_2,
                   text_encoder_2=frozen.text_encoder_2, **kw)

    # --- model facts ---------------------------------------------------------------------------
    @property
    def unet(self):
        return self.pipe.unet

    @property
    def hidden_dim(self) -> int:
        return self.widths[0]

    @property
    def widths(self) -> tuple[int, ...]:
        """Each text encoder's width (SDXL: 768, 1280)."""
        return self.family.widths(self.text_encoders)

    @property
    def default_size(self) -> int:
        """The model's native resolution (UNet sample size x VAE factor): 512 for SD 1.x, 1024 for SDXL, 32 for tiny."""
        return int(self.pipe.unet.config.sample_size) * self.pipe.vae_scale_factor

    def learned_token_ids(self) -> set[int]:
        """Ids of every added, non-special token: words a method added (loaded or in training)."""
        return {i for i, t in self.tokenizer.added_tokens_decoder.items() if not t.special}

    # --- prompts -------------------------------------------------------------------------------
    def expand(self, prompt: str) -> str:
        """The prompt as the text encoders read it: every method's rewrite, in order."""
        for rewrite in self.prompt_rewrites:
            prompt = rewrite(prompt)
        return prompt

    def token_ids(self, prompts: Sequence[str]) -> torch.Tensor:
        """The first tokenizer's ids (what the prompt cache is keyed by)."""
        return self.all_token_ids(prompts)[0]

    def all_token_ids(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """Ids per tokenizer (SDXL: two, padded differently); long prompts are cut with a warning."""
        expanded = [self.expand(p) for p in prompts]
        for prompt, text in zip(prompts, expanded):
            if len(self.tokenizer(text).input_ids) > self.tokenizer.model_max_length:
                log.warning("prompt %r is longer than %d tokens and was cut", prompt, self.tokenizer.model_max_length)
        return self.family.tokenize(self.tokenizers, expanded)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> PromptEncoding:
        """The prompts' conditioning ([len(prompts), 77, dim] embeddings, + SDXL's pooled [len, 1280]) on the
        UNet's device and dtype; prompts without a learned token come from the cache."""
        ids = self.all_token_ids(prompts)
        learned = self.learned_token_ids()
        keys = [tuple(row.tolist()) for row in ids[0]]
        fresh = [i for i, k in enumerate(keys) if learned.intersection(k) or k not in self._cache]
        out: list[PromptEncoding | None] = [None] * len(prompts)
        if fresh:
            first = {}
            for i in fresh:
                first.setdefault(keys[i], i)
            rows = list(first.values())
            encoded = dict(zip(first, self.family.encode(self.text_encoders, self.tokenizers,
                                                         [t[rows] for t in ids]).rows()))
            for i in fresh:
                out[i] = encoded[keys[i]]
            for key, value in encoded.items():
                if not learned.intersection(key):
                    self._cache[key] = value.detached()  # not a view pinning the whole batch
                    self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        for i, key in enumerate(keys):
            if out[i] is None:
                out[i] = self._cache[key]
                self._cache.move_to_end(key)
        return PromptEncoding.stack(out).to(self.unet.device, self.unet.dtype)

    def clear_cache(self) -> None:
        self._cache.clear()

    # --- sampling ------------------------------------------------------------------------------
    def generate(self, prompts: str | Sequence[str], num_images_per_prompt: int = 1, seed: int = 0, steps: int = 50,
                 guidance_scale: float = 5.0, negative_prompt: str = "", height: int | None = None,
                 width: int | None = None, batch_size: int = 4, output_type: str = "pil") -> list[list]:
        """Images per prompt: `result[p][k]` is image k of prompt p, from seed `seed + k`.

        output_type: "pil" (PIL images) or "np" (float arrays [H, W, 3] in [0, 1]).
        """
        return [[s.image for s in row] for row in self.samples(
            prompts, num_images_per_prompt, seed, steps, guidance_scale, negative_prompt, height, width,
            batch_size, output_type)]

    def samples(self, prompts: str | Sequence[str], num_images_per_prompt: int = 1, seed: int = 0, steps: int = 50,
                guidance_scale: float = 5.0, negative_prompt: str = "", height: int | None = None,
                width: int | None = None, batch_size: int = 4, output_type: str = "pil",
                share: tuple[int, int] | None = None) -> list[list[GeneratedImage]]:
        """`generate`, with each image's prompt, number and seed. share=(rank, world): only this rank's batches
        (batch i of the one-process order goes to rank i mod world: textinv.evaluation.shared), so each image is
        computed in the same batch, hence the same, whatever the number of ranks."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        check_sampling(num_images_per_prompt, steps, batch_size, height, width, guidance_scale)
        if output_type not in ("pil", "np"):
            raise ValueError(f"output_type={output_type!r}; use pil or np")
        if not prompts:
            return []
        cond = self.encode(prompts)  # learned tokens: encoded once per call, with the current vectors
        uncond = self.encode([negative_prompt or ""])
        if not negative_prompt and self.family.empty_negative_is_zero:
            uncond = uncond.zeros_like()  # SDXL's own rule for an empty negative prompt
        jobs = [(p, k) for p in range(len(prompts)) for k in range(num_images_per_prompt)]
        results: list[list[GeneratedImage]] = [[] for _ in prompts]
        starts = list(range(0, len(jobs), batch_size))
        if share is not None:
            rank, world = share
            starts = [start for i, start in enumerate(starts) if i % world == rank]
        for start in starts:
            chunk = jobs[start : start + batch_size]
            generators = [torch.Generator("cpu").manual_seed(seed + k) for _, k in chunk]
            latents = self.pipe(
                **self.family.pipe_inputs(cond.select([p for p, _ in chunk]), uncond.repeat(len(chunk))),
                num_inference_steps=steps, guidance_scale=guidance_scale, eta=0.0, generator=generators,
                height=height, width=width, output_type="latent",
            ).images
            images = self.decode(latents, output_type)
            for (p, k), image in zip(chunk, images):
                results[p].append(GeneratedImage(image, prompts[p], k, seed + k))
        return results

    def decode(self, latents: torch.Tensor, output_type: str) -> list:
        """Latents -> images in the VAE's own dtype (the pipelines' decode assumes UNet and VAE share one)."""
        vae = self.pipe.vae
        with torch.no_grad():
            pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(pixels, output_type=output_type)


def check_sampling(num_images: int, steps: int, batch_size: int, height: int, width: int,
                   guidance_scale: float = 5.0) -> None:
    def positive_int(name: str, value) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name}={value!r} must be a positive whole number")

    positive_int("num_images", num_images)
    positive_int("steps", steps)
    positive_int("batch_size", batch_size)
    for name, value in (("height", height), ("width", width)):
        positive_int(name, value)
        if value % 8:
            raise UserError(f"{name}={value} must be a multiple of 8 (the pipeline's latent grid); "
                            f"try {name}={max(8, round(value / 8) * 8)}")
    if not isinstance(guidance_scale, (int, float)) or isinstance(guidance_scale, bool) or guidance_scale < 0:
        raise UserError(f"guidance_scale={guidance_scale!r} must be a number >= 0 (1 or less: no guidance)")


# --- the generate.py job ---------------------------------------------------------------------------
def run_generate(cfg) -> Path:
    """`python generate.py`: checks first (no weights), then model + a method's files -> PNGs and images.json."""
    from textinv.runs.lock import folder_lock
    from textinv.validation import GENERATE_RULES, validate

    validate(cfg, GENERATE_RULES)
    out_dir = Path(cfg.out_dir)
    with folder_lock(out_dir):  # one process per output folder
        refuse_earlier_outputs(out_dir)
        return _run_generate(cfg, out_dir)


def refuse_earlier_outputs(out_dir: Path) -> None:
    """generate.py never overwrites: images or an index already there belong to an earlier call."""
    earlier = [p.name for p in out_dir.glob("*") if p.suffix.lower() == ".png" or p.name == "images.json"]
    if earlier:
        raise UserError(f"{out_dir} already holds images of an earlier generate.py ({', '.join(sorted(earlier)[:3])}"
                        f"{', ...' if len(earlier) > 3 else ''}); choose a new hydra.run.dir=... or move them away")


def _run_generate(cfg, out_dir: Path) -> Path:
    from hydra.utils import get_class, instantiate
    from omegaconf import OmegaConf

    from textinv.models.frozen_sd import ModelSource
    from textinv.runs.layout import GENERATE_IMAGE_DIGITS, image_name
    from textinv.utils.atomic import atomic_write, atomic_write_text, confined

    prompts = cfg.prompt if OmegaConf.is_list(cfg.prompt) else [cfg.prompt]
    prompts = [str(p) for p in prompts if p is not None]
    if not prompts or not all(p.strip() for p in prompts):
        raise UserError('prompt is empty; pass prompt="A <my-token> in the forest"')
    if cfg.scheduler not in SCHEDULERS:
        raise UserError(f"scheduler={cfg.scheduler!r} is unknown; use one of {', '.join(SCHEDULERS)}")
    # null height/width: the model's own size, known once it is built; checked here as a stand-in 8.
    size = {k: 8 if cfg[k] is None else cfg[k] for k in ("height", "width")}
    check_sampling(cfg.num_images, cfg.steps, cfg.batch_size, size["height"], size["width"], cfg.guidance_scale)
    source: ModelSource = instantiate(cfg.model)
    tokenizer = source.load_tokenizer()
    files = get_class(cfg.method._target_).generation_files(cfg, source, tokenizer)  # the method's files
    prompts = files.rewrite_prompts(prompts)
    names = files.words
    for prompt in prompts:
        missing = [n for n in names if n.lower() not in prompt.lower()]
        if names and len(missing) == len(names):
            log.warning("prompt %r uses none of the loaded tokens (%s): the files have no effect on it",
                        prompt, ", ".join(names))

    frozen = source.load(tokenizer)
    generator = ImageGenerator.from_frozen(frozen, cfg.scheduler, progress=True)
    files.load_into(generator)
    height = generator.default_size if cfg.height is None else cfg.height
    width = generator.default_size if cfg.width is None else cfg.width
    rows = generator.samples(prompts, cfg.num_images, cfg.seed, cfg.steps, cfg.guidance_scale,
                             cfg.negative_prompt or "", height, width, cfg.batch_size)
    records = []
    with confined(out_dir):  # every file lands in the output folder
        for p, row in enumerate(rows):
            for s in row:
                name = image_name(None if len(prompts) == 1 else p, s.index, GENERATE_IMAGE_DIGITS)
                atomic_write(out_dir / name, lambda tmp, img=s.image: img.save(tmp, format="PNG"))
                records.append({"file": name, "prompt": s.prompt, "seed": s.seed, "index": s.index})
        summary = {
            "model": source.name, "scheduler": cfg.scheduler, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale,
            "negative_prompt": cfg.negative_prompt or "", "height": height, "width": width,
            **files.summary(),
            "images": records,
        }
        atomic_write_text(out_dir / "images.json", json.dumps(summary, indent=2))
    log.info("wrote %d images to %s", len(records), out_dir)
    return out_dir


TEXT_KEYS = ("prompt", "negative_prompt")
_TEXT_OVERRIDE = re.compile(r"^(\+{0,2})(" + "|".join(TEXT_KEYS) + r")=(.*)$", re.DOTALL)


def quote_text_overrides(argv: Sequence[str]) -> list[str]:
    """Let `prompt=A <tok> in the forest, at dusk` through Hydra's override grammar as one string.

    Unquoted, `<`, `>`, `,` and friends are grammar (or a sweep); a value that already starts with a
    quote or `[` (a list of prompts) is left as the user wrote it.
    """
    out = []
    for arg in argv:
        m = _TEXT_OVERRIDE.match(arg)
        if m and m.group(3) and m.group(3)[0] not in "'\"[":
            # Hydra's quoted strings: escape quotes, and the backslashes right before a quote or the end.
            value = re.sub(r"(\\*)('|$)", lambda q: q.group(1) * 2 + ("\\'" if q.group(2) else ""), m.group(3))
            arg = f"{m.group(1)}{m.group(2)}='{value}'"
        out.append(arg)
    return out
