"""Textual inversion as a training method: a new word whose vectors are the only trainable tensors.

Its parts: placeholder.py (the word in the tokenizers and text encoders: model surgery), families.py
(per model family: the Parameter's split, files, reading and registering), formats.py / convert.py (the
files other tools load), invariants.py (the word inside the 77-token window; vectors that never moved),
loading.py (files and the word's spelling in an ImageGenerator).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from textinv.errors import UserError
from textinv.methods.base import Method
from textinv.methods.textual_inversion import families
from textinv.methods.textual_inversion.invariants import check_window, report_unchanged, unchanged_rows
from textinv.methods.textual_inversion.loading import EmbeddingFiles, spell_out_words
from textinv.runs.results import TI_ROW
from textinv.methods.textual_inversion.placeholder import (check_placeholder, initializer_ids, install_placeholder,
                                                           trainable_vectors)


class TextualInversion(Method):
    """`num_vectors` new token vectors for the concept's word, starting from the initializer word
    (`init_method=word`, the mean if it is several tokens) or seeded noise (`init_method=random`).

    The word's strength: each vector's norm is logged every step beside the vocabulary's median norm
    (`norm/...`); `norm_rescale` puts each vector back to that median after every optimizer step (OneTrainer's
    preserve_embedding_norm), `init_pull` adds init_pull x |v - v_init|^2 (mean over vectors) to the loss (the
    original work's embedding regularisation). With two text encoders each encoder's columns count apart."""

    name, row_label, log_tag = "textual_inversion", TI_ROW, "ti"
    trains_inside = frozenset({"text_encoders"})  # the word's rows live in the encoders' embedding tables

    def __init__(self, word: str, initializer: str | None, seed: int = 0, num_vectors: int = 1,
                 init_method: str = "word", norm_rescale: bool = False, init_pull: float = 0.0):
        super().__init__(word, initializer, seed)
        self.num_vectors, self.init_method = num_vectors, init_method
        self.norm_rescale, self.init_pull = bool(norm_rescale), float(init_pull)
        if self.init_pull < 0:
            raise UserError(f"method.init_pull={init_pull} must be >= 0 (0 = off)")
        self.spans: list[tuple[int, int]] = []  # each text encoder's columns of the Parameter
        self.reference: list[float] = []  # each encoder vocabulary's median token-vector norm
        self.placeholder = None  # the installed word (placeholder.Placeholder), once attached
        self.vectors: torch.nn.Parameter | None = None  # [num_vectors, sum of the encoders' widths], fp32
        self.state_key = ""
        self.family, self.widths, self.model_name = None, (), None
        self.initial: torch.Tensor | None = None  # run invariant: every trained row must move
        self._last_good: torch.Tensor | None = None

    # --- before weights ----------------------------------------------------------------------
    def check(self, tokenizer, train_prompts: Iterable[str], eval_prompts: Iterable[str]) -> None:
        check_placeholder(tokenizer, self.word)
        if self.init_method == "word":
            initializer_ids(tokenizer, self.initializer)
        check_window(tokenizer, self.word, self.num_vectors, train_prompts, "training prompt")
        check_window(tokenizer, self.word, self.num_vectors, eval_prompts, "evaluation prompt")

    def identity(self) -> dict:
        # checkpoints from before the norm options lack them, and resume (only a checkpoint's own keys are compared)
        return {"num_vectors": int(self.num_vectors), "init_method": str(self.init_method),
                "initializer": None if self.init_method == "random" else self.initializer,
                "norm_rescale": self.norm_rescale, "init_pull": self.init_pull}

    def header(self) -> dict:
        return {"num_vectors": self.num_vectors}

    # --- training ----------------------------------------------------------------------------
    def attach(self, frozen) -> None:
        self.family, self.model_name = frozen.family, frozen.name
        self.widths = self.family.widths(frozen.text_encoders)  # measured before the placeholder goes in
        self.spans, self.reference, col = [], [], 0
        for enc in frozen.text_encoders:
            weight = enc.get_input_embeddings().weight
            self.spans.append((col, col + weight.shape[1]))
            self.reference.append(float(weight.detach().float().norm(dim=1).median()))
            col += weight.shape[1]
        self.placeholder = install_placeholder(frozen.tokenizers, frozen.text_encoders, self.word, self.num_vectors,
                                               self.initializer, self.init_method, self.seed)
        # One Parameter shared by every encoder (each reads its columns); registered here too, so that
        # `parameters()` is exactly it.
        self.vectors = trainable_vectors(frozen.text_encoders[0])
        # Its name as the first encoder's diffusers subfolder sees it: the name checkpoints have always used
        # (`text_encoder.text_model.embeddings.token_embedding.vectors`).
        name = next(n for n, p in frozen.text_encoders[0].named_parameters() if p is self.vectors)
        self.state_key = f"{self.family.parts[0]}.{name}"
        self.initial = self.vectors.detach().clone()

    def prompt(self, prompt: str) -> str:
        return self.placeholder.expand(prompt)

    def norms(self) -> torch.Tensor:
        """[num_vectors, encoders]: each vector's L2 norm in each encoder's columns."""
        v = self.vectors.detach().float()
        return torch.stack([v[:, a:b].norm(dim=1) for a, b in self.spans], 1)

    def strength(self) -> dict[str, float]:
        norms, many = self.norms(), len(self.spans) > 1
        out = {}
        for k, ref in enumerate(self.reference):
            enc = f".te{k + 1}" if many else ""
            out[f"norm/vocab_median{enc}"] = ref
            for i in range(norms.shape[0]):
                out[f"norm/vector{i}{enc}"] = float(norms[i, k])
        return out

    def regularization(self) -> torch.Tensor | None:
        if not self.init_pull:
            return None
        diff = self.vectors - self.initial.to(self.vectors.device)
        return self.init_pull * diff.pow(2).sum(1).mean()

    @torch.no_grad()
    def after_step(self) -> None:
        if self.norm_rescale:
            rescale_to(self.vectors, self.spans, self.reference)

    @property
    def eval_word(self) -> str:
        return self.placeholder.token

    def state(self) -> dict[str, torch.Tensor]:
        return {self.state_key: self.vectors.detach().clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        saved = state.get(self.state_key)
        if saved is None or tuple(saved.shape) != tuple(self.vectors.shape):
            got = None if saved is None else tuple(saved.shape)
            raise UserError(f"checkpoint holds vectors of shape {got}, this run trains {tuple(self.vectors.shape)}; "
                            "resume with the same model and method.num_vectors")
        with torch.no_grad():
            self.vectors.copy_(saved)

    def keep_if_finite(self) -> bool:
        vectors = self.vectors.detach()
        if torch.isfinite(vectors).all():
            self._last_good = vectors.clone()
            return True
        with torch.no_grad():
            self.vectors.copy_(self._last_good if self._last_good is not None else torch.nan_to_num(vectors))
        return False

    # --- files -------------------------------------------------------------------------------
    def write_files(self, folder: Path, step: int, suffix: str = "") -> list[Path]:
        return families.write_files(self.family, folder, self.placeholder, self.vectors.detach(), self.widths, step,
                                    self.model_name, suffix)

    def summary(self) -> dict:
        return {"placeholder": self.placeholder.token, "tokens": self.placeholder.tokens,
                "num_vectors": self.placeholder.num_vectors,
                "norms": [[round(float(x), 5) for x in row] for row in self.norms()],  # [vector][encoder]
                "vocab_median_norm": [round(r, 5) for r in self.reference]}

    def findings(self, lr: float) -> dict:
        tokens = self.placeholder.tokens
        unchanged = unchanged_rows(self.initial, self.vectors)
        why = report_unchanged(unchanged, tokens, lr)
        return {"unchanged_vectors": {"tokens": [tokens[i] for i in unchanged], "why": why}} if why else {}

    # --- generation --------------------------------------------------------------------------
    def use_in(self, generator) -> None:
        spell_out_words(generator)  # the live placeholder is in the generator's own tokenizer already

    @classmethod
    def generation_files(cls, cfg, source, tokenizer) -> EmbeddingFiles:
        return EmbeddingFiles.read(cfg, source, tokenizer)


@torch.no_grad()
def rescale_to(vectors: torch.Tensor, spans: list[tuple[int, int]], norms: list[float]) -> None:
    """In place: each row's columns of each span scaled to that span's norm (a zero row stays zero)."""
    for (a, b), target in zip(spans, norms):
        part = vectors[:, a:b]
        part.mul_(target / part.norm(dim=1, keepdim=True).clamp_min(1e-12))
