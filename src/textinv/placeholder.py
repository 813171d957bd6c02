"""The one trainable Parameter: new token vectors swapped in at the token-embedding lookup.

The text encoder's 49408 x dim embedding matrix stays frozen and untouched; the placeholder's
`num_vectors` rows live in a separate Parameter, so gradients and optimizer state exist for those
few vectors only (a few KB), and nothing has to be copied back after each step.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from .errors import UserError
from .validation import check_value, safe_name

log = logging.getLogger(__name__)


class PlaceholderEmbedding(nn.Module):
    """Drop-in for `nn.Embedding`: ids >= `first_id` read the trainable `vectors`."""

    def __init__(self, base: nn.Embedding, first_id: int, vectors: torch.Tensor):
        super().__init__()
        self.base = base
        self.first_id = first_id
        # Always fp32, even when the frozen model sits in fp16/bf16: tiny updates must not round away.
        self.vectors = nn.Parameter(vectors.detach().float().clone())

    @property
    def weight(self) -> torch.Tensor:  # for code that inspects the embedding dtype/device
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_new = input_ids >= self.first_id
        frozen = self.base(torch.where(is_new, 0, input_ids))
        slot = (input_ids - self.first_id).clamp(0, self.vectors.shape[0] - 1)
        new = self.vectors.to(frozen.dtype)[slot]
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
        if self.num_vectors == 1:
            return prompt
        pattern = re.escape(self.token) + r"(?!_\d)"
        return re.sub(pattern, " ".join(self.tokens), prompt)


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
        raise UserError("the initializer word is empty; set init=<word> (e.g. init=tree) or module.init_method=random")
    ids = tokenizer(str(word), add_special_tokens=False).input_ids
    if not ids:
        raise UserError(f"init={word!r} tokenizes to nothing; use a plain word such as init=tree")
    return ids


def add_placeholder(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, token: str, num_vectors: int = 1,
                    initializer: str | None = None, init_method: str = "word", seed: int = 0) -> Placeholder:
    """Register the placeholder tokens and swap a `PlaceholderEmbedding` into the text encoder."""
    if num_vectors < 1:
        raise UserError(f"module.num_vectors={num_vectors} must be >= 1")
    check_placeholder(tokenizer, token)
    base = text_encoder.get_input_embeddings()
    if isinstance(base, PlaceholderEmbedding):
        raise RuntimeError("this text encoder already has a placeholder installed")

    if init_method == "word":
        ids = initializer_ids(tokenizer, initializer)
        if len(ids) > 1:  # deliberate: several sub-tokens are averaged into one starting vector
            log.warning("init=%r is %d tokens; starting from their mean embedding", initializer, len(ids))
        start = base.weight[ids].float().mean(0)
    elif init_method == "random":
        gen = torch.Generator().manual_seed(seed)
        std = base.weight.float().std().item()
        start = torch.randn(base.embedding_dim, generator=gen) * std
    else:
        raise UserError(f"module.init_method={init_method!r} is unknown; use word or random")

    tokens = [token] + [f"{token}_{i}" for i in range(1, num_vectors)]
    added = tokenizer.add_tokens(tokens)
    if added != num_vectors:
        raise UserError(f"concept.placeholder={token!r}: {num_vectors - added} of its tokens already exist; pick a new word")
    token_ids = tokenizer.convert_tokens_to_ids(tokens)
    first_id = token_ids[0]
    if token_ids != list(range(first_id, first_id + num_vectors)) or first_id < base.num_embeddings:
        raise RuntimeError(f"placeholder ids {token_ids} are not fresh contiguous ids past {base.num_embeddings}")

    vectors = start.unsqueeze(0).repeat(num_vectors, 1)
    text_encoder.set_input_embeddings(PlaceholderEmbedding(base, first_id, vectors))
    return Placeholder(token, tokens, token_ids)


def trainable_vectors(text_encoder: CLIPTextModel) -> nn.Parameter:
    emb = text_encoder.get_input_embeddings()
    if not isinstance(emb, PlaceholderEmbedding):
        raise RuntimeError("no placeholder installed in this text encoder")
    return emb.vectors
