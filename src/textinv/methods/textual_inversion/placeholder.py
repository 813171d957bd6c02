"""The one trainable Parameter: new token vectors swapped in at the token-embedding lookup.

The text encoder's 49408 x dim embedding matrix stays frozen and untouched; the placeholder's
`num_vectors` rows live in a separate Parameter, so gradients and optimizer state exist for those
few vectors only (a few KB), and nothing has to be copied back after each step.
A model with two text encoders (SDXL) holds the word in ONE Parameter [num_vectors, 768 + 1280]: each
encoder reads its own columns, so both halves train together under one optimizer, checkpoint and NaN guard.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from textinv.errors import UserError
from textinv.validation import check_value, safe_name

log = logging.getLogger(__name__)


def vector_tokens(token: str, num_vectors: int) -> list[str]:
    """The one spelling of a multi-vector word, as diffusers writes it: `<tok>`, `<tok>_1`, `<tok>_2`, ..."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


# After a word: not already followed by its vector suffix (`<tok>_1` is left alone when spelling out `<tok>`).
NOT_SPELLED_OUT = r"(?!_\d)"


def spell_out(prompt: str, tokens: list[str]) -> str:
    """`<tok>` -> `<tok> <tok>_1 <tok>_2` (`tokens` from `vector_tokens`); a one-vector word stays as it is."""
    if len(tokens) == 1:
        return prompt
    return re.sub(re.escape(tokens[0]) + NOT_SPELLED_OUT, " ".join(tokens), prompt)


class PlaceholderEmbedding(nn.Module):
    """Drop-in for `nn.Embedding`: ids >= `first_id` read the trainable `vectors`."""

    def __init__(self, base: nn.Embedding, first_id: int, vectors: torch.Tensor,
                 columns: tuple[int, int] | None = None):
        super().__init__()
        self.base = base
        self.first_id = first_id
        # Always fp32, even when the frozen model sits in fp16/bf16: tiny updates must not round away.
        # A Parameter passed in is shared (another encoder's columns of the same word), not copied.
        self.vectors = vectors if isinstance(vectors, nn.Parameter) else nn.Parameter(vectors.detach().float().clone())
        self.columns = columns or (0, self.vectors.shape[1])

    @property
    def weight(self) -> torch.Tensor:  # for code that inspects the embedding dtype/device
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_new = input_ids >= self.first_id
        frozen = self.base(torch.where(is_new, 0, input_ids))
        slot = (input_ids - self.first_id).clamp(0, self.vectors.shape[0] - 1)
        new = self.vectors[:, self.columns[0]:self.columns[1]].to(frozen.dtype)[slot]
        return torch.where(is_new.unsqueeze(-1), new, frozen)


@dataclass
class Placeholder:
    """The new word: its token strings (`<tok>`, `<tok>_1`, ...) and their ids."""

    token: str
    tokens: list[str]
    token_ids: list[int]

    @property
    def num_vectors(self) -> int:
        return len(self.tokens)

    @property
    def name(self) -> str:
        """File-name form: the token without brackets (A1111 names embeddings after their file); never a path."""
        return safe_name(self.token.strip("<>") or self.token)

    def expand(self, prompt: str) -> str:
        """Spell out a multi-vector placeholder the way diffusers does: `<tok> <tok>_1 <tok>_2`."""
        return spell_out(prompt, self.tokens)


def check_placeholder(tokenizer: CLIPTokenizer, token: str) -> None:
    """Reject placeholders that would hijack or collide with an existing word."""
    if not token or not token.strip():
        raise UserError("concept.placeholder is empty; set it to a new word such as concept.placeholder='<my-cat>'")
    if any(c.isspace() for c in token):
        raise UserError(f"concept.placeholder={token!r} contains whitespace; a placeholder is one word, e.g. '<my-cat>'")
    check_value("concept.placeholder", token)  # separators, control characters, length: it becomes a file name
    existing = tokenizer(token, add_special_tokens=False).input_ids
    if token in tokenizer.get_vocab() or len(existing) == 1:
        raise UserError(
            f"concept.placeholder={token!r} is already a token in the vocabulary; "
            f"pick a new word, e.g. concept.placeholder='<{token.strip('<>')}-concept>'"
        )


