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

VOCAB = 49408
_CLIP = dict(vocab_size=VOCAB, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, scaling_factor=0.13025, force_upcast=True)

# Architectures with random weights, built in code (nothing downloaded). `sdxl_arch` is SDXL base 1.0's
# configuration (stabilityai/stable-diffusion-xl-base-1.0: unet/, vae/, text_encoder/, text_encoder_2/).
SDXL_ARCHS: dict[str, dict[str, dict]] = {
    "sdxl_arch": dict(
        text=dict(**_CLIP, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  hidden_act="quick_gelu", projection_dim=768),
        text_2=dict(**_CLIP, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                    hidden_act="gelu", projection_dim=1280),
        unet=dict(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, norm_num_groups=32,
        ),
        vae=dict(**_VAE, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                 norm_num_groups=32, sample_size=1024),
    ),
    # SDXL-shaped and tiny (tests): two encoders of DIFFERENT widths (32, 48), so a swapped half fails loudly.
    "sdxl_tiny": dict(
        text=dict(**_CLIP, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  hidden_act="quick_gelu", projection_dim=32),
        text_2=dict(**_CLIP, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    hidden_act="gelu", projection_dim=48),
        unet=dict(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), cross_attention_dim=80,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=48 + 6 * 8, norm_num_groups=8,
        ),
        vae=dict(**_VAE, layers_per_block=1, block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, sample_size=32),
    ),
}
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
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        cfg = SDXL_ARCHS[arch]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            encoders = [CLIPTextModel(CLIPTextConfig(**cfg["text"])),
                        CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_2"]))]
            vae = AutoencoderKL(**cfg["vae"])
            unet = UNet2DConditionModel(**cfg["unet"])
        return encoders, vae, unet

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
