"""The `ModelFamily` interface and what its users exchange with it (`PromptEncoding`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class PromptEncoding:
    """A batch of prompts as the UNet sees them: `embeds` [B, 77, D] (+ SDXL's pooled text embedding [B, P])."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def _map(self, fn) -> "PromptEncoding":
        return PromptEncoding(fn(self.embeds), None if self.pooled is None else fn(self.pooled))

    def rows(self) -> list["PromptEncoding"]:
        return [PromptEncoding(self.embeds[i], None if self.pooled is None else self.pooled[i])
                for i in range(len(self.embeds))]

    @staticmethod
    def stack(rows: Sequence["PromptEncoding"]) -> "PromptEncoding":
        pooled = None if rows[0].pooled is None else torch.stack([r.pooled for r in rows])
        return PromptEncoding(torch.stack([r.embeds for r in rows]), pooled)

    def select(self, index: list[int]) -> "PromptEncoding":
        return self._map(lambda t: t[index])

    def repeat(self, n: int) -> "PromptEncoding":
        """A one-prompt encoding for n images (the shared negative prompt)."""
        return PromptEncoding(self.embeds.expand(n, -1, -1), None if self.pooled is None else self.pooled.expand(n, -1))

    def to(self, device, dtype) -> "PromptEncoding":
        return self._map(lambda t: t.to(device, dtype))

    def detached(self) -> "PromptEncoding":
        """An own copy, not a view pinning a whole batch (the generator's cache)."""
        return self._map(lambda t: t.detach().clone())

    def zeros_like(self) -> "PromptEncoding":
        return self._map(torch.zeros_like)


class ModelFamily:
    """What one kind of Stable Diffusion model does differently. Stateless: the parts are passed in."""

    name: str  # "sd" | "sdxl": written into metrics.json (the table never mixes families in one row)
    label: str  # for people: "SD 1.x/2.x", "SDXL"
    parts: tuple[str, ...]  # the text encoders' diffusers subfolders, in conditioning order
    archs: dict[str, dict]  # random-weight architectures built in code (model.source=<name>)
    default_resolution: int  # pixels, when a model folder does not say
    empty_negative_is_zero: bool = False  # SDXL: an empty negative prompt is a zero conditioning
    keep_vae_fp32: bool = False  # SDXL: its VAE overflows in fp16
    size_conditioned: bool = False  # SDXL: the UNet takes each image's original size and crop (time_ids)

    # --- loading -------------------------------------------------------------------------------
    def load_tokenizers(self, source) -> list:
        raise NotImplementedError

    def load_text_encoders(self, source) -> list:
        raise NotImplementedError

    def build_random(self, arch: str, seed: int):
        """(text_encoders, vae, unet) of `archs[arch]` with seeded random weights."""
        raise NotImplementedError

    @staticmethod
    def widths(text_encoders: list) -> tuple[int, ...]:
        """Each text encoder's token width, in `parts` order (SD 1.x: 768; SDXL: 768, 1280)."""
        return tuple(int(e.get_input_embeddings().weight.shape[-1]) for e in text_encoders)

    # --- prompts -> UNet conditioning ---------------------------------------------------------
    @staticmethod
    def tokenize(tokenizers: list, prompts: Sequence[str]) -> list[torch.Tensor]:
        """Ids per tokenizer, padded to its window (SDXL's second tokenizer pads with `!`, not EOS)."""
        return [tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt").input_ids for tok in tokenizers]

    def encode(self, text_encoders: list, tokenizers: list, ids: list[torch.Tensor]) -> PromptEncoding:
        """Token ids per encoder (from `tokenize`) -> the prompts' conditioning, on the encoders' device."""
        raise NotImplementedError

    def unet_kwargs(self, cond: PromptEncoding, time_ids: torch.Tensor | None, dtype) -> dict:
        """`encoder_hidden_states` (and SDXL's `added_cond_kwargs`) for `unet(noisy, t, **kwargs)`."""
        raise NotImplementedError

    # --- sampling --------------------------------------------------------------------------------
    def pipeline(self, tokenizers: list, vae, unet, scheduler):
        """The family's diffusers pipeline over the given modules, without text encoders (it samples from
        embeddings the generator computes)."""
        raise NotImplementedError

    def pipe_inputs(self, cond: PromptEncoding, uncond: PromptEncoding) -> dict:
        raise NotImplementedError
