"""Load the frozen Stable Diffusion parts: tokenizer, text encoder, VAE, UNet, noise schedule.

Sources share one interface (`ModelSource`); what differs between SD 1.x/2.x and SDXL (tokenizers, text
encoders, conditioning) is asked of the model's family (textinv.models.family):
- `hub`:  a diffusers-layout model, from `path` (a local folder) or `hub_id` (the local HF cache, or a
          download where the network allows it);
- `toy`:  the pretrained miniature world shipped with the project: a diffusers folder loaded exactly
          like `hub` with `path` (model=toy's `_target_` is textinv.toyworld.plugins.model_source);
- `tiny`: random weights, tiny UNet/VAE/text encoder built in code with the real CLIP tokenizer;
- `sd15_arch`: the SD 1.5 architecture with random weights (real speed and memory, no download);
- `sdxl_arch`, `sdxl_tiny`: SDXL base 1.0's architecture / a tiny SDXL-shaped model, random weights
  (every random architecture: textinv.models.random_weights).
The tokenizer and configs load without the big weights, so bad input is caught before they load.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from textinv.errors import UserError
from textinv.utils.offline import PROBE_TIMEOUT_S, hub_endpoint, hub_offline, hub_reachable

log = logging.getLogger(__name__)
# diffusers still passes this deprecated argument to huggingface_hub; the warning says nothing to users.
warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")

# SD 1.x / 2.x training noise schedule.
SD_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, steps_offset=1,
)

@dataclass
class FrozenSD:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    name: str
    family_name: str = "sd"
    tokenizer_2: CLIPTokenizer | None = None  # SDXL's second (OpenCLIP ViT-bigG) tokenizer and encoder
    text_encoder_2: Any = None

    @property
    def family(self):
        from textinv.models.family import get_family

        return get_family(self.family_name)

    @property
    def tokenizers(self) -> list:
        return [t for t in (self.tokenizer, self.tokenizer_2) if t is not None]

    @property
    def text_encoders(self) -> list:
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]

    @property
    def modules(self) -> list:
        return [*self.text_encoders, self.vae, self.unet]

    def to(self, device) -> "FrozenSD":
        for m in self.modules:
            m.to(device)
        return self

    def freeze(self) -> "FrozenSD":
        for m in self.modules:
            m.requires_grad_(False)
            m.eval()
        return self


@dataclass
class ModelInfo:
    """What validation needs to know about a model, read without loading its weights."""

    hidden_dim: int  # the first text encoder's width
    vae_scale_factor: int
    resolution_multiple: int
    prediction_type: str
    family: str = "sd"
    widths: tuple[int, ...] = ()  # every text encoder's width (SDXL: 768, 1280)
    native_resolution: int = 512  # UNet sample size x VAE factor


class ModelSource:
    """One `model=` config: where the frozen model comes from (built cheaply; `load()` is the big step)."""

    def __init__(self, source: str = "hub", hub_id: str | None = None, path: str | None = None,
                 revision: str | None = None, name: str | None = None, prediction_type: str | None = None,
                 seed: int = 0, family: str | None = None, resolution: int | None = None):
        from textinv.models.family import FAMILIES, get_family

        archs = {arch: fam for fam in FAMILIES.values() for arch in fam.archs}
        if source not in ("hub", *archs):
            raise UserError(f"model.source={source!r} is unknown; use one of hub, {', '.join(archs)} (or model=toy)")
        self._family = get_family(family) if family else archs.get(source)
        self.resolution = resolution  # the model's native size (data.resolution follows it); None: from configs
        self.source, self.hub_id, self.revision, self.seed = source, hub_id, revision, seed
        self.path = str(Path(path).expanduser()) if path else None
        self.prediction_type = prediction_type
        self.name = name or (self.path or hub_id or source)

    def fingerprint(self) -> str:
        """Which weights these are, for caches of what they generate. The name alone is not enough: a
        folder retrained in place, or a hub id whose cached snapshot moved, must not serve old images.
        Local folders and hub snapshots: every file's path, size and modification time (a stat, no read)."""
        folder = Path(self.path) if self.path else None
        if folder is None and self.source == "hub" and self.hub_id:
            try:
                from huggingface_hub import snapshot_download

                folder = Path(snapshot_download(self.hub_id, revision=self.revision, local_files_only=True))
            except Exception:  # not cached yet: loading will say so; the id and revision are all we know
                folder = None
        if folder is None or not folder.is_dir():
            return json.dumps([self.name, self.source, self.hub_id, self.revision, self.seed])
        stats = [(str(p.relative_to(folder)), p.stat()) for p in sorted(folder.rglob("*")) if p.is_file()]
        return json.dumps([self.name, [(name, st.st_size, st.st_mtime_ns) for name, st in stats]])

    # --- where a diffusers-layout model lives -------------------------------------------------
    def _cached(self) -> bool:
        """Whether the hub id's snapshot is in the local HF cache (no network)."""
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(self.hub_id, revision=self.revision, local_files_only=True)
            return True
        except Exception:  # noqa: BLE001 - not cached (or a broken cache): the loaders say which
            return False

    def _local_only(self) -> bool:
        """Read only local files: a model folder, HF_HUB_OFFLINE, or a hub that does not answer within a few
        seconds (then a cached snapshot is used as it is, and a missing one is one line, not minutes of retries)."""
        if self.path or hub_offline():
            return True
        if getattr(self, "_offline_decided", None) is None:
            if hub_reachable():
                self._offline_decided = False
            elif self._cached():
                log.warning("%s does not answer within %.0f s: using the cached %s as it is (HF_HUB_OFFLINE=1 "
                            "skips this check)", hub_endpoint(), PROBE_TIMEOUT_S, self.hub_id)
                self._offline_decided = True
            else:
                raise UserError(f"model {self.hub_id!r} is not in the local Hugging Face cache and {hub_endpoint()} "
                                f"does not answer within {PROBE_TIMEOUT_S:.0f} s (no network?); pass "
                                "model.path=<local diffusers folder>, download it where there is a network "
                                f"(`huggingface-cli download {self.hub_id}`), set HF_HUB_OFFLINE=1 to use only the "
                                "cache, or use model=tiny")
        return self._offline_decided

    def _location(self) -> str:
        if self.path:
            folder = Path(self.path)
            if folder.is_file() and folder.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".bin"):
                raise UserError(
                    f"model.path={self.path} is a single-file checkpoint (AUTOMATIC1111/ComfyUI style), not a diffusers "
                    "model folder; convert it once with diffusers (StableDiffusionPipeline.from_single_file(path)"
                    ".save_pretrained(folder)) and pass model.path=<folder>, or use model=tiny"
                )
            if not (folder / "model_index.json").is_file() and not (folder / "unet").is_dir():
                raise UserError(
                    f"model.path={self.path} is not a diffusers model folder (no model_index.json); "
                    "point it at a folder saved with save_pretrained, or use model=tiny"
                )
            return self.path
        if not self.hub_id:
            raise UserError("model has neither model.path nor model.hub_id; set one, or use model=tiny")
        return self.hub_id

    def _not_found(self, part: str, err: Exception) -> UserError:
        where = f"model.path={self.path}" if self.path else f"hub id {self.hub_id!r} (local HF cache)"
        return UserError(
            f"could not load the {part} of {where}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; "
            f"fixes: download it (`huggingface-cli download {self.hub_id or '<hub-id>'}`), pass "
            "model.path=<local diffusers folder>, or use model=tiny"
        )

    def _pretrained(self, cls, part: str, **kw):
        location = self._location()
        offline = self._local_only()
        try:
            return cls.from_pretrained(location, subfolder=part, revision=self.revision,
                                       local_files_only=offline or bool(self.path), **kw)
        except UserError:
            raise
        except Exception as err:  # HF raises OSError, EnvironmentError, HfHubHTTPError, ValueError...
            raise self._not_found(part, err) from err

    def _config(self, cls, part: str) -> dict:
        location = self._location()
        offline = self._local_only()
        try:
            return dict(cls.load_config(location, subfolder=part, revision=self.revision,
                                        local_files_only=offline or bool(self.path)))
        except Exception as err:
            raise self._not_found(part, err) from err

    def _text_width(self, part: str) -> int:
        offline = self._local_only()
        try:
            return int(CLIPTextConfig.from_pretrained(self._location(), subfolder=part, revision=self.revision,
                                                      local_files_only=offline or bool(self.path)).hidden_size)
        except Exception as err:
            raise self._not_found(part, err) from err

    # --- cheap parts -----------------------------------------------------------------------------
    @property
    def family(self):
        """SD 1.x/2.x or SDXL: from model.family, the architecture, or a model folder's UNet config."""
        if self._family is None:
            from textinv.models.family import SD, SDXL

            unet_cfg = self._config(UNet2DConditionModel, "unet")
            self._family = SDXL if unet_cfg.get("addition_embed_type") == "text_time" else SD
        return self._family

    def unet_config(self) -> dict:
        """The UNet's config without its weights (a model folder's or hub snapshot's file, or the code architecture)."""
        if self.source == "hub":
            return self._config(UNet2DConditionModel, "unet")
        return dict(self.family.archs[self.source]["unet"])

    def load_tokenizer(self) -> CLIPTokenizer:
        return self.load_tokenizers()[0]

    def load_tokenizers(self) -> list[CLIPTokenizer]:
        return self.family.load_tokenizers(self)

    def info(self) -> ModelInfo:
        family = self.family
        if self.source == "hub":
            unet_cfg = self._config(UNet2DConditionModel, "unet")
            vae_cfg = self._config(AutoencoderKL, "vae")
            if len(family.parts) == 1:
                widths = (int(unet_cfg["cross_attention_dim"]),)
            else:
                widths = tuple(self._text_width(part) for part in family.parts)
            prediction = self.prediction_type or self._config(DDPMScheduler, "scheduler").get(
                "prediction_type", "epsilon")
        else:
            arch = family.archs[self.source]
            unet_cfg, vae_cfg = arch["unet"], arch["vae"]
            widths = tuple(arch[k]["hidden_size"] for k in ("text", "text_2") if k in arch)
            prediction = self.prediction_type or "epsilon"
        vae_factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
        unet_factor = 2 ** (len(unet_cfg["block_out_channels"]) - 1)
        native = int(unet_cfg.get("sample_size") or family.default_resolution // vae_factor) * vae_factor
        return ModelInfo(widths[0], vae_factor, vae_factor * unet_factor, prediction, family.name, widths,
                         self.resolution or native)

    # --- the big step ----------------------------------------------------------------------------
    def load(self, tokenizer: CLIPTokenizer | None = None) -> FrozenSD:
        """The frozen model; `tokenizer` (the first one) may be passed in already loaded."""
        family = self.family
        tokenizers = self.load_tokenizers()
        if tokenizer is not None:
            tokenizers[0] = tokenizer
        if self.source == "hub":
            encoders = family.load_text_encoders(self)
            vae = self._pretrained(AutoencoderKL, "vae")
            unet = self._pretrained(UNet2DConditionModel, "unet")
            scheduler = self._pretrained(DDPMScheduler, "scheduler")
            if self.prediction_type:
                scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type=self.prediction_type)
        else:
            encoders, vae, unet = family.build_random(self.source, self.seed)
            scheduler = DDPMScheduler(**SD_SCHEDULE, prediction_type=self.prediction_type or "epsilon")
        log.info("loaded frozen model %s (%s)", self.name, family.label)
        second = (tokenizers[1], encoders[1]) if len(encoders) > 1 else (None, None)
        return FrozenSD(tokenizers[0], encoders[0], vae, unet, scheduler, self.name, family.name, *second).freeze()

