"""Learned words in an ImageGenerator: embedding files registered with diffusers, and multi-vector words
spelled out in every prompt.

- Embedding files are read per model family (`families.read_embedding`: `formats`, never diffusers' own
  pickle path) and registered with `pipe.load_textual_inversion(tensor, token=...)` (SDXL: once per
  text encoder).
- A multi-vector word becomes `tok tok_1 tok_2 ...` (`placeholder.vector_tokens`), exactly as diffusers and
  the training placeholder spell it; the same rewrite serves the live training placeholder during evaluation.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from transformers.utils import logging as transformers_logging

from textinv.errors import UserError
from textinv.methods.base import GenerationFiles
from textinv.methods.hypernetwork.files import is_hypernetwork_file
from textinv.runs.layout import run_root_file
from textinv.methods.textual_inversion import families
from textinv.methods.textual_inversion.formats import LoadedEmbedding
from textinv.methods.textual_inversion.placeholder import NOT_SPELLED_OUT, PlaceholderEmbedding, vector_tokens

log = logging.getLogger(__name__)


def check_new_token(tokenizer, token: str, source: str) -> None:
    """A learned token must be a new word: not in the vocabulary, not one BPE token, not already loaded."""
    if not token or not token.strip():
        raise UserError(f"{source}: the embedding has an empty token name; give one with tokens=[<name>]")
    added = {t.content.lower() for t in tokenizer.added_tokens_decoder.values() if not t.special}
    if any(t.lower() in added for t in vector_tokens(token, 2)):
        raise UserError(f"{source}: token {token!r} is already loaded (another embedding file or the training "
                        f"placeholder uses it); rename this one, e.g. tokens=['<{token.strip('<>')}-2>']")
    if token in tokenizer.get_vocab() or len(tokenizer(token, add_special_tokens=False).input_ids) == 1:
        raise UserError(f"{source}: token {token!r} is an existing word of the vocabulary and would replace it in "
                        f"every prompt; rename it, e.g. tokens=['<{token.strip('<>')}-concept>']")


def resolve_tokens(tokenizer, embeddings: Sequence[LoadedEmbedding], tokens: Sequence[str | None] | None = None
                   ) -> list[str]:
    """The prompt word of each embedding (override > the file's own token > the file name), all checked."""
    tokens = list(tokens) if tokens else [None] * len(embeddings)
    if len(tokens) != len(embeddings):
        raise UserError(f"tokens has {len(tokens)} entries for {len(embeddings)} embeddings; give one per file or none")
    names = [t or e.token or e.path.stem for t, e in zip(tokens, embeddings)]
    for name, emb in zip(names, embeddings):
        check_new_token(tokenizer, name, str(emb.path))
    seen: dict[str, Path] = {}
    for name, emb in zip(names, embeddings):
        for part in vector_tokens(name, emb.vectors.shape[0]):
            if part.lower() in seen:
                raise UserError(f"{emb.path} and {seen[part.lower()]} both use the token {part!r} (tokens match "
                                "case-insensitively); rename one with tokens=[...]")
            seen[part.lower()] = emb.path
    return names


def spell_out_added(tokenizer, prompt: str) -> str:
    """Spell out the tokenizer's multi-vector words (`<t>` -> `<t> <t>_1 ...`), case-insensitively like the tokenizer.

    diffusers' `maybe_convert_prompt` does this with an exact-case lookup, so a token with capitals
    (`<Groot>`) would silently use its first vector only; and it rewrites an already spelled-out
    `<t>_1` again.
    """
    added = {t.content for t in tokenizer.added_tokens_decoder.values() if not t.special}
    lower = {t.lower() for t in added}
    spelled: dict[str, str] = {}
    for token in added:
        n = 1
        while vector_tokens(token, n + 1)[-1].lower() in lower:
            n += 1
        if n > 1:
            spelled[token.lower()] = " ".join(vector_tokens(token, n))
    if not spelled:
        return prompt
    # One pass, longest token first: the tokenizer's own leftmost-longest match (`<ab>` before `<a>`).
    alternatives = "|".join(re.escape(t) for t in sorted(spelled, key=len, reverse=True))
    pattern = re.compile(f"(?:{alternatives}){NOT_SPELLED_OUT}", re.IGNORECASE)
    return pattern.sub(lambda m: spelled[m.group(0).lower()], prompt)


def spell_out_words(generator) -> None:
    """The generator's prompts spell out multi-vector words from now on (added once)."""
    rewrite = getattr(generator, "_spell_out_words", None)
    if rewrite is None:
        generator._spell_out_words = rewrite = lambda prompt: spell_out_added(generator.tokenizer, prompt)
        generator.prompt_rewrites.append(rewrite)


def load_embeddings(generator, files: Sequence[str | Path | LoadedEmbedding],
                    tokens: Sequence[str | None] | None = None) -> list[str]:
    """Register embedding files (diffusers / A1111 / kohya) in the generator's text encoders (in place, as
    diffusers does); returns the word each one is used by."""
    if not files:
        return []
    if any(isinstance(e.get_input_embeddings(), PlaceholderEmbedding) for e in generator.text_encoders):
        raise RuntimeError("embedding files cannot be loaded into a text encoder with a training placeholder "
                           "installed; build the generator from a separately loaded model")
    family, widths = generator.family, generator.widths
    loaded = [f if isinstance(f, LoadedEmbedding) else families.read_embedding(family, f, widths) for f in files]
    for emb in loaded:  # LoadedEmbedding objects passed in were read without knowing this model
        got = tuple(v.shape[1] for v in (emb.vectors, emb.vectors_g) if v is not None)
        if got != widths:
            families.read_embedding(family, emb.path, widths)  # raises the family's or the dimension error
            raise UserError(f"{emb.path}: vectors {got} wide do not fit this model's text encoders {widths}")
    names = resolve_tokens(generator.tokenizer, loaded, tokens)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # resize_token_embeddings' mean-resizing notice: rows are overwritten
    try:
        families.register_embeddings(generator.pipe, loaded, names, generator.tokenizers, generator.text_encoders)
    finally:
        transformers_logging.set_verbosity(verbosity)
    for encoder in generator.text_encoders:  # the resized matrices are new: keep them frozen
        encoder.get_input_embeddings().requires_grad_(False)
    spell_out_words(generator)
    for name, emb in zip(names, loaded):
        log.info("loaded %s (%s, %d vector%s) as %r", emb.path, emb.layout, emb.vectors.shape[0],
                 "s" * (emb.vectors.shape[0] > 1), name)
    return names


@dataclass
class EmbeddingFiles(GenerationFiles):
    """generate.py's `embeddings=[...]` (and `tokens=[...]`), read without weights."""

    loaded: list[LoadedEmbedding]
    words: list[str]

    @classmethod
    def read(cls, cfg, source, tokenizer) -> "EmbeddingFiles":
        files = [cfg.embeddings] if isinstance(cfg.embeddings, str) else list(cfg.embeddings or [])
        widths = source.info().widths  # SDXL files hold both encoders' halves (clip_l + clip_g, or diffusers' pair)
        paths = [run_root_file(Path(str(f)).expanduser(), "embeddings") for f in files]
        for path in paths:
            if path.is_file() and is_hypernetwork_file(path):
                raise UserError(f"embeddings: {path} is a hypernetwork, not an embedding; pass method=hypernetwork "
                                f"hypernetworks=[{path}]")
        loaded = [families.read_embedding(source.family, path, widths) for path in paths]
        tokens = cfg.get("tokens")
        return cls(loaded, resolve_tokens(tokenizer, loaded, [tokens] if isinstance(tokens, str) else list(tokens or [])))

    def load_into(self, generator) -> None:
        load_embeddings(generator, self.loaded, self.words)

    def summary(self) -> dict:
        return {"embeddings": [{"file": str(e.path), "layout": e.layout, "token": n,
                                "num_vectors": int(e.vectors.shape[0])} for e, n in zip(self.loaded, self.words)]}
