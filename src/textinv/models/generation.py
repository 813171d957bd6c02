"""Image generation from the frozen model: batched classifier-free guidance with one fixed seed per image.

Shared by evaluation during training (which passes the live text encoder, with its trainable
`PlaceholderEmbedding`) and by `generate.py` (which loads learned embedding files).

- Seeds: image k of every prompt starts from the noise of `torch.Generator().manual_seed(seed + k)`,
  so images do not depend on the batch size, and the plain-word baseline sees the same noise as the
  learned token.
- One UNet forward per step: diffusers concatenates the unconditional and conditional halves.
- Prompt encodings without a learned token are cached (keyed by their token ids); prompts holding a
  learned token are encoded again on every call, because the embedding changes during training.
- Embedding files are read by the model family (`formats`, never diffusers' own pickle path) and then
  registered with `pipe.load_textual_inversion(tensor, token=...)` (SDXL: once per text encoder); a
  multi-vector token becomes `tok tok_1 tok_2 ...`, exactly as diffusers and the training placeholder spell it.
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
from textinv.methods.textual_inversion.formats import LoadedEmbedding
from textinv.methods.textual_inversion.placeholder import PlaceholderEmbedding

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


def check_new_token(tokenizer, token: str, source: str) -> None:
    """A learned token must be a new word: not in the vocabulary, not one BPE token, not already loaded."""
    if not token or not token.strip():
        raise UserError(f"{source}: the embedding has an empty token name; give one with tokens=[<name>]")
    added = {t.content.lower() for t in tokenizer.added_tokens_decoder.values() if not t.special}
    if token.lower() in added or f"{token}_1".lower() in added:
        raise UserError(f"{source}: token {token!r} is already loaded (another embedding file or the training "
                        f"placeholder uses it); rename this one, e.g. tokens=['<{token.strip('<>')}-2>']")
    if token in tokenizer.get_vocab() or len(tokenizer(token, add_special_tokens=False).input_ids) == 1:
        raise UserError(f"{source}: token {token!r} is an existing word of the vocabulary and would replace it in "
                        f"every prompt; rename it, e.g. tokens=['<{token.strip('<>')}-concept>']")


def resolve_tokens(tokenizer, embeddings: Sequence[LoadedEmbedding], tokens: Sequence[str | None] | None = None
                   ) -> list[str]:
    """The prompt word of each embedding (override > the file's own token > the file name), all checked."""
    tokens = list(tokens) if tokens else [None] * len(embeddings)
    if len(tokens) != len(embeddings):
        raise UserError(f"tokens has {len(tokens)} entries for {len(embeddings)} embeddings; give one per file or none")
    names = [t or e.token or e.path.stem for t, e in zip(tokens, embeddings)]
    for name, emb in zip(names, embeddings):
        check_new_token(tokenizer, name, str(emb.path))
    seen: dict[str, Path] = {}
    for name, emb in zip(names, embeddings):
        for part in [name] + [f"{name}_{i}" for i in range(1, emb.vectors.shape[0])]:
            if part.lower() in seen:
                raise UserError(f"{emb.path} and {seen[part.lower()]} both use the token {part!r} (tokens match "
                                "case-insensitively); rename one with tokens=[...]")
            seen[part.lower()] = emb.path
    return names


@dataclass
class GeneratedImage:
    image: Image.Image | np.ndarray
    prompt: str
    index: int  # k: the image's number within its prompt
    seed: int  # the generator seed of its starting noise (seed + k)


class ImageGenerator:
    """Batched, seeded text-to-image sampling over a frozen model (or the live training modules).

    Loading embedding files adds tokens to `tokenizer` and rows to `text_encoder` in place (as diffusers
    does): give it its own copies when the originals must stay untouched.
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
        self.loaded: dict[str, list[str]] = {}  # token from a file -> its spelled-out tokens

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
        """Ids of every added, non-special token: loaded embeddings and the training placeholder."""
        return {i for i, t in self.tokenizer.added_tokens_decoder.items() if not t.special}

    # --- learned embedding files ---------------------------------------------------------------
    def load_embeddings(self, files: Sequence[str | Path | LoadedEmbedding],
                        tokens: Sequence[str | None] | None = None) -> list[str]:
        """Register embedding files (diffusers / A1111 / kohya); returns the word each one is used by."""
        if not files:
            return []
        if any(isinstance(e.get_input_embeddings(), PlaceholderEmbedding) for e in self.text_encoders):
            raise RuntimeError("embedding files cannot be loaded into a text encoder with a training placeholder "
                               "installed; build the generator from a separately loaded model")
        widths = self.widths
        loaded = [f if isinstance(f, LoadedEmbedding) else self.family.read_embedding(f, widths) for f in files]
        for emb in loaded:  # LoadedEmbedding objects passed in were read without knowing this model
            got = tuple(v.shape[1] for v in (emb.vectors, emb.vectors_g) if v is not None)
            if got != widths:
                self.family.read_embedding(emb.path, widths)  # raises the family's or the dimension error
                raise UserError(f"{emb.path}: vectors {got} wide do not fit this model's text encoders {widths}")
        names = resolve_tokens(self.tokenizer, loaded, tokens)
        # diffusers' loader, fed tensors: it never opens a file itself.
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # resize_token_embeddings' mean-resizing notice: rows are overwritten
        try:
            self.family.register_embeddings(self.pipe, loaded, names, self.tokenizers, self.text_encoders)
        finally:
            transformers_logging.set_verbosity(verbosity)
        for encoder in self.text_encoders:  # the resized matrices are new: keep them frozen
            encoder.get_input_embeddings().requires_grad_(False)
        for name, emb in zip(names, loaded):
            self.loaded[name] = [name] + [f"{name}_{i}" for i in range(1, emb.vectors.shape[0])]
            log.info("loaded %s (%s, %d vector%s) as %r", emb.path, emb.layout, emb.vectors.shape[0],
                     "s" * (emb.vectors.shape[0] > 1), name)
        return names

    # --- prompts -------------------------------------------------------------------------------
    def expand(self, prompt: str) -> str:
        """Spell out multi-vector tokens (`<t>` -> `<t> <t>_1 ...`), case-insensitively like the tokenizer.

        diffusers' `maybe_convert_prompt` does this with an exact-case lookup, so a token with capitals
        (`<Groot>`) would silently use its first vector only; and it rewrites an already spelled-out
        `<t>_1` again.
        """
        added = {t.content for t in self.tokenizer.added_tokens_decoder.values() if not t.special}
        lower = {t.lower() for t in added}
        spelled: dict[str, str] = {}
        for token in added:
            if f"{token}_1".lower() in lower:
                parts = [token]
                while f"{token}_{len(parts)}".lower() in lower:
                    parts.append(f"{token}_{len(parts)}")
                spelled[token.lower()] = " ".join(parts)
        if not spelled:
            return prompt
        # One pass, longest token first: the tokenizer's own leftmost-longest match (`<ab>` before `<a>`).
        alternatives = "|".join(re.escape(t) for t in sorted(spelled, key=len, reverse=True))
        pattern = re.compile(f"(?:{alternatives})(?!_\\d)", re.IGNORECASE)
        return pattern.sub(lambda m: spelled[m.group(0).lower()], prompt)

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
        UNet's device and dtype; placeholder-free prompts come from the cache."""
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
                width: int | None = None, batch_size: int = 4, output_type: str = "pil"
                ) -> list[list[GeneratedImage]]:
        """`generate`, with each image's prompt, number and seed."""
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
        for start in range(0, len(jobs), batch_size):
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
    """`python generate.py`: checks first (no weights), then model + embeddings -> PNGs and images.json."""
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
    from hydra.utils import instantiate
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
    files = [cfg.embeddings] if isinstance(cfg.embeddings, str) else list(cfg.embeddings or [])
    source: ModelSource = instantiate(cfg.model)
    widths = source.info().widths  # SDXL files hold both encoders' halves (clip_l + clip_g, or diffusers' pair)
    loaded = [source.family.read_embedding(Path(str(f)).expanduser(), widths) for f in files]
    tokenizer = source.load_tokenizer()
    tokens = cfg.get("tokens")
    names = resolve_tokens(tokenizer, loaded, [tokens] if isinstance(tokens, str) else list(tokens or []))
    for prompt in prompts:
        missing = [n for n in names if n.lower() not in prompt.lower()]
        if names and len(missing) == len(names):
            log.warning("prompt %r uses none of the loaded tokens (%s): the embeddings have no effect on it",
                        prompt, ", ".join(names))

    frozen = source.load(tokenizer)
    generator = ImageGenerator.from_frozen(frozen, cfg.scheduler, progress=True)
    generator.load_embeddings(loaded, names)
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
            "embeddings": [{"file": str(e.path), "layout": e.layout, "token": n,
                            "num_vectors": int(e.vectors.shape[0])} for e, n in zip(loaded, names)],
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
