"""Load the frozen Stable Diffusion parts: tokenizer, text encoder, VAE, UNet, noise schedule.

Four sources share one interface (`ModelSource`):
- `hub`:  a diffusers-layout model, from `path` (a local folder) or `hub_id` (the local HF cache, or a
          download where the network allows it);
- `toy`:  the pretrained miniature world shipped with the project (textinv.toyworld): a diffusers
          folder loaded exactly like `hub` with `path`, so it exercises the real loading code;
- `tiny`: random weights, tiny UNet/VAE/text encoder built in code with the real CLIP tokenizer;
- `sd15_arch`: the SD 1.5 architecture with random weights (real speed and memory, no download).
The tokenizer and configs load without the big weights, so bad input is caught before they load.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .clip_tokenizer import VOCAB_SIZE, offline_clip_tokenizer
from .errors import UserError

log = logging.getLogger(__name__)
# diffusers still passes this deprecated argument to huggingface_hub; the warning says nothing to users.
warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")

# SD 1.x / 2.x training noise schedule.
SD_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, steps_offset=1,
)

ARCHS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": dict(
        unet=dict(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=4, norm_num_groups=8,
        ),
        vae=dict(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
            block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, sample_size=32,
        ),
        text=dict(
            vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
            projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
    ),
    "sd15_arch": dict(
        unet=dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
        ),
        vae=dict(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=512,
        ),
        text=dict(
            vocab_size=VOCAB_SIZE, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
            projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
    ),
}


@dataclass
class FrozenSD:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    name: str

    def freeze(self) -> "FrozenSD":
        for m in (self.text_encoder, self.vae, self.unet):
            m.requires_grad_(False)
            m.eval()
        return self


@dataclass
class ModelInfo:
    """What validation needs to know about a model, read without loading its weights."""

    hidden_dim: int
    vae_scale_factor: int
    resolution_multiple: int
    prediction_type: str


class ModelSource:
    """One `model=` config: where the frozen model comes from (built cheaply; `load()` is the big step)."""

    def __init__(self, source: str = "hub", hub_id: str | None = None, path: str | None = None,
                 revision: str | None = None, name: str | None = None, prediction_type: str | None = None,
                 seed: int = 0):
        if source not in ("hub", "toy", "tiny", "sd15_arch"):
            raise UserError(f"model.source={source!r} is unknown; use hub, toy, tiny or sd15_arch")
        if source == "toy":  # a real diffusers folder that ships with the project: the hub code path
            from .toyworld import TOYWORLD_SD

            source, path = "hub", path or str(TOYWORLD_SD)
        self.source, self.hub_id, self.revision, self.seed = source, hub_id, revision, seed
        self.path = str(Path(path).expanduser()) if path else None
        self.prediction_type = prediction_type
        self.name = name or (self.path or hub_id or source)

    # --- where a diffusers-layout model lives -------------------------------------------------
    def _location(self) -> str:
        if self.path:
            folder = Path(self.path)
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
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        try:
            return cls.from_pretrained(location, subfolder=part, revision=self.revision,
                                       local_files_only=offline or bool(self.path), **kw)
        except UserError:
            raise
        except Exception as err:  # HF raises OSError, EnvironmentError, HfHubHTTPError, ValueError...
            raise self._not_found(part, err) from err

    def _config(self, cls, part: str) -> dict:
        location = self._location()
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        try:
            return dict(cls.load_config(location, subfolder=part, revision=self.revision,
                                        local_files_only=offline or bool(self.path)))
        except Exception as err:
            raise self._not_found(part, err) from err

    # --- cheap parts -----------------------------------------------------------------------------
    def load_tokenizer(self) -> CLIPTokenizer:
        if self.source != "hub":
            return offline_clip_tokenizer()
        return self._pretrained(CLIPTokenizer, "tokenizer")

    def info(self) -> ModelInfo:
        if self.source == "hub":
            unet_cfg = self._config(UNet2DConditionModel, "unet")
            vae_cfg = self._config(AutoencoderKL, "vae")
            text_dim = int(unet_cfg["cross_attention_dim"])
            prediction = self.prediction_type or self._config(DDPMScheduler, "scheduler").get(
                "prediction_type", "epsilon")
        else:
            arch = ARCHS[self.source]
            unet_cfg, vae_cfg = arch["unet"], arch["vae"]
            text_dim = arch["text"]["hidden_size"]
            prediction = self.prediction_type or "epsilon"
        vae_factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
        unet_factor = 2 ** (len(unet_cfg["block_out_channels"]) - 1)
        return ModelInfo(text_dim, vae_factor, vae_factor * unet_factor, prediction)

    # --- the big step ----------------------------------------------------------------------------
    def load(self, tokenizer: CLIPTokenizer | None = None) -> FrozenSD:
        tokenizer = tokenizer or self.load_tokenizer()
        if self.source == "hub":
            text_encoder = self._pretrained(CLIPTextModel, "text_encoder")
            vae = self._pretrained(AutoencoderKL, "vae")
            unet = self._pretrained(UNet2DConditionModel, "unet")
            scheduler = self._pretrained(DDPMScheduler, "scheduler")
            if self.prediction_type:
                scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type=self.prediction_type)
        else:
            text_encoder, vae, unet, scheduler = build_random(self.source, self.seed, self.prediction_type)
        log.info("loaded frozen model %s", self.name)
        return FrozenSD(tokenizer, text_encoder, vae, unet, scheduler, self.name).freeze()


def build_random(arch_name: str, seed: int = 0, prediction_type: str | None = None):
    """The named architecture with random (seeded, so reproducible) weights."""
    arch = ARCHS[arch_name]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**arch["text"]))
        vae = AutoencoderKL(**arch["vae"])
        unet = UNet2DConditionModel(**arch["unet"])
    scheduler = DDPMScheduler(**SD_SCHEDULE, prediction_type=prediction_type or "epsilon")
    return text_encoder, vae, unet, scheduler
