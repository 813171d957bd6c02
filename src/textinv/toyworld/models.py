"""The miniature world's networks: the same classes as Stable Diffusion and open_clip, small.

- text-to-image: `CLIPTextModel` (64-d, the real CLIP vocabulary), `AutoencoderKL` (64 px -> 4x16x16),
  `UNet2DConditionModel` on 16x16 latents; SD's noise schedule;
- an open_clip CLIP (ViT 64 px / 64-d text) for CLIP-I and CLIP-T in this world;
- an attribute classifier (shape, colour, background, rendering) to count what images show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from textinv.models.clip_tokenizer import VOCAB_SIZE
from textinv.toyworld.world import BACKGROUNDS, COLORS, SHAPES, STYLES

TEXT = dict(
    vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=64, bos_token_id=49406,
    eos_token_id=49407, pad_token_id=49407,
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(16, 32, 64),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=8,
    sample_size=64,
)
UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
    attention_head_dim=8, norm_num_groups=16,
)
# open_clip's own config layout (open_clip_config.json of a `local-dir:` model)
CLIP = {
    "model_cfg": {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32,
                       "mlp_ratio": 4.0},
        "text_cfg": {"context_length": 77, "vocab_size": VOCAB_SIZE, "width": 64, "heads": 4, "layers": 3},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                       "interpolation": "bicubic", "resize_mode": "shortest"},
}

HEADS = {"shape": SHAPES, "color": tuple(COLORS), "background": tuple(BACKGROUNDS), "style": STYLES}


class AttributeClassifier(nn.Module):
    """64 px image in [-1, 1] -> logits per attribute (shape, color, background, style)."""

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1, stride=2), nn.GroupNorm(8, cout), nn.SiLU())

        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width),
                                      block(4 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({k: nn.Linear(4 * width, len(v)) for k, v in HEADS.items()})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(pixels)
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor) -> dict[str, list[str]]:
        logits = self(pixels)
        return {k: [HEADS[k][i] for i in v.argmax(-1).tolist()] for k, v in logits.items()}


# --- what the evaluation-time readers need (no training recipe) -----------------------------------
def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1], the range every network here was trained on."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1


def pil_to_unit(images) -> torch.Tensor:
    """PIL images -> float NCHW in [-1, 1], as the models were trained on."""
    return to_unit(torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])))


def load_classifier(folder: str | Path):
    """The shipped attribute classifier (TOYWORLD_CLASSIFIER), frozen."""
    from safetensors.torch import load_file

    model = AttributeClassifier()
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
    return model.eval().requires_grad_(False)
