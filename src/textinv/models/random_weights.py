"""Every network with random weights, for offline demos, tests and benchmarks: the random-weight model
architectures (model=tiny, sd15_arch, sdxl_arch, sdxl_tiny; the families' `archs`) and the metric networks.

Figures computed with them exercise every code path but mean nothing; entry points log that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from textinv.utils.atomic import atomic_write
from textinv.models.clip_tokenizer import VOCAB_SIZE
from textinv.utils.cache import cache_dir

# --- Stable Diffusion architectures built in code (model.source=<name>) ----------------------------
SD_ARCHS: dict[str, dict[str, dict[str, Any]]] = {
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

VOCAB = VOCAB_SIZE  # the CLIP vocabulary, both encoders
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
ARCHS = {**SD_ARCHS, **SDXL_ARCHS}


def build_random(arch_name: str, seed: int = 0) -> tuple[list, Any, Any]:
    """(text encoders, VAE, UNet) of the named architecture with seeded, so reproducible, random weights.
    A second text encoder (`text_2`, SDXL) is a CLIPTextModelWithProjection, as in SDXL's weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    arch = ARCHS[arch_name]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoders = [CLIPTextModel(CLIPTextConfig(**arch["text"]))]
        if "text_2" in arch:
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**arch["text_2"])))
        vae = AutoencoderKL(**arch["vae"])
        unet = UNet2DConditionModel(**arch["unet"])
    return encoders, vae, unet


# --- metric networks ------------------------------------------------------------------------------


def random_inception_weights(path: str | os.PathLike | None = None, seed: int = 0) -> str:
    """A torch-fidelity Inception v3 weights file holding a seeded random initialisation.

    torch-fidelity always loads weights in its constructor, so that load is skipped while the real
    class is built. Batch-norm statistics are then calibrated on random images (one train-mode pass):
    with unit running variance the activations shrink to ~1e-8 and every Inception Score would be 1.
    """
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    path = Path(path) if path else cache_dir("random_weights") / f"inception-random-seed{seed}.pth"
    if path.is_file():
        return str(path)
    skip = {}

    class RandomInit(tfi.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):
            return None if state_dict is skip else super().load_state_dict(state_dict, *args, **kwargs)

    with torch.random.fork_rng(), mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: skip):
        torch.manual_seed(seed)
        net = RandomInit("random-inception", ["logits_unbiased"])
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration pass
        net.train()
        with torch.no_grad():
            net(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    state = net.eval().state_dict()
    atomic_write(path, lambda p: torch.save(state, p))
    return str(path)
