"""Stable Diffusion 1.x / 2.x: one CLIP text encoder; its last hidden state conditions the UNet."""

from __future__ import annotations

import torch

from textinv.models.family.base import ModelFamily, PromptEncoding
from textinv.models.random_weights import SD_ARCHS, build_random


class SDFamily(ModelFamily):
    name = "sd"
    label = "SD 1.x/2.x"
    parts = ("text_encoder",)
    default_resolution = 512

    archs = SD_ARCHS

    def load_tokenizers(self, source) -> list:
        from transformers import CLIPTokenizer

        from textinv.models.clip_tokenizer import offline_clip_tokenizer

        return [source._pretrained(CLIPTokenizer, "tokenizer") if source.source == "hub" else offline_clip_tokenizer()]

    def load_text_encoders(self, source) -> list:
        from transformers import CLIPTextModel

        return [source._pretrained(CLIPTextModel, "text_encoder")]

    def build_random(self, arch: str, seed: int):
        return build_random(arch, seed)

    def encode(self, text_encoders: list, tokenizers: list, ids: list[torch.Tensor]) -> PromptEncoding:
        encoder, batch = text_encoders[0], ids[0].to(text_encoders[0].device)
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):  # never masks BOS/EOS of CLIP prompts
            mask = (batch != tokenizers[0].pad_token_id).long()
        return PromptEncoding(encoder(batch, attention_mask=mask)[0])

    def unet_kwargs(self, cond: PromptEncoding, time_ids, dtype) -> dict:
        return {"encoder_hidden_states": cond.embeds.to(dtype)}

    def pipeline(self, tokenizers: list, vae, unet, scheduler):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=tokenizers[0], unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       image_encoder=None, requires_safety_checker=False)

    def pipe_inputs(self, cond: PromptEncoding, uncond: PromptEncoding) -> dict:
        return {"prompt_embeds": cond.embeds, "negative_prompt_embeds": uncond.embeds}


SD = SDFamily()
