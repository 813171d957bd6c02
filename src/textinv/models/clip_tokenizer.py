"""The real CLIP tokenizer (as shipped with Stable Diffusion), rebuilt offline.

open_clip_torch ships OpenAI's BPE merges; SD's tokenizer vocabulary is derived from the same file,
so vocab.json / merges.txt written from it give token ids identical to SD's `tokenizer/` folder.
"""

from __future__ import annotations

import gzip
import os
import shutil

from transformers import CLIPTokenizer

from textinv.utils.cache import cache_dir


VOCAB_SIZE = 49408
_NUM_MERGES = VOCAB_SIZE - 256 * 2 - 2  # byte tokens, byte+</w> tokens, two special tokens


def build_clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """Derive the vocabulary and merges from open_clip's bundled BPE file."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : _NUM_MERGES + 1]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    return CLIPTokenizer(
        vocab={tok: i for i, tok in enumerate(vocab)},
        merges=[tuple(m.split()) for m in merges],
        pad_token=pad_token,
        model_max_length=77,
    )


def offline_clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """SD 1.x's tokenizer (pads with <|endoftext|>; SDXL's second one pads with "!"), built once and cached
    as a tokenizer folder."""
    folder = cache_dir("clip_tokenizer" if pad_token == "<|endoftext|>" else "clip_tokenizer_pad_bang")
    if pad_token not in ("<|endoftext|>", "!"):
        raise ValueError(f"pad_token={pad_token!r}: CLIP tokenizers pad with <|endoftext|> or !")
    if not (folder / "tokenizer_config.json").exists():
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        build_clip_tokenizer(pad_token).save_pretrained(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, folder)  # atomic: concurrent test workers never see half a folder
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return CLIPTokenizer.from_pretrained(folder)
