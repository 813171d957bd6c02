"""Model families: everything that differs between Stable Diffusion 1.x/2.x and SDXL, behind one interface.

A family knows how to load its parts (tokenizers, text encoders), how wide its text encoders are, how a
prompt becomes the UNet's conditioning (`encoder_hidden_states`, and SDXL's `added_cond_kwargs`) and
which diffusers pipeline samples from it. The module, the generator and evaluation ask the family; none of
them branches on the model. What a training method does per family (textual inversion's files) is the
method's (textinv.methods.textual_inversion.families).

    sd.py    SD 1.x / 2.x: one CLIP text encoder (768 or 1024 wide)
    sdxl.py  SDXL: CLIP ViT-L (768) + OpenCLIP ViT-bigG (1280), pooled projection and size conditioning
"""

from __future__ import annotations

from textinv.models.family.base import ModelFamily, PromptEncoding
from textinv.models.family.sd import SD
from textinv.models.family.sdxl import SDXL

FAMILIES: dict[str, ModelFamily] = {SD.name: SD, SDXL.name: SDXL}


def get_family(name: str) -> ModelFamily:
    from textinv.errors import UserError

    if name not in FAMILIES:
        raise UserError(f"model.family={name!r} is unknown; use one of {', '.join(FAMILIES)} (or null to detect it)")
    return FAMILIES[name]


__all__ = ["FAMILIES", "ModelFamily", "PromptEncoding", "SD", "SDXL", "get_family"]
