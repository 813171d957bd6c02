"""Textual inversion per model family: how the word's one Parameter splits over the text encoders, which
files hold it, how a file is read for a model and how diffusers registers it.

SD 1.x/2.x: one encoder, one matrix [n, 768 or 1024]. SDXL: one Parameter [n, 768 + 1280] (each encoder reads
its columns), files {clip_l, clip_g} and diffusers' pair. The family says which it is (`family.name`) and how
wide its encoders are (`family.widths`); file and folder names are textinv.runs.layout's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from textinv.errors import UserError
from textinv.methods.textual_inversion.formats import (load_embedding, read_sdxl_embedding, save_a1111, save_diffusers,
                                                       save_kohya, save_sdxl)
from textinv.models.family.sdxl import FILE_KEYS
from textinv.runs.layout import diffusers_file, kohya_file, sdxl_file, universal_file


def split(vectors: torch.Tensor, widths: Sequence[int]) -> list[torch.Tensor]:
    """The word's vectors per text encoder, in the family's `parts` order."""
    return list(torch.split(vectors, list(widths), dim=-1))


def read_embedding(family, path, widths: Sequence[int] | None = None):
    """A `formats.LoadedEmbedding` usable by this family; a file for another family is refused."""
    if family.name == "sd":
        return load_embedding(path, widths[0] if widths else None)
    emb = read_sdxl_embedding(path)
    for key, vectors, width in zip(FILE_KEYS, (emb.vectors, emb.vectors_g), widths or (None, None)):
        if width is not None and vectors.shape[1] != width:
            raise UserError(f"{emb.path}: the {key} half is {vectors.shape[1]} wide, this model's encoder is "
                            f"{width}; it was trained for another model (SDXL: clip_l 768, clip_g 1280)")
    return emb


def register_embeddings(pipe, loaded: list, names: list[str], tokenizers: list, text_encoders: list) -> None:
    """diffusers' `load_textual_inversion`, fed tensors (it never opens a file itself); one call per encoder
    (SDXL: clip_l into text_encoder, clip_g into text_encoder_2)."""
    for k, (tok, enc) in enumerate(zip(tokenizers, text_encoders)):
        pipe.load_textual_inversion([e.vectors if k == 0 else e.vectors_g for e in loaded], token=names,
                                    tokenizer=tok, text_encoder=enc)


def write_files(family, folder: Path, placeholder, vectors: torch.Tensor, widths: Sequence[int], step: int,
                model_name: str, suffix: str = "") -> list[Path]:
    """The run's embedding files (README "Using the embedding in other tools"); the root file first.

    SD 1.x/2.x: the universal .pt, then the diffusers and pickle-free safetensors files.
    SDXL: the {clip_l, clip_g} file named after the token, then diffusers' pair."""
    folder, ph = Path(folder), placeholder
    if family.name == "sd":
        return [
            save_a1111(universal_file(folder, ph.name, suffix), ph.token, vectors, step=step,
                       sd_checkpoint_name=model_name),
            save_diffusers(diffusers_file(folder, suffix), ph.token, vectors),
            save_kohya(kohya_file(folder, ph.name, suffix), vectors),
        ]
    clip_l, clip_g = split(vectors, widths)
    return [
        save_sdxl(sdxl_file(folder, ph.name, suffix), clip_l, clip_g),
        save_diffusers(diffusers_file(folder, suffix), ph.token, clip_l),
        save_diffusers(diffusers_file(folder, suffix, second=True), ph.token, clip_g),
    ]
