"""Stable Diffusion XL: two text encoders, a pooled text embedding and size/crop conditioning.

As the SDXL paper and diffusers' `textual_inversion_sdxl.py` do:
- the UNet's context is the concatenation of both encoders' PENULTIMATE hidden states (768 + 1280 = 2048);
- the second encoder's (`CLIPTextModelWithProjection`) pooled projection is `added_cond_kwargs["text_embeds"]`;
- `added_cond_kwargs["time_ids"]` = original size (h, w) + crop top-left (y, x) + target size (h, w) of each
  training image (textinv.data.datamodule.ConceptDataModule.size_conditioning); generation uses (H, W), (0, 0), (H, W);
- the VAE's scaling factor (0.13025) comes from its config. SDXL's VAE overflows in fp16 (NaN latents,
  black images): its config says `force_upcast`, and this family keeps the VAE in fp32 whatever
  `module.frozen_dtype` says (latents are cached once, so that costs nothing per step); a fixed fp16 VAE
  (e.g. madebyollin/sdxl-vae-fp16-fix) can replace the folder's vae/ for sampling speed.
- The second encoder's config in the released weights says `eos_token_id: 2`, which makes transformers
  pool at the HIGHEST token id; a new word's ids (49408+) would then be pooled instead of the end token.
  Both encoders are told the tokenizer's real end token (49407) after loading.
"""

from __future__ import annotations

import torch

from textinv.models.family.base import ModelFamily, PromptEncoding
from textinv.models.random_weights import SDXL_ARCHS, build_random

FILE_KEYS = ("clip_l", "clip_g")  # A1111 / ComfyUI / kohya keys of the two halves, in `parts` order


class SDXLFamily(ModelFamily):
    name = "sdxl"
    label = "SDXL"
    parts = ("text_encoder", "text_encoder_2")
    archs = SDXL_ARCHS
    default_resolution = 1024
    empty_negative_is_zero = True  # SDXL base's force_zeros_for_empty_prompt
    keep_vae_fp32 = True
    size_conditioned = True

    # --- loading -------------------------------------------------------------------------------
    def load_tokenizers(self, source) -> list:
        from transformers import CLIPTokenizer

        from textinv.models.clip_tokenizer import offline_clip_tokenizer

        if source.source == "hub":
            return [source._pretrained(CLIPTokenizer, "tokenizer"), source._pretrained(CLIPTokenizer, "tokenizer_2")]
        return [offline_clip_tokenizer(), offline_clip_tokenizer(pad_token="!")]  # OpenCLIP pads with "!"

    def load_text_encoders(self, source) -> list:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        encoders = [source._pretrained(CLIPTextModel, "text_encoder"),
                    source._pretrained(CLIPTextModelWithProjection, "text_encoder_2")]
        for enc in encoders:
            fix_end_token(enc)
        return encoders

    def build_random(self, arch: str, seed: int):
        return build_random(arch, seed)

    # --- prompts -> UNet conditioning ---------------------------------------------------------
    def encode(self, text_encoders: list, tokenizers: list, ids: list[torch.Tensor]) -> PromptEncoding:
        hidden = []
        for enc, batch in zip(text_encoders, ids):
            out = enc(batch.to(enc.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
        pooled = out[0]  # the last encoder (CLIPTextModelWithProjection): its text_embeds
        return PromptEncoding(torch.cat(hidden, dim=-1), pooled)

    def unet_kwargs(self, cond: PromptEncoding, time_ids: torch.Tensor | None, dtype) -> dict:
        if time_ids is None:
            raise RuntimeError("SDXL conditioning needs time_ids (original size, crop top-left, target size)")
        return {"encoder_hidden_states": cond.embeds.to(dtype),
                "added_cond_kwargs": {"text_embeds": cond.pooled.to(dtype),
                                      "time_ids": time_ids.to(cond.embeds.device, dtype)}}

    # --- sampling --------------------------------------------------------------------------------
    def pipeline(self, tokenizers: list, vae, unet, scheduler):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=tokenizers[0],
                                         tokenizer_2=tokenizers[1], unet=unet, scheduler=scheduler,
                                         force_zeros_for_empty_prompt=True, add_watermarker=False)

    def pipe_inputs(self, cond: PromptEncoding, uncond: PromptEncoding) -> dict:
        return {"prompt_embeds": cond.embeds, "pooled_prompt_embeds": cond.pooled,
                "negative_prompt_embeds": uncond.embeds, "negative_pooled_prompt_embeds": uncond.pooled}


def fix_end_token(encoder) -> None:
    """Pool at the first end token (49407), not at the highest id (the legacy `eos_token_id: 2` rule)."""
    text_model = getattr(encoder, "text_model", encoder)
    if getattr(text_model, "eos_token_id", None) == 2:
        text_model.eos_token_id = 49407
        encoder.config.eos_token_id = 49407


SDXL = SDXLFamily()