def initializer_ids(tokenizer: CLIPTokenizer, word: str | None) -> list[int]:
    if word is None or not str(word).strip():
        raise UserError("the initializer word is empty; set init=<word> (e.g. init=tree) or method.init_method=random")
    ids = tokenizer(str(word), add_special_tokens=False).input_ids
    if not ids:
        raise UserError(f"init={word!r} tokenizes to nothing; use a plain word such as init=tree")
    return ids


def add_placeholder(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, token: str, num_vectors: int = 1,
                    initializer: str | None = None, init_method: str = "word", seed: int = 0) -> Placeholder:
    """Register the placeholder tokens and swap a `PlaceholderEmbedding` into the text encoder."""
    return install_placeholder([tokenizer], [text_encoder], token, num_vectors, initializer, init_method, seed)


def _start_vector(tokenizer, base: nn.Embedding, initializer: str | None, init_method: str, seed: int) -> torch.Tensor:
    if init_method == "word":
        ids = initializer_ids(tokenizer, initializer)
        if len(ids) > 1:  # deliberate: several sub-tokens are averaged into one starting vector
            log.warning("init=%r is %d tokens; starting from their mean embedding", initializer, len(ids))
        return base.weight[ids].float().mean(0)
    if init_method == "random":
        gen = torch.Generator().manual_seed(seed)
        std = base.weight.float().std().item()
        return torch.randn(base.embedding_dim, generator=gen) * std
    raise UserError(f"method.init_method={init_method!r} is unknown; use word or random")


def install_placeholder(tokenizers: list, text_encoders: list, token: str, num_vectors: int = 1,
                        initializer: str | None = None, init_method: str = "word", seed: int = 0) -> Placeholder:
    """The new word in every (tokenizer, text encoder) pair, its vectors in one fp32 Parameter.

    Each encoder's columns start from its own embedding of the initializer; the token ids must agree
    across the tokenizers (they share CLIP's vocabulary), so prompts tokenize alike in each.
    """
    if num_vectors < 1:
        raise UserError(f"method.num_vectors={num_vectors} must be >= 1")
    for tokenizer in tokenizers:
        check_placeholder(tokenizer, token)
    bases = [enc.get_input_embeddings() for enc in text_encoders]
    if any(isinstance(b, PlaceholderEmbedding) for b in bases):
        raise RuntimeError("this text encoder already has a placeholder installed")
    starts = [_start_vector(tok, base, initializer, init_method, seed + k)
              for k, (tok, base) in enumerate(zip(tokenizers, bases))]

    tokens = vector_tokens(token, num_vectors)
    token_ids = None
    for tokenizer, base in zip(tokenizers, bases):
        added = tokenizer.add_tokens(tokens)
        if added != num_vectors:
            raise UserError(f"concept.placeholder={token!r}: {num_vectors - added} of its tokens already exist; "
                            "pick a new word")
        ids = tokenizer.convert_tokens_to_ids(tokens)
        if ids != list(range(ids[0], ids[0] + num_vectors)) or ids[0] < base.num_embeddings:
            raise RuntimeError(f"placeholder ids {ids} are not fresh contiguous ids past {base.num_embeddings}")
        if token_ids is not None and ids != token_ids:
            raise RuntimeError(f"placeholder ids differ between the tokenizers ({token_ids} vs {ids})")
        token_ids = ids

    vectors = nn.Parameter(torch.cat(starts).unsqueeze(0).repeat(num_vectors, 1).float())
    col = 0
    for enc, base in zip(text_encoders, bases):
        enc.set_input_embeddings(PlaceholderEmbedding(base, token_ids[0], vectors, (col, col + base.embedding_dim)))
        col += base.embedding_dim
    return Placeholder(token, tokens, token_ids)


def trainable_vectors(text_encoder: CLIPTextModel) -> nn.Parameter:
    emb = text_encoder.get_input_embeddings()
    if not isinstance(emb, PlaceholderEmbedding):
        raise RuntimeError("no placeholder installed in this text encoder")
    return emb.vectors
